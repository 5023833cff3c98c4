"""The seam between the agent and a robot: what the agent reads from a device and sends it, whatever carries it."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from robot_app.hardware.protocol import EStop, Hello, SensorFrame


class LinkLost(ConnectionError):
    """The device went away (unplugged, closed, or the port errored)."""


class HandshakeError(ConnectionError):
    """The device did not answer HELLO in time, or answered with something this host cannot drive."""


@dataclasses.dataclass(frozen=True)
class SensorReading:
    frame: SensorFrame
    seq: int
    received_ns: int  # host monotonic clock


class RobotIO(Protocol):
    """One link to one robot's device. `SerialRobot` is the implementation; any other carrier (a CAN bus, a shared
    memory ring) implements the same calls. Every call returns within its timeout; a lost link raises LinkLost."""

    port: str  # where the device is, for messages
    latest: SensorReading | None  # the newest sensor frame taken in this session
    device_estop: EStop | None  # an e-stop the device reported and nobody consumed yet (the agent clears it)
    session_lost: bool  # the device said it has no session (it restarted): handshake() again
    counters: dict[str, int]  # link events by name, which the agent also counts into

    def connect(self, timeout_s: float = 2.0) -> Hello: ...

    def handshake(self, timeout_s: float = 2.0) -> Hello: ...

    @property
    def lockstep(self) -> bool: ...

    def close(self) -> None: ...

    def poll(self, timeout_s: float = 0.0) -> int: ...

    def wait_sensor(self, newer_than_seq: int | None, timeout_s: float) -> SensorReading | None: ...

    @property
    def link_counters(self) -> dict[str, int]: ...

    def send_command(self, volts, enable: bool = True) -> int: ...

    def send_estop(self, engage: bool, reason: str = "") -> int: ...
