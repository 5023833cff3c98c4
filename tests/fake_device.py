"""A scripted lockstep device on a pty, for tests of the host side: it answers HELLO, answers each COMMAND with whatever
frames the test's script returns, and keeps every frame the host sent it."""

from __future__ import annotations

import os
import select
import threading
import tty

from robot_app.hardware.protocol import (
    PROTOCOL_VERSION, Command, FrameDecoder, Hello, MessageType, SensorFrame, SensorStatus, encode_frame, parse,
)

LOCKSTEP = int(SensorStatus.LOCKSTEP)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FakeDevice:
    """`script(device, command)` returns the bytes to send back: after each COMMAND, and on a HELLO (command None) the
    bytes to send after the HELLO answer, or None to leave the HELLO unanswered. `device.frame(...)` and
    `device.sensor(...)` build them, numbered by the device's own seq."""

    def __init__(self, script, robot_id: str = "fake-0", n_encoders: int = 2, n_motors: int = 1):
        self.script, self.hello = script, Hello(PROTOCOL_VERSION, robot_id, n_encoders, n_motors, 50.0, LOCKSTEP)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.received: list[tuple[int, object]] = []  # (message type, parsed payload) of every host frame
        self.commands: list[Command] = []
        self.seq = 0
        self._decoder = FrameDecoder()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-device", daemon=True)
        self._thread.start()

    def frame(self, message_type, payload: bytes = b"", seq: int | None = None) -> bytes:
        self.seq += 1
        return encode_frame(message_type, self.seq if seq is None else seq, payload)

    def sensor(self, time_us: int, counts, applied=(0.0,), status: int = LOCKSTEP, seq: int | None = None) -> bytes:
        return self.frame(MessageType.SENSOR, SensorFrame(time_us, status, 0, tuple(counts), tuple(applied)).pack(),
                          seq)

    def write(self, data: bytes) -> None:
        write_all(self._master, data)

    def hellos(self) -> int:
        """HELLOs the host has sent."""
        return sum(kind == MessageType.HELLO for kind, _ in self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for fd in (self._master, self._slave):
            os.close(fd)

    def __enter__(self) -> "FakeDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:  # no host has the port open yet
                continue
            for frame in self._decoder.feed(data):
                message = parse(frame)
                self.received.append((frame.type, message))
                if isinstance(message, Hello):
                    after = self.script(self, None)
                    if after is not None:
                        self.write(self.frame(MessageType.HELLO, self.hello.pack()) + after)
                elif isinstance(message, Command):
                    self.commands.append(message)
                    self.write(self.script(self, message))
