"""Excitation for system identification: a chirp plus random steps, through the agent and its supervisor, logged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from calibration.encoders import RobotCalibration
from calibration.procedures import SETTLE_S, Controller, ProcedureError, direction_confirmed, drive
from robot_app.agent.transition_log import TransitionLog
from robot_app.common.files import write_atomic
from robot_app.common.logs import utc_now
from robot_app.hardware.robot_io import RobotIO
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import wrap_angle


def excitation_signal(seconds: float, period_s: float, volts: float, seed: int,
                      chirp_hz: tuple[float, float] = (0.2, 3.0)) -> np.ndarray:
    """Held volts per period: a logarithmic chirp of half `volts`, plus random steps of up to half `volts` each held
    0.1 to 0.5 s, clipped to +-volts. The chirp sweeps the arm's and the pendulum's frequencies; the steps give the
    friction and the dead zone starts and stops at every speed."""
    n = round(seconds / period_s)
    t = np.arange(n) * period_s
    f0, f1 = chirp_hz
    rate = math.log(f1 / f0) / seconds
    chirp = 0.5 * volts * np.sin(2 * math.pi * f0 * (np.exp(rate * t) - 1) / rate)
    rng = np.random.default_rng(seed)
    steps = np.empty(n)
    start = 0
    while start < n:
        hold = max(1, round(rng.uniform(0.1, 0.5) / period_s))
        steps[start:start + hold] = rng.uniform(-0.5, 0.5) * volts
        start += hold
    return np.clip(chirp + steps, -volts, volts)


class ExciteController(Controller):
    """One trial: from rest, a swing, then the excitation signal, each with a weak centring PD on the arm so that the
    supervisor's limits are rarely met. What identification needs is what was sent, and that is recorded whatever it
    is.

    The swing, `swing_s` long: whenever the pendulum's last half-swing was under `SWING_RAD`, the arm pushes against
    the sign of its speed times the cosine of its angle from hanging, which pumps energy in; above it, the pendulum
    coasts. A small pendulum damping is seen there, where the pendulum moves fast and its Coulomb friction is small
    beside its damping; the chirp alone leaves it unresolved."""

    name, trials = "excite", 1
    CENTRE_KP, CENTRE_KD = 2.0, 0.1  # V/rad, V·s/rad
    SWING_RAD, PUMP_VOLTS = 1.5, 1.0  # the swing's amplitude from hanging; the pump's volts

    def __init__(self, spec: RobotSpec, signal: np.ndarray, volts: float, swing_s: float):
        super().__init__(spec)
        self.signal, self.volts, self.swing_s = signal, volts, swing_s
        self.trial_s = len(signal) * spec.period_s + swing_s + 2 * SETTLE_S  # room to settle first

    def start(self, position) -> None:
        self.goto("swing" if self.swing_s > 0 else "excite")
        self._swing, self._peak, self._last = 0.0, 0.0, 0.0  # the last half-swing's amplitude; this one's; last speed

    def act(self, position, velocity) -> float:
        volts = -self.CENTRE_KP * float(position[0]) - self.CENTRE_KD * float(velocity[0])
        if self.phase == "swing" and self.in_phase >= self.ticks(self.swing_s):
            self.goto("excite")
        if self.phase == "swing":
            angle = wrap_angle(float(position[1]) - math.pi)  # from hanging (0 is upright)
            speed = float(velocity[1])
            self._peak = max(self._peak, abs(angle))
            if speed * self._last < 0:  # a turning point
                self._swing, self._peak = self._peak, 0.0
            self._last = speed or self._last
            if self._swing < self.SWING_RAD:
                volts -= self.PUMP_VOLTS * (math.copysign(1.0, speed * math.cos(angle)) if abs(speed) > 0.1 else -1)
        elif self.in_phase < len(self.signal):
            volts += float(self.signal[self.in_phase])
        else:
            self.finished = True
            return 0.0
        return min(max(volts, -self.volts), self.volts)


def run_excitation(robot: RobotIO, spec: RobotSpec, calibration: RobotCalibration, out: str | Path,
                   seconds: float = 40.0, volts: float = 3.0, seed: int = 0, swing_s: float = 20.0) -> Path:
    """Excite the robot (`swing_s` of pendulum swing, then `seconds` of the signal) and record it into the transition
    log `out` (a new file), with `out`.json beside it saying how: the signal's parameters, the calibration's unit and
    steps, the control period, the device. Returns the log."""
    out = Path(out)
    if out.exists():
        raise ProcedureError(f"{out} exists: an excitation log is never appended to or overwritten")
    problems = []
    if not direction_confirmed(calibration, [s.name for s in spec.sensors]):
        problems.append("it drives the arm over its range, so it needs the encoder directions confirmed on this unit:"
                        " run `robot-app calibrate --step direction` first")
    low, high = spec.command_limits
    if not 0 < volts <= min(-low[0], high[0]):
        problems.append(f"--volts {volts:g} is outside the motor's command limit (0, {min(-low[0], high[0]):g}]")
    if problems:
        raise ProcedureError("excite cannot start: " + "; ".join(problems))
    signal = excitation_signal(seconds, spec.period_s, volts, seed)
    controller = ExciteController(spec, signal, volts, swing_s)
    with TransitionLog(out) as log:
        agent = drive(controller, robot, spec, calibration, log)
    meta = {"date": utc_now(),
            "robot_id": agent.device.robot_id, "firmware": agent.device.firmware, "robot": spec.name,
            "period_s": spec.period_s, "seconds": seconds, "volts": volts, "seed": seed,
            "swing_s": swing_s,
            "calibration": calibration.model_dump(mode="json"),
            "observation": "joint angles then velocities (rad, rad/s) in that calibration; action: volts as sent"}
    write_atomic(out.with_suffix(out.suffix + ".json"), (json.dumps(meta, indent=1) + "\n").encode())
    return out
