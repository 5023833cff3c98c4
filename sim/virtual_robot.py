"""The virtual robot: the spec's robot simulated in MuJoCo, speaking the serial protocol on a pseudo-terminal or TCP.

It behaves as firmware would: it answers HELLO, streams sensor frames (realtime) or steps once per command (lockstep),
cuts the motor when commands stop for the watchdog timeout, latches e-stops, and can inject faults for tests. It also
audits, from the device's side of the wire, every command it receives and every arrival of the arm at a hard stop.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import json
import logging
import math
import random
import select
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from robot_app.common.files import load_yaml_model, validate_model, write_atomic
from robot_app.common.health import Heartbeat
from robot_app.common.schedule import DeadlineSchedule, tighten_timer_slack
from robot_app.hardware.protocol import (
    PROTOCOL_VERSION, Command, EStop, Fault, FaultCode, FrameDecoder, Hello, MessageType, ProtocolError, SensorFrame,
    SensorStatus, encode_frame, parse,
)
from robot_app.robot.spec import RobotSpec
from sim.device_ends import PtyEnd, TcpEnd
from sim.furuta import FurutaPhysics

log = logging.getLogger(__name__)
REDRAW_AFTER_S = 4.0  # --randomise: simulated seconds between physics draws, at the least
AMPLIFIER_LIMIT_V = 15.0
_MOTOR_ENABLED, _WATCHDOG_TRIPPED, _ESTOP_LATCHED, _LOCKSTEP = (
    int(flag) for flag in (SensorStatus.MOTOR_ENABLED, SensorStatus.WATCHDOG_TRIPPED, SensorStatus.ESTOP_LATCHED,
                           SensorStatus.LOCKSTEP))

FIRMWARE = f"virtual-robot {importlib.metadata.version('robot_app')}"  # what its HELLO says it runs

@dataclasses.dataclass(frozen=True)
class Faults:
    """Faults to inject, device -> host unless noted. Times count from the start of serve()."""

    corrupt_rate: float = 0.0  # probability that each byte sent has one bit flipped
    drop_rate: float = 0.0  # probability that each frame sent is dropped
    latency_s: float = 0.0  # added to every frame sent
    hang_after_s: float | None = None  # then the device stops reading, sending and stepping
    disconnect_after_s: float | None = None  # then the device closes its end of the pty
    estop_after_s: float | None = None  # then the device's own e-stop button is pressed
    reboot_after_s: float | None = None  # then the firmware restarts: no session, motor off, clock and seqs from 0


class Variation(BaseModel):
    """How this unit differs from the nominal robot: what the gate draws, and the hidden truth that calibration and
    identification must recover (`virtual-robot --truth`). Delays are simulated time, lockstep only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    physics: dict[str, float] = {}  # FurutaPhysics.randomise names -> values
    plant_latency_s: float = Field(0.0, ge=0)  # each command reaches the motor this long into its period ...
    jitter_s: float = Field(0.0, ge=0)  # ... plus a uniform draw from [0, jitter_s)
    sensor_noise_counts: float = Field(0.0, ge=0)  # std of Gaussian noise on every encoder reading, in counts
    count_offsets: tuple[int, ...] = ()  # a calibration error: added to each encoder's counts
    count_directions: tuple[Literal[-1, 1], ...] = ()  # a wiring error: -1 reverses that encoder's counts
    hard_stops: tuple[float, float] | None = None  # rad: where the arm's mechanical stops really are
    dead_zone_v: tuple[float, float] = (0.0, 0.0)  # V: the motor gives no torque in (-first, +second)

    @model_validator(mode="after")
    def _physical(self) -> "Variation":
        if self.hard_stops is not None and not self.hard_stops[0] < 0 < self.hard_stops[1]:
            raise ValueError(f"hard_stops must be [low, high] with low < 0 < high, got {list(self.hard_stops)}")
        if min(self.dead_zone_v) < 0:
            raise ValueError(f"dead_zone_v is two magnitudes (negative side, positive side), got {self.dead_zone_v}")
        return self


