"""HOST:PORT addresses to bind, parsed once for every flag that takes one (the learner's --metrics, --listen)."""

from __future__ import annotations


def split_host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """(host, port) of HOST:PORT, [IPv6]:PORT, or :PORT on default_host; port 0 chooses a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 0.0.0.0:5600 or 127.0.0.1:0")
    return host.strip("[]") or default_host, int(port)
