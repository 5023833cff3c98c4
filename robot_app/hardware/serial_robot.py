"""The host side of the serial protocol over pyserial: handshake, sensor stream, commands, heartbeats and e-stop.

The same class drives real firmware and the virtual robot, on its pseudo-terminal or its TCP port. Nothing here
blocks without a timeout.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import time

import serial

from robot_app.hardware.protocol import (
    PROTOCOL_VERSION, Command, EStop, Fault, FaultCode, FrameDecoder, Hello, MessageType, ProtocolError, SensorFrame,
    SensorStatus, encode_frame, parse,
)
from robot_app.hardware.robot_io import HandshakeError, LinkLost, SensorReading  # noqa: F401  (raised to callers)

log = logging.getLogger(__name__)
_READ_SIZE = 4096


class SerialRobot:
    """The RobotIO over one serial link to one robot. Call connect(), then poll()/wait_sensor() and send_*();
    handshake() again when the device has lost its session."""

    def __init__(self, port: str, baudrate: int = 921_600):
        self.port = port
        self.baudrate = baudrate
        self._serial: serial.Serial | None = None
        self._decoder = FrameDecoder()
        self._seq = 0
        self.device: Hello | None = None
        self.session_lost = False  # the device said it has no session (it restarted): handshake() again
        self._sensor_seq: int | None = None
        self.latest: SensorReading | None = None
        self.device_estop: EStop | None = None  # an e-stop the device reported and nobody consumed yet
        self.faults: collections.deque[Fault] = collections.deque(maxlen=64)
        self.counters: collections.Counter[str] = collections.Counter()

    # ---- link ---------------------------------------------------------------------------------------------------

    def connect(self, timeout_s: float = 2.0) -> Hello:
        try:
            # A device path, or a pyserial URL such as socket://virtual-robot:5600 (a virtual robot's --listen)
            self._serial = serial.serial_for_url(self.port, self.baudrate, timeout=0, write_timeout=0, exclusive=True)
            self._serial.reset_input_buffer()
            if self.port.startswith("socket://"):  # each frame goes out as written, not held back by Nagle's algorithm
                with socket.socket(fileno=os.dup(self._serial.fileno())) as link:
                    link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (serial.SerialException, OSError) as error:
            said = str(error)  # pyserial's own message names the port already
            raise LinkLost(said if self.port in said else f"cannot open {self.port}: {said}") from None
        self._decoder = FrameDecoder()
        try:
            return self.handshake(timeout_s)
        except HandshakeError:
            self.close()
            raise

    def handshake(self, timeout_s: float = 2.0) -> Hello:
        """Open a session on the open port: HELLO every 0.25 s until the device answers (a reply lost on a noisy line
        is not a dead device). Also how a session the device lost (it rebooted) is opened again."""
        self.device, self.latest, self.session_lost, self._sensor_seq = None, None, False, None
        deadline = time.monotonic() + timeout_s
        while self.device is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeError(f"{self.port}: no HELLO answer within {timeout_s:.2f} s")
            self._send(MessageType.HELLO, Hello(PROTOCOL_VERSION, "host").pack())
            retry = time.monotonic() + min(0.25, remaining)
            while self.device is None and (wait := retry - time.monotonic()) > 0:
                self.poll(wait)
        if self.device.version != PROTOCOL_VERSION:
            version, self.device = self.device.version, None  # no session: nothing is taken from it
            raise HandshakeError(f"{self.port}: device speaks protocol v{version}, this host v{PROTOCOL_VERSION}")
        self.counters["sessions"] += 1
        log.info("connected to %s on %s (protocol v%d, %d encoders, %d motors, %.0f Hz%s)", self.device.robot_id,
                 self.port, self.device.version, self.device.n_encoders, self.device.n_motors, self.device.rate_hz,
                 ", lockstep" if self.lockstep else "")
        return self.device

    @property
    def lockstep(self) -> bool:
        return bool(self.device and self.device.flags & SensorStatus.LOCKSTEP)

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
            self._serial = None
            self._decoder.flush()

    # ---- receiving ------------------------------------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> int:
        """Read whatever has arrived (waiting up to timeout_s for the first byte) and dispatch it. Returns frames read.

        pyserial opens and configures the port; the read itself is one select and one read on its descriptor, where
        pyserial's in_waiting + read would take five system calls per tick."""
        if self._serial is None:
            raise LinkLost(f"{self.port} is not open")
        try:
            fd = self._serial.fileno()
            if not select.select([fd], [], [], max(timeout_s, 0.0))[0]:
                return 0
            data = os.read(fd, _READ_SIZE)
        except (serial.SerialException, OSError) as error:
            self.close()
            raise LinkLost(f"{self.port}: {error}") from None
        if not data:  # readable yet empty: the device is gone (unplugged, or the pty's other end closed)
            self.close()
            raise LinkLost(f"{self.port}: the device reports readiness to read but returned no data")
        now = time.monotonic_ns()
        frames = self._decoder.feed(data)
        for frame in frames:
            try:
                message = parse(frame)
            except ProtocolError as error:
                self.counters["malformed"] += 1
                log.debug("dropped a malformed frame: %s", error)
                continue
            self._dispatch(frame, message, now)
        return len(frames)

    def _dispatch(self, frame, message, received_ns: int) -> None:
        """One parsed frame from the device."""
        if isinstance(message, SensorFrame):
            self._take_sensor(message, frame.seq, received_ns)
        elif isinstance(message, Hello):
            if self.device is None:  # the answer to our HELLO; one out of turn changes nothing, and is counted
                self.device, self._sensor_seq, self.session_lost = message, None, False
            else:
                self.counters["unsolicited_hello"] += 1
        elif isinstance(message, EStop):
            if message.engage:
                self.device_estop = message
        elif isinstance(message, Fault):
            self.faults.append(message)
            self.counters["device_faults"] += 1
            if message.code == FaultCode.NO_SESSION:
                self.session_lost = True

    def _take_sensor(self, message: SensorFrame, seq: int, received_ns: int) -> None:
        """A sensor frame is a protocol fault, counted and dropped, unless it comes in a session, is newer than the
        last by the device's sequence number, and has the encoder and motor counts the device declared."""
        device = self.device
        if device is None:
            self.counters["sensor_outside_session"] += 1
        elif (len(message.counts), len(message.applied)) != (device.n_encoders, device.n_motors):
            self.counters["sensor_wrong_shape"] += 1
        elif self._sensor_seq is not None and not 0 < (seq - self._sensor_seq) & 0xFFFFFFFF < 1 << 31:
            self.counters["sensor_out_of_order"] += 1
        else:
            self._sensor_seq = seq
            self.latest = SensorReading(message, seq, received_ns)

    def wait_sensor(self, newer_than_seq: int | None, timeout_s: float) -> SensorReading | None:
        """The newest sensor frame, waiting up to timeout_s for one newer than `newer_than_seq` (None: any)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.latest is not None and (newer_than_seq is None or self.latest.seq != newer_than_seq):
                return self.latest
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.poll(remaining)

    @property
    def link_counters(self) -> dict[str, int]:
        return dict(self._decoder.counters) | dict(self.counters)

    # ---- sending --------------------------------------------------------------------------------------------------

    def _send(self, message_type: MessageType, payload: bytes) -> int:
        if self._serial is None:
            raise LinkLost(f"{self.port} is not open")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        frame = encode_frame(message_type, self._seq, payload)
        try:
            # One non-blocking write on pyserial's descriptor. pyserial's own write (write_timeout=0) retries EAGAIN
            # without end, so a device that stopped reading would hang the loop once the port's buffer filled.
            written = os.write(self._serial.fileno(), frame)
        except BlockingIOError:
            written = 0
        except (serial.SerialException, OSError) as error:
            self.close()
            raise LinkLost(f"{self.port}: {error}") from None
        if written != len(frame):  # the device is not draining its input: the frame is lost (and counted)
            self.counters["tx_short"] += 1
        return self._seq

    def send_command(self, volts, enable: bool = True) -> int:
        return self._send(MessageType.COMMAND, Command(enable, tuple(map(float, volts))).pack())

    def send_estop(self, engage: bool, reason: str = "") -> int:
        return self._send(MessageType.ESTOP, EStop(engage, reason).pack())