def load_variation(text_or_path: str) -> Variation:
    """A unit's variation from a YAML file, or from YAML on the command line ('{count_offsets: [3, -2]}')."""
    path = Path(text_or_path)
    if path.suffix in (".yaml", ".yml"):
        return load_yaml_model(Variation, path, "virtual robot truth")
    try:
        data = yaml.safe_load(text_or_path)
    except yaml.YAMLError as error:
        raise ValueError(f"virtual robot truth {text_or_path!r} is neither a .yaml file nor YAML: {error}") from None
    return validate_model(Variation, data if data is not None else {}, "virtual robot truth")


@dataclasses.dataclass
class DeviceAudit:
    """What the device saw. Limits are checked here, on the far side of the wire from the agent."""

    commands: int = 0
    max_abs_command: float = 0.0
    limit_violations: int = 0  # commands outside the spec's command limits
    rate_violations: int = 0  # enabled commands further than rate_limit * period from what the motor was driving
    max_command_step: float = 0.0
    non_finite_commands: int = 0
    hard_stop_speeds: list[float] = dataclasses.field(default_factory=list)
    max_abs_position: list[float] = dataclasses.field(default_factory=list)  # per joint, rad
    max_abs_velocity: list[float] = dataclasses.field(default_factory=list)  # per joint, rad/s
    watchdog_trips: int = 0
    estops: int = 0
    estop_ns: list[int] = dataclasses.field(default_factory=list)  # when each e-stop engaged (monotonic ns, bounded)
    bad_frames: int = 0
    last_command: list[float] = dataclasses.field(default_factory=list)
    last_enabled: bool = False
    motor_enabled_at_exit: bool = False


