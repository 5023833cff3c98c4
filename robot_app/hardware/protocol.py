"""The serial wire protocol shared with firmware (and the virtual robot): frame codec and message payloads.

The byte layout is the contract documented in docs/SERIAL_PROTOCOL.md; change both together and bump PROTOCOL_VERSION.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from collections import Counter

PROTOCOL_VERSION = 1
SYNC = b"\xa5\x5a"
MAX_PAYLOAD = 256
_HEADER = struct.Struct("<2sHBI")  # sync, payload length, message type, sequence number
_CRC = struct.Struct("<I")
HEADER_SIZE, CRC_SIZE = _HEADER.size, _CRC.size
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE


class MessageType(enum.IntEnum):
    HELLO = 0x01
    SENSOR = 0x02
    COMMAND = 0x03
    HEARTBEAT = 0x04
    ESTOP = 0x05
    FAULT = 0x06


class SensorStatus(enum.IntFlag):
    MOTOR_ENABLED = 0x01
    WATCHDOG_TRIPPED = 0x02
    ESTOP_LATCHED = 0x04
    LOCKSTEP = 0x08


class FaultCode(enum.IntEnum):
    WATCHDOG = 1  # no command within the watchdog timeout: the motor is off
    BAD_FRAME = 2  # the device dropped a frame it could not decode
    PROTOCOL = 3  # a well-formed frame the device will not act on (wrong version, wrong sizes)
    NO_SESSION = 4  # a COMMAND outside a session (the device restarted since the HELLO): the host must HELLO again


class ProtocolError(ValueError):
    """A frame's payload does not decode as its message type says."""


@dataclasses.dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


