"""CURVE keys: key files for the learner and each robot (`robot-app keys`), and securing sockets with them.

A robot's name is the stem of its key file. The learner only admits clients whose public key file sits in its allowed
directory, and it learns from the key which robot is talking, so one robot cannot speak for another.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write <name>.key (public, to hand out) and <name>.key_secret (keep). Never overwrites an existing pair."""
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise FileExistsError(f"keys for {name!r} already exist in {directory}; remove them first to replace them")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad key name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    Path(secret_file).chmod(0o600)
    return Path(public_file), Path(secret_file)


def _load(path: str | Path, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    try:
        public_key, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read CURVE key file {path}: {error}") from None
    if secret and secret_key is None:
        raise ValueError(f"{path} holds no secret key (use the .key_secret file)")
    return public_key, secret_key


def _admitted(directory: str | Path) -> dict[str, str]:
    """z85 public key -> name, of every .key file in an admitted-keys directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"allowed-keys directory {directory} does not exist")
    return {_load(p, secret=False)[0].decode(): p.stem for p in directory.glob("*.key")}


def secure_client(socket: zmq.Socket, own_secret_file: str | Path, server_public_file: str | Path) -> None:
    socket.curve_publickey, socket.curve_secretkey = _load(own_secret_file, secret=True)
    socket.curve_serverkey = _load(server_public_file, secret=False)[0]


DASHBOARD_DOMAIN = "dashboard"  # the ZAP domain of the learner's dashboard socket: its own admitted keys


class ServerSecurity:
    """CURVE on the learner's sockets: its own key pair, the directory of robots' public keys it admits, and
    (optionally) the directory of dashboards' public keys admitted on the dashboard socket alone. A dashboard's key
    opens no robot socket, and a robot's no dashboard socket."""

    def __init__(self, context: zmq.Context, own_secret_file: str | Path, allowed_dir: str | Path,
                 dashboards_dir: str | Path | None = None):
        self.public_key, self.secret_key = _load(own_secret_file, secret=True)
        self.names = _admitted(allowed_dir)
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allowed_dir))
        log.info("CURVE on: %d robot key%s admitted from %s", len(self.names), "" if len(self.names) == 1 else "s",
                 allowed_dir)
        self.dashboards_dir = dashboards_dir
        if dashboards_dir is not None:
            log.info("%d dashboard key(s) admitted from %s", len(_admitted(dashboards_dir)), dashboards_dir)
            self._auth.configure_curve(domain=DASHBOARD_DOMAIN, location=str(dashboards_dir))

    def secure(self, socket: zmq.Socket, domain: str = "") -> None:
        """domain: DASHBOARD_DOMAIN for the dashboard socket; the robots' sockets use the default."""
        if domain:
            if self.dashboards_dir is None:
                raise ValueError("a dashboard socket needs the directory of admitted dashboard keys")
            socket.zap_domain = domain.encode()
        socket.curve_secretkey, socket.curve_publickey = self.secret_key, self.public_key
        socket.curve_server = True

    def name_of(self, frame: zmq.Frame) -> str | None:
        """The robot name behind a received frame (its CURVE public key), or None."""
        try:
            return self.names.get(frame.get("User-Id"))
        except zmq.ZMQError:
            return None

    def stop(self) -> None:
        self._auth.stop()
