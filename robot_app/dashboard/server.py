"""`robot-app dashboard`: the app on uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SEND_BUFFER_BYTES = 128 << 10


class ServingError(ValueError):
    """A way of serving the dashboard that is refused; the message says why and what to do."""


def bind(host: str, port: int, public: bool) -> socket.socket:
    """The listening socket (port 0 chooses one). Anything but loopback needs `public`, and gets a warning."""
    if host not in LOOPBACK:
        if not public:
            raise ServingError(f"--host {host} serves the dashboard beyond this machine: add --public to mean it "
                               "(and put it behind TLS)")
        log.warning("serving the dashboard on %s WITHOUT TLS: tokens and commands cross the network in the clear. "
                    "Put it behind a TLS-terminating proxy (and give its address with --origin)", host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Connections inherit it: a browser that stops reading holds at most this much in the kernel (and the hub's
    # bounded queue holds the rest), instead of the megabytes autotuning would grant it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def url_host(host: str) -> str:
    """A host as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def origins(host: str, port: int, extra: list[str]) -> set[str]:
    """The Origins a browser on the dashboard's own page sends."""
    names = {"127.0.0.1", "localhost", "[::1]"} if host in LOOPBACK else {url_host(host)}
    return {f"http://{name}:{port}" for name in names} | {origin.rstrip("/") for origin in extra}


def serve(app, sock: socket.socket) -> None:
    import uvicorn

    # ws_max_queue bounds what one client may send us; the access log would print every request's path.
    config = uvicorn.Config(app, log_level="warning", access_log=False, ws_max_size=1 << 16, ws_max_queue=4,
                            ws_ping_interval=10.0, ws_ping_timeout=10.0, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])