def encode_frame(message_type: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    body = _HEADER.pack(SYNC, len(payload), int(message_type), seq & 0xFFFFFFFF) + payload
    return body + _CRC.pack(zlib.crc32(body[2:]))


class FrameDecoder:
    """Streaming decoder: feed it any bytes; it returns whole valid frames and never raises.

    Garbage before a sync is skipped. A frame with a bad CRC, an oversized length or an unknown type is counted and
    dropped, and the search resumes one byte after its sync, so a real frame hidden inside it is still found. While a
    frame waits for the rest of its declared length, a whole valid frame found after its start wins: the waiting one
    was cut off (a lost tail, or a corrupt length), so a bad header never holds back the frames behind it.
    """

    def __init__(self):
        self._buffer = bytearray()
        self.counters: Counter[str] = Counter()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buffer = self._buffer
        while buffer:
            start = buffer.find(SYNC)
            if start < 0:
                keep = 1 if buffer.endswith(SYNC[:1]) else 0
                self.counters["garbage_bytes"] += len(buffer) - keep
                del buffer[: len(buffer) - keep]
                break
            if start:
                self.counters["garbage_bytes"] += start
                del buffer[:start]
            if len(buffer) < HEADER_SIZE:
                break
            _, length, message_type, seq = _HEADER.unpack_from(buffer)
            if length > MAX_PAYLOAD:
                self.counters["oversized"] += 1
                del buffer[:1]
                continue
            end = HEADER_SIZE + length + CRC_SIZE
            if len(buffer) < end:
                later = _next_whole_frame(buffer)
                if later is None:
                    break
                self.counters["truncated"] += 1
                del buffer[:later]
                continue
            (crc,) = _CRC.unpack_from(buffer, end - CRC_SIZE)
            if crc != zlib.crc32(memoryview(buffer)[2 : end - CRC_SIZE]):
                self.counters["bad_crc"] += 1
                del buffer[:1]
                continue
            if message_type not in _KNOWN_TYPES:
                self.counters["unknown_type"] += 1
                del buffer[:end]
                continue
            frames.append(Frame(message_type, seq, bytes(buffer[HEADER_SIZE : end - CRC_SIZE])))
            self.counters["frames"] += 1
            del buffer[:end]
        return frames

    def flush(self) -> None:
        """The stream ended (link closed or reset): a partial frame left in the buffer is counted as truncated."""
        if self._buffer.find(SYNC) >= 0:
            self.counters["truncated"] += 1
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


def _next_whole_frame(buffer: bytearray) -> int | None:
    """Where the first whole frame with a valid CRC starts after the buffer's first byte, if one does."""
    start = buffer.find(SYNC, 1)
    while 0 < start <= len(buffer) - HEADER_SIZE - CRC_SIZE:
        _, length, _, _ = _HEADER.unpack_from(buffer, start)
        end = start + HEADER_SIZE + length + CRC_SIZE
        if length <= MAX_PAYLOAD and end <= len(buffer):
            (crc,) = _CRC.unpack_from(buffer, end - CRC_SIZE)
            if crc == zlib.crc32(memoryview(buffer)[start + 2 : end - CRC_SIZE]):
                return start
        start = buffer.find(SYNC, start + 1)
    return None


# ---- payloads -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hello:
    """Handshake. The host sends it first; the device answers with its own (rate_hz, flags and firmware filled in).
    The names travel after the fixed part: robot_id, then a NUL and the firmware version (absent from older devices)."""

    version: int
    robot_id: str
    n_encoders: int = 0
    n_motors: int = 0
    rate_hz: float = 0.0  # the device's sensor stream rate; 0 from the host
    flags: int = 0  # SensorStatus.LOCKSTEP from a device that steps once per command
    firmware: str = ""  # the device's firmware version; "" when it says none

    _FIXED = struct.Struct("<HBBfB")

    def pack(self) -> bytes:
        name, firmware = self.robot_id.encode(), self.firmware.encode()
        for label, value, encoded in (("robot_id", self.robot_id, name), ("firmware", self.firmware, firmware)):
            if len(encoded) > 64 or b"\0" in encoded:
                raise ProtocolError(f"{label} {value!r} is longer than 64 bytes or holds a NUL")
        tail = name + (b"\0" + firmware if firmware else b"")
        return self._FIXED.pack(self.version, self.n_encoders, self.n_motors, self.rate_hz, self.flags) + tail

    @classmethod
    def unpack(cls, payload: bytes) -> "Hello":
        _need(payload, cls._FIXED.size, "HELLO", exact=False)
        version, n_encoders, n_motors, rate_hz, flags = cls._FIXED.unpack_from(payload)
        name, _, firmware = payload[cls._FIXED.size :].partition(b"\0")
        try:
            robot_id, firmware = name.decode(), firmware.decode()
        except UnicodeDecodeError:
            raise ProtocolError("HELLO robot_id or firmware is not UTF-8") from None
        return cls(version, robot_id, n_encoders, n_motors, rate_hz, flags, firmware)


@dataclasses.dataclass(frozen=True)
class SensorFrame:
    """Device -> host at the control rate: raw encoder counts and what the motor driver is applying."""

    device_time_us: int
    status: int  # SensorStatus bits
    ack_seq: int  # sequence number of the last command the device applied
    counts: tuple[int, ...]
    applied: tuple[float, ...]  # volts actually on each motor

    _FIXED = struct.Struct("<QHIBB")

    def pack(self) -> bytes:
        fixed = self._FIXED.pack(self.device_time_us, self.status, self.ack_seq, len(self.counts), len(self.applied))
        return fixed + struct.pack(f"<{len(self.counts)}i{len(self.applied)}f", *self.counts, *self.applied)

    @classmethod
    def unpack(cls, payload: bytes) -> "SensorFrame":
        _need(payload, cls._FIXED.size, "SENSOR", exact=False)
        time_us, status, ack, n_counts, n_applied = cls._FIXED.unpack_from(payload)
        _need(payload, cls._FIXED.size + 4 * (n_counts + n_applied), "SENSOR")
        values = struct.unpack_from(f"<{n_counts}i{n_applied}f", payload, cls._FIXED.size)
        return cls(time_us, status, ack, tuple(values[:n_counts]), tuple(values[n_counts:]))


@dataclasses.dataclass(frozen=True)
class Command:
    """Host -> device: volts per motor, and whether the driver is enabled. Each one feeds the firmware watchdog."""

    enable: bool
    volts: tuple[float, ...]

    def pack(self) -> bytes:
        return struct.pack(f"<BB{len(self.volts)}f", int(self.enable), len(self.volts), *self.volts)

    @classmethod
    def unpack(cls, payload: bytes) -> "Command":
        _need(payload, 2, "COMMAND", exact=False)
        enable, n = payload[0], payload[1]
        _need(payload, 2 + 4 * n, "COMMAND")
        return cls(bool(enable), struct.unpack_from(f"<{n}f", payload, 2))


@dataclasses.dataclass(frozen=True)
class EStop:
    """Either way: engage (latch the motor off) or release. The device sends it when its own e-stop button is pressed."""

    engage: bool
    reason: str = ""

    def pack(self) -> bytes:
        return bytes([int(self.engage)]) + self.reason.encode()[:128]

    @classmethod
    def unpack(cls, payload: bytes) -> "EStop":
        _need(payload, 1, "ESTOP", exact=False)
        return cls(bool(payload[0]), payload[1:].decode(errors="replace"))


@dataclasses.dataclass(frozen=True)
class Fault:
    """Device -> host: something the firmware detected, with a code and a short text."""

    code: int
    message: str = ""

    def pack(self) -> bytes:
        return struct.pack("<H", self.code) + self.message.encode()[:128]

    @classmethod
    def unpack(cls, payload: bytes) -> "Fault":
        _need(payload, 2, "FAULT", exact=False)
        return cls(struct.unpack_from("<H", payload)[0], payload[2:].decode(errors="replace"))


def _need(payload: bytes, size: int, name: str, exact: bool = True) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        raise ProtocolError(f"{name} payload is {len(payload)} bytes, expected {'' if exact else 'at least '}{size}")


PAYLOADS = {
    MessageType.HELLO: Hello,
    MessageType.SENSOR: SensorFrame,
    MessageType.COMMAND: Command,
    MessageType.ESTOP: EStop,
    MessageType.FAULT: Fault,
}


def parse(frame: Frame):
    """The typed payload of a frame (None for HEARTBEAT). Raises ProtocolError if the payload is malformed."""
    if frame.type == MessageType.HEARTBEAT:
        return None
    return PAYLOADS[frame.type].unpack(frame.payload)
