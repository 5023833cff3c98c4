"""The device's end of the virtual robot's serial line: a pseudo-terminal, or a TCP port a host in another container
reaches as `socket://HOST:PORT` (pyserial's URL). Both read and write without blocking and lose bytes as a UART does."""

from __future__ import annotations

import logging
import os
import socket
import tty
from typing import Callable

log = logging.getLogger("robot_app.virtual_robot")
_READ_SIZE = 4096


class PtyEnd:
    """The master side of a pty; the host opens `name`, the slave's path. A host that closes it and a new one that
    opens it meet the same device, as on a serial cable."""

    def __init__(self):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # binary-clean: no echo, no newline translation
        os.set_blocking(self._master, False)
        self.name = os.ttyname(self._slave)

    def fileno(self) -> int:
        return self._master

    def read(self) -> bytes:
        try:
            return os.read(self._master, _READ_SIZE)
        except OSError:  # EAGAIN: nothing yet; EIO: no host has the port open
            return b""

    def write(self, data: bytes) -> int:
        try:
            return os.write(self._master, data)
        except OSError:  # EAGAIN: no host drains the port; EIO: none has it open
            return 0

    def close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class TcpEnd:
    """A listening TCP port serving one host at a time, as one serial cable does: while a host is connected, another
    waits in the backlog; when it leaves, the next is accepted. With no host, what the device sends is lost.
    on_hangup: called when a connected host leaves (unlike a UART, the device knows)."""

    def __init__(self, host: str, port: int, on_hangup: Callable[[], None] = lambda: None):
        self._listener = socket.create_server((host, port), backlog=1)
        self._listener.setblocking(False)
        self._host: socket.socket | None = None
        self._on_hangup = on_hangup
        self.name = f"socket://{host}:{self._listener.getsockname()[1]}"

    def fileno(self) -> int:
        """What to wait on: the host's socket, or the listener while no host is connected."""
        return (self._host or self._listener).fileno()

    def read(self) -> bytes:
        if self._host is None:
            self._accept()
            return b""
        try:
            data = self._host.recv(_READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError:  # reset by the host
            data = b""
        if not data:
            log.info("the host on %s left; waiting for the next", self.name)
            self._drop_host()
        return data

    def write(self, data: bytes) -> int:
        if self._host is None:
            return len(data)  # onto a line nobody listens to
        try:
            return self._host.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._drop_host()
            return len(data)

    def close(self) -> None:
        self._drop_host()
        self._listener.close()

    def _accept(self) -> None:
        try:
            self._host, peer = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as error:  # a host that gave up in the backlog, or no descriptor left: the next try may do
            log.warning("accepting a host on %s failed: %s", self.name, error)
            return
        self._host.setblocking(False)
        self._host.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a frame goes out now, not batched
        log.info("a host connected to %s from %s:%d", self.name, *peer[:2])

    def _drop_host(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None
            self._on_hangup()