class VirtualRobot:
    def __init__(self, spec: RobotSpec, lockstep: bool = False, faults: Faults = Faults(), seed: int = 0,
                 robot_id: str = "furuta-virtual-0", initial_qpos=None, variation: Variation = Variation(),
                 randomise: bool = False, listen: tuple[str, int] | None = None, heartbeat: str | Path | None = None):
        """randomise: domain randomisation for sim-first training. The unit's physics are drawn anew from the spec's
        ranges each time it comes to rest hanging, at most every 4 s: between episodes, after the agent's reset, and
        also in an episode where the robot stays hanging still.
        listen: (host, port) to serve on TCP instead of a pty. heartbeat: a file touched at every status line."""
        self.spec, self.lockstep, self.faults, self.variation = spec, lockstep, faults, variation
        self.randomise, self._next_draw_s = randomise, 0.0
        if (variation.plant_latency_s or variation.jitter_s) and not lockstep:
            raise ValueError("simulated-time latency and jitter need lockstep; use Faults.latency_s in realtime")
        for name in ("count_offsets", "count_directions"):
            values = getattr(variation, name)
            if values and len(values) != len(spec.sensors):
                raise ValueError(f"{name} {list(values)} has {len(values)} entries; the robot has "
                                 f"{len(spec.sensors)} encoders")
        self.robot_id = robot_id
        self.physics = FurutaPhysics(spec)
        self.physics.randomise(variation.physics)
        self.physics.set_hidden(variation.hard_stops, variation.dead_zone_v)
        rng = np.random.default_rng(seed)
        self.physics.reset(qpos=initial_qpos if initial_qpos is not None else rng.uniform(-0.02, 0.02, 2))
        self._rng = rng  # the per-period jitter and sensor noise
        self._substep_s = self.physics.model.opt.timestep
        self._max_delay_substeps = round(spec.period_s / self._substep_s) - 1  # the command lands inside its period
        self._random = random.Random(seed)
        self._draws = np.random.default_rng([seed, 1])
        self._end = TcpEnd(*listen, on_hangup=self._host_left) if listen else PtyEnd()
        self.port = self._end.name
        self.heartbeat = Heartbeat(heartbeat)
        self._decoder = FrameDecoder()
        self._seq = 0
        self._session = False
        self._enabled = False
        self._boot_time_s = 0.0  # the device clock counts from power-on (or the last reboot), in simulated time
        # The per-command path works on plain floats: numpy's per-call cost dwarfs arithmetic on a few values.
        self._off = (0.0,) * len(spec.actuators)
        self._volts = self._off
        self._last_command_ns: int | None = None
        self._watchdog_tripped = False
        self._estop = False
        self._ack_seq = 0
        self._outbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self._max_step = tuple(a.rate_limit * spec.period_s * (1 + 1e-6) + 1e-6 for a in spec.actuators)
        self._limits = tuple(zip(*spec.command_limits))
        self.audit = DeviceAudit()
        self.counters: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()  # frames refused with a FAULT, by its code
        self._stop = threading.Event()
        self._press_estop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def press_estop(self) -> None:
        """The device's own e-stop button (thread- and signal-safe)."""
        self._press_estop.set()

    # ---- serving --------------------------------------------------------------------------------------------------

    def serve(self, duration_s: float | None = None, status_every_s: float | None = None) -> DeviceAudit:
        """Answer the host until stopped (or `duration_s`); with `status_every_s`, log a status line that often."""
        tighten_timer_slack()
        start = time.monotonic()
        next_status = status_every_s if status_every_s else math.inf
        schedule = None if self.lockstep else DeadlineSchedule(self.spec.period_s)
        self.heartbeat.beat()
        try:
            while not self._stop.is_set():
                elapsed = time.monotonic() - start
                if duration_s is not None and elapsed >= duration_s:
                    break
                if elapsed >= next_status:
                    next_status += status_every_s
                    self._log_status()
                if self._due(self.faults.disconnect_after_s, elapsed):
                    log.warning("fault injection: disconnecting")
                    break
                if self._due(self.faults.hang_after_s, elapsed):
                    log.warning("fault injection: hanging")
                    self._stop.wait(None if duration_s is None else max(0.0, duration_s - elapsed))
                    break
                if self._due(self.faults.reboot_after_s, elapsed, once="reboot"):
                    log.warning("fault injection: rebooting")
                    self._reboot()
                if self._press_estop.is_set() or self._due(self.faults.estop_after_s, elapsed, once="estop"):
                    self._press_estop.clear()
                    self._engage_estop()
                    self._send(MessageType.ESTOP, EStop(True, "device button").pack())
                if schedule is None:
                    select.select([self._end], [], [], self._next_release_s(0.02))
                    for command in self._receive():
                        before = self._applied()
                        self._apply(command)
                        self._step_delayed(before)
                        self._send_sensor()
                else:
                    schedule.wait()
                    for command in self._receive():
                        self._apply(command)
                    self._check_watchdog()
                    self.physics.step(self._applied(), self.spec.period_s)
                    if self._session:
                        self._send_sensor()
                if schedule is None:
                    self._check_watchdog()
                self._flush_outbox()
            if self.lockstep and self._stop.is_set():
                self._act_on_pending()
        finally:
            self.audit.hard_stop_speeds = list(self.physics.hard_stop_speeds)
            self.audit.max_abs_position = self.physics.max_abs_qpos.tolist()
            self.audit.max_abs_velocity = self.physics.max_abs_qvel.tolist()
            self.audit.motor_enabled_at_exit = self._enabled and not self._estop and not self._watchdog_tripped
            self.audit.bad_frames = sum(v for k, v in self.link_counters.items() if k != "frames")
            self.close()
        return self.audit

    def close(self) -> None:
        self._end.close()

    def _due(self, at_s: float | None, elapsed: float, once: str | None = None) -> bool:
        if at_s is None or elapsed < at_s or (once and self.counters[f"done:{once}"]):
            return False
        if once:
            self.counters[f"done:{once}"] += 1
        return True

    # ---- firmware behaviour -----------------------------------------------------------------------------------------

    def _host_left(self) -> None:
        """A TCP host hung up: what it had half sent is counted and dropped, what was on its way to it is dropped, and
        the next host starts with the motor off and no session."""
        self._decoder.flush()
        self._outbox.clear()
        self._session = self._enabled = False

    def _log_status(self) -> None:
        self.heartbeat.beat()
        a = self.audit
        log.info("%s on %s: %s, motor %s; %d commands, %d bad frames, %d watchdog trips, %d e-stops", self.robot_id,
                 self.port, "host connected" if self._session else "no host yet", "on" if self._enabled else "off",
                 a.commands, sum(v for k, v in self.link_counters.items() if k != "frames"), a.watchdog_trips, a.estops)

    def _receive(self) -> list[Command]:
        data = self._end.read()
        if not data:
            return []
        commands = []
        for frame in self._decoder.feed(data):
            try:
                message = parse(frame)
            except ProtocolError as error:
                self._refuse(FaultCode.BAD_FRAME, str(error))
                continue
            if isinstance(message, Hello):
                self._handshake(message)
            elif isinstance(message, Command) and not self._session:
                self._refuse(FaultCode.NO_SESSION, "no session: send HELLO")
            elif isinstance(message, Command):
                if len(message.volts) != len(self.spec.actuators):
                    self._refuse(FaultCode.PROTOCOL, "wrong number of motor values")
                    continue
                self._ack_seq = frame.seq
                commands.append(message)
            elif isinstance(message, EStop):
                if message.engage:
                    self._engage_estop()
                else:
                    self._estop = False
            elif frame.type == MessageType.HEARTBEAT:
                self._send(MessageType.HEARTBEAT, b"", seq=frame.seq)  # echoed, for round-trip timing
        return commands

    def _refuse(self, code: FaultCode, reason: str) -> None:
        """A frame the device will not act on: counted, and answered with a FAULT saying why."""
        self.refused[code.name] += 1
        self._send(MessageType.FAULT, Fault(code, reason).pack())

    @property
    def link_counters(self) -> dict[str, int]:
        """What the device's receiver counted: frames, each kind of bad input dropped, and each frame refused."""
        return dict(self._decoder.counters) | {f"refused_{name.lower()}": n for name, n in self.refused.items()}

    def _handshake(self, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            self._refuse(FaultCode.PROTOCOL, f"protocol v{hello.version} unsupported")
            return
        self._session = True
        self._enabled = False
        flags = SensorStatus.LOCKSTEP if self.lockstep else 0
        reply = Hello(PROTOCOL_VERSION, self.robot_id, len(self.spec.sensors), len(self.spec.actuators),
                      self.spec.control_rate_hz, int(flags), FIRMWARE)
        self._send(MessageType.HELLO, reply.pack())
        if self.lockstep:
            self._send_sensor()

    def _apply(self, command: Command) -> None:
        volts, enable, audit = command.volts, command.enable, self.audit
        audit.commands += 1
        audit.last_command, audit.last_enabled = list(volts), enable
        finite = all(map(math.isfinite, volts))
        if finite:
            audit.max_abs_command = max(audit.max_abs_command, *map(abs, volts))
        else:
            audit.non_finite_commands += 1
        if enable:
            if not (finite and all(low <= v <= high for v, (low, high) in zip(volts, self._limits))):
                audit.limit_violations += 1
            # Each step is judged from what the amplifier was driving (0 V when off, NaN as the 0 V it drove): a
            # non-finite command is an unbounded step, and the one after it is judged from 0 V.
            steps = [abs(v - a) for v, a in zip(volts, self._applied())]
            if finite:
                audit.max_command_step = max(audit.max_command_step, *steps)
            if not finite or any(step > allowed for step, allowed in zip(steps, self._max_step)):
                audit.rate_violations += 1
        self._last_command_ns = time.monotonic_ns()
        self._watchdog_tripped = False
        self._enabled = enable
        # The amplifier: NaN drives nothing, anything else saturates at its rails.
        self._volts = tuple(0.0 if math.isnan(v) else min(max(v, -AMPLIFIER_LIMIT_V), AMPLIFIER_LIMIT_V)
                            for v in volts)

    def _act_on_pending(self) -> None:
        """Stopping in lockstep: the commands already sent (the agent's final safe stop) still take effect, so a run
        ends in the same physical state however the stop request and the last command race."""
        for command in self._receive():
            before = self._applied()
            self._apply(command)
            self._step_delayed(before)

    def _step_delayed(self, before: tuple[float, ...]) -> None:
        """One period: the previous command holds until this one arrives, `latency + jitter` into the period."""
        variation, substep = self.variation, self._substep_s
        jitter = float(self._rng.uniform(0, variation.jitter_s)) if variation.jitter_s else 0.0
        delay = variation.plant_latency_s + jitter
        delay = min(round(delay / substep), self._max_delay_substeps) * substep  # whole substeps, in the period
        if delay > 0:
            self.physics.step(before, delay)
        self.physics.step(self._applied(), self.spec.period_s - delay)
        if self.randomise and self.physics.time_s >= self._next_draw_s and self.physics.hanging_still():
            self._next_draw_s = self.physics.time_s + REDRAW_AFTER_S
            self.counters["physics_draws"] += 1
            log.debug("physics drawn anew: %s", self.physics.draw(self._draws))

    def _applied(self) -> tuple[float, ...]:
        if self._enabled and not self._estop and not self._watchdog_tripped:
            return self._volts
        return self._off

    def _check_watchdog(self) -> None:
        if not self._enabled or self._watchdog_tripped or self._last_command_ns is None:
            return
        silent_s = (time.monotonic_ns() - self._last_command_ns) / 1e9
        if silent_s > self.spec.watchdog_timeout_s:
            self._watchdog_tripped = True
            self.audit.watchdog_trips += 1
            log.warning("firmware watchdog: no command for %.3f s, motor off", silent_s)
            self._send(MessageType.FAULT, Fault(FaultCode.WATCHDOG, f"no command for {silent_s:.3f} s").pack())

    def _reboot(self) -> None:
        """What a firmware reset loses: the session, the motor output, the watchdog state, the clock and the seqs."""
        self._session = self._enabled = self._watchdog_tripped = False
        self._last_command_ns, self._seq, self._ack_seq = None, 0, 0
        self._boot_time_s = self.physics.time_s
        self._decoder.flush()  # a partial frame in the UART buffer is lost
        self.counters["reboots"] += 1

    def _engage_estop(self) -> None:
        if not self._estop:
            self.audit.estops += 1
            if len(self.audit.estop_ns) < 10_000:
                self.audit.estop_ns.append(time.monotonic_ns())
        self._estop = True

    def _send_sensor(self) -> None:
        status = _LOCKSTEP if self.lockstep else 0
        if self._enabled and not self._estop and not self._watchdog_tripped:
            status |= _MOTOR_ENABLED
        if self._watchdog_tripped:
            status |= _WATCHDOG_TRIPPED
        if self._estop:
            status |= _ESTOP_LATCHED
        frame = SensorFrame(round((self.physics.time_s - self._boot_time_s) * 1e6), status, self._ack_seq,
                            tuple(self._counts()),
                            self._applied())
        self._send(MessageType.SENSOR, frame.pack())

    def _counts(self) -> list[int]:
        counts, variation = self.physics.counts(), self.variation
        if variation.count_directions:
            counts = [c * direction for c, direction in zip(counts, variation.count_directions)]
        if variation.count_offsets:
            counts = [c + offset for c, offset in zip(counts, variation.count_offsets)]
        if variation.sensor_noise_counts:
            noise = self._rng.normal(0, variation.sensor_noise_counts, len(counts)).tolist()
            counts = [c + round(n) for c, n in zip(counts, noise)]
        return counts

    # ---- the wire, with injected faults -----------------------------------------------------------------------------

    def _send(self, message_type: MessageType, payload: bytes, seq: int | None = None) -> None:
        if seq is None:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
        if self.faults.drop_rate and self._random.random() < self.faults.drop_rate:
            self.counters["dropped"] += 1
            return
        data = encode_frame(message_type, seq, payload)
        if self.faults.corrupt_rate:
            data = self._corrupt(data)
        if self.faults.latency_s or self._outbox:  # a delayed frame waits its time; later ones queue behind it
            self._outbox.append((time.monotonic_ns() + round(self.faults.latency_s * 1e9), data))
            self._flush_outbox()
        else:
            self._write(data)

    def _corrupt(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        for i in range(len(data)):
            if self._random.random() < self.faults.corrupt_rate:
                data[i] ^= 1 << self._random.randrange(8)
                self.counters["corrupted_bytes"] += 1
        return bytes(data)

    def _next_release_s(self, default: float) -> float:
        if not self._outbox:
            return default
        return max(0.0, min(default, (self._outbox[0][0] - time.monotonic_ns()) / 1e9))

    def _flush_outbox(self) -> None:
        now = time.monotonic_ns()
        while self._outbox and self._outbox[0][0] <= now:
            self._write(self._outbox.popleft()[1])

    def _write(self, data: bytes) -> None:
        written = self._end.write(data)  # short: the host does not drain the line, and the frame is lost, as on a UART
        if written != len(data):
            self.counters["tx_overflow"] += 1


def write_audit(audit: DeviceAudit, path: str | Path) -> None:
    """Strict JSON: a non-finite value the device saw (a NaN command) is written as a string: "nan", "inf", "-inf"."""
    write_atomic(path, json.dumps(_finite_or_text(dataclasses.asdict(audit)), indent=1, allow_nan=False).encode())


def _finite_or_text(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_finite_or_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    return value
