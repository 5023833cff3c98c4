"""The safety supervisor: every command passes through it, and it latches, like walk_in_the_park's monitor.

Per tick it checks, in order: e-stop (latched until an explicit reset), stale sensors, a non-finite policy output (both
latch a fault until the episode's end), actuator limits, joint-limit braking, overspeed, and the command rate limit.
Under an e-stop or stale sensors the motor driver is disabled, not merely commanded to the safe value. Near a joint
limit the command is capped continuously, so braking has no bang-bang of its own.
Every intervention is counted by reason and logged when it starts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math

import numpy as np

from robot_app.common.logs import first_and_doubling
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import JointState

log = logging.getLogger(__name__)
LIMIT_MARGIN_RAD = 0.05  # where a capped push aims to stop short of a limit: the prediction is only a prediction


@dataclasses.dataclass(frozen=True)
class Verdict:
    command: np.ndarray  # what goes on the wire
    enable: bool  # motor driver on
    reasons: tuple[str, ...]  # interventions this tick; empty when the policy's action passed untouched


class SafetySupervisor:
    """Works on plain floats, one per actuator: at a few values, numpy's per-call cost would dominate every tick."""

    def __init__(self, spec: RobotSpec, joint_order: list[str], period_s: float):
        """joint_order names the joint of each entry of JointState.position, e.g. ['arm', 'pendulum']."""
        self.spec = spec
        acts = spec.actuators
        self.low, self.high = spec.command_limits
        self._safe = tuple(float(a.safe_command) for a in acts)
        self.safe = np.array(self._safe)
        self.max_step = tuple(a.rate_limit * period_s for a in acts)
        self.joints = [spec.joint(a.joint) for a in acts]
        self.joint_index = [joint_order.index(a.joint) for a in acts]
        # A command is held one period, and the velocity it is judged on lags by the filter's time constant.
        self.hold_s = period_s + 1.0 / spec.velocity_cutoff_rad_s
        self.ramp_s = tuple((high - low) / a.rate_limit for low, high, a in zip(self.low, self.high, acts))
        self.watchdog_s = spec.watchdog_timeout_s
        self.estop_reason: str | None = None
        self.fault: str | None = None
        self.counts: collections.Counter[str] = collections.Counter()  # ticks on which each intervention acted
        self.latches: collections.Counter[str] = collections.Counter()  # times each fault latched
        self.starts: collections.Counter[str] = collections.Counter()  # times each intervention began
        self._last = self._safe
        self._maybe_off = False  # the motor may be off: the next command ramps from the safe value as well
        self._active: set[str] = set()

    # ---- latches ------------------------------------------------------------------------------------------------

    def engage_estop(self, reason: str) -> None:
        if self.estop_reason is None:
            log.warning("E-STOP engaged: %s", reason)
            self.counts["estop"] += 1
        self.estop_reason = self.estop_reason or reason

    def reset_estop(self) -> None:
        if self.estop_reason is not None:
            log.warning("e-stop reset (was: %s)", self.estop_reason)
        self.estop_reason = None

    def latch_fault(self, reason: str) -> None:
        if self.fault is None:
            self.latches[reason] += 1
            count = self.latches[reason]
            if first_and_doubling(count):
                log.warning("safety fault latched: %s (%d times so far); safe stop until the episode ends", reason,
                            count)
        self.fault = self.fault or reason

    def clear_fault(self) -> None:
        self.fault = None

    @property
    def safe_to_run(self) -> bool:
        return self.estop_reason is None and self.fault is None

    # ---- the check ----------------------------------------------------------------------------------------------

    def check(self, action, state: JointState | None, sensor_age_s: float) -> Verdict:
        if self.estop_reason is not None:
            return self.motor_off(["estop"])
        if state is None or sensor_age_s > self.watchdog_s:
            self.latch_fault("stale_sensors")  # no trustworthy state to brake with: the driver goes off
            return self.motor_off(["stale_sensors", self.fault])
        reasons: list[str] = []
        action = tuple(np.asarray(action, dtype=np.float64).reshape(len(self._safe)).tolist())
        if not all(map(math.isfinite, action)):
            self.latch_fault("non_finite_action")
        if self.fault is not None:
            reasons.append("safe_stop")
            command = self._brake_to_rest(state)
        else:
            command = tuple(min(max(v, low), high) for v, low, high in zip(action, self.low, self.high))
            if command != action:
                reasons.append("clamped")
        command = self._guard_joints(command, state, reasons)
        if self.fault is not None:
            reasons.append(self.fault)
        stepped = self._ramp(command)
        if stepped != command:
            reasons.append("rate_limited")
        self._last = stepped
        return self._verdict(stepped, True, reasons)

    def release_motor(self) -> Verdict:
        """The final command at shutdown: the safe value with the driver off."""
        self._last = self._safe
        return Verdict(self.safe.copy(), False, ("shutdown",))

    def motor_off(self, reasons: list[str]) -> Verdict:
        """The safe value with the driver disabled, counted under `reasons`; any later command ramps up from safe."""
        self.motor_was_off()
        return self._verdict(self._safe, False, reasons)

    def motor_was_off(self) -> None:
        """The motor may have driven nothing (the driver turned off, or the device says its watchdog cut it). Either may
        not have happened (a lost disable frame, a false status bit), so the next command ramps from both values."""
        self._maybe_off = True

    def _ramp(self, command: tuple[float, ...]) -> tuple[float, ...]:
        """The rate limit: each command within max_step of what the motor may be driving. That is the last command,
        and the safe value too once the motor may be off. Where those lie over two steps apart (a fast loop), no
        command is near both; it ramps from the safe value, as the motor most likely is off."""
        out = []
        for value, last, safe, step in zip(command, self._last, self._safe, self.max_step):
            low, high = last - step, last + step
            if self._maybe_off:
                low, high = max(low, safe - step), min(high, safe + step)
                if low > high:
                    low, high = safe - step, safe + step
            out.append(min(max(value, low), high))
        self._maybe_off = False
        return tuple(out)

    def _brake_to_rest(self, state: JointState) -> tuple[float, ...]:
        return tuple(min(max(safe - state.velocity[i] * (high - low), low), high)
                     for safe, low, high, i in zip(self._safe, self.low, self.high, self.joint_index))

    def _guard_joints(self, command: tuple[float, ...], state: JointState, reasons: list[str]) -> tuple[float, ...]:
        """Cap each actuated joint's command so that where it could stop stays inside its position limit.

        The prediction: the command acts for one period plus the velocity filter's lag; then reversing it takes the
        rate-limit ramp (coasting, conservatively); then the joint brakes at its spec's conservative deceleration. A
        command whose predicted stop is past a limit is lowered to the strongest push whose stop is at the limit, so a
        steady push into a limit slows the joint onto it instead of chattering between full push and full reverse.
        Where even full reverse cannot stop it in time, full reverse it is.
        """
        command = list(command)
        for k, (joint, i) in enumerate(zip(self.joints, self.joint_index)):
            position, velocity = float(state.position[i]), float(state.velocity[i])
            safe, low, high = self._safe[k], self.low[k], self.high[k]
            if abs(velocity) > joint.velocity_limit and _sign(command[k] - safe) == _sign(velocity):
                command[k] = safe
                reasons.append("overspeed")
            if joint.position_limit is None:
                continue
            volts_per_accel = (high - low) / (2.0 * joint.max_acceleration)
            for sign, limit, away in ((1.0, joint.position_limit[1], low), (-1.0, -joint.position_limit[0], high)):
                limit -= LIMIT_MARGIN_RAD
                p, v = sign * position, sign * velocity  # towards this limit
                accel = sign * (command[k] - safe) / volts_per_accel
                if self._stop_position(p, v, accel, joint, k) < limit:
                    continue
                if self._stop_position(p, v, -joint.max_acceleration, joint, k) >= limit:
                    if v > 0:
                        command[k] = away
                        reasons.append("braking")
                    elif accel > 0:
                        command[k] = safe
                        reasons.append("hold_at_limit")
                    continue
                capped = self._strongest_push(p, v, limit, joint, k)
                command[k] = min(max(safe + sign * capped * volts_per_accel, low), high)
                reasons.append("braking" if capped < 0 else "hold_at_limit")
        return tuple(command)

    def _stop_position(self, p: float, v: float, accel: float, joint, k: int) -> float:
        held = self.hold_s
        v1 = max(0.0, v + accel * held)
        return p + v * held + 0.5 * accel * held**2 + v1 * self.ramp_s[k] + v1**2 / (2.0 * joint.braking_deceleration)

    def _strongest_push(self, p: float, v: float, limit: float, joint, k: int) -> float:
        """The acceleration towards the limit whose predicted stop is exactly at it (_stop_position solved for accel).
        With u = v + accel * hold the speed after the hold: stop = p + v h/2 + u (h/2 + ramp) + u^2 / 2d when u > 0."""
        held, decel = self.hold_s, joint.braking_deceleration
        b, c = held / 2.0 + self.ramp_s[k], p + v * held / 2.0 - limit
        if c < 0:
            u = decel * (math.sqrt(b * b - 2.0 * c / decel) - b)
            return (u - v) / held
        return 2.0 * (limit - p - v * held) / held**2  # it must stop inside the hold: stop = p + v h + accel h^2 / 2

    def _verdict(self, command: tuple[float, ...], enable: bool, reasons: list[str]) -> Verdict:
        reasons = list(dict.fromkeys(reasons))
        for reason in reasons:
            self.counts[reason] += 1
            if reason not in self._active:
                self.starts[reason] += 1
                if first_and_doubling(self.starts[reason]):
                    log.info("safety intervention: %s (started %d times, active on %d ticks so far)", reason,
                             self.starts[reason], self.counts[reason])
        self._active = set(reasons)
        return Verdict(np.array(command), enable, tuple(reasons))


def _sign(x: float) -> int:
    return 1 if x > 0 else -1 if x < 0 else 0
