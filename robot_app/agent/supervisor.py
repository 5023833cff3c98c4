"""The safety supervisor: every command passes through it, and it latches, like walk_in_the_park's monitor.

Per tick it checks, in order: e-stop (latched until an explicit reset), stale sensors, a non-finite policy output (both
latch a fault until the episode's end), actuator limits, joint-limit braking, overspeed, and the command rate limit.
Every intervention is counted by reason and logged when it starts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math

import numpy as np

from robot_app.logs import first_and_doubling
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import JointState

log = logging.getLogger(__name__)


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
        self.low = tuple(float(a.command_limit[0]) for a in acts)
        self.high = tuple(float(a.command_limit[1]) for a in acts)
        self._safe = tuple(float(a.safe_command) for a in acts)
        self.safe = np.array(self._safe)
        self.max_step = tuple(a.rate_limit * period_s for a in acts)
        self.joints = [spec.joint(a.joint) for a in acts]
        self.joint_index = [joint_order.index(a.joint) for a in acts]
        # A command is held one period, and the velocity it is judged on lags by the filter's time constant.
        self.hold_s = period_s + 1.0 / spec.velocity_cutoff_rad_s
        self.ramp_s = tuple((a.command_limit[1] - a.command_limit[0]) / a.rate_limit for a in acts)
        self.watchdog_s = spec.watchdog_timeout_s
        self.estop_reason: str | None = None
        self.fault: str | None = None
        self.counts: collections.Counter[str] = collections.Counter()  # ticks on which each intervention acted
        self.latches: collections.Counter[str] = collections.Counter()  # times each fault latched
        self.starts: collections.Counter[str] = collections.Counter()  # times each intervention began
        self._last = self._safe
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
        reasons: list[str] = []
        if self.estop_reason is not None:
            self._last = self._safe
            return self._verdict(self._safe, False, ["estop"])
        if state is None or sensor_age_s > self.watchdog_s:
            self.latch_fault("stale_sensors")
            command = self._safe  # no trustworthy state to brake with
        else:
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
        stepped = tuple(min(max(c, last - step), last + step) for c, last, step in zip(command, self._last,
                                                                                        self.max_step))
        if stepped != command:
            reasons.append("rate_limited")
        self._last = stepped
        return self._verdict(stepped, True, reasons)

    def release_motor(self) -> Verdict:
        """The final command at shutdown: the safe value with the driver off."""
        self._last = self._safe
        return Verdict(self.safe.copy(), False, ("shutdown",))

    def _brake_to_rest(self, state: JointState) -> tuple[float, ...]:
        return tuple(min(max(safe - state.velocity[i] * (high - low), low), high)
                     for safe, low, high, i in zip(self._safe, self.low, self.high, self.joint_index))

    def _guard_joints(self, command: tuple[float, ...], state: JointState, reasons: list[str]) -> tuple[float, ...]:
        """Predict where each actuated joint could stop, given this command, and brake if that is past its limit.

        The command acts for one period plus the velocity filter's lag; then reversing it takes the rate-limit ramp
        (coasting, conservatively); then the joint brakes at its spec's conservative deceleration.
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
            push = (command[k] - safe) / (high - low) * 2.0  # -1..1 of full command
            for sign, limit, away in ((1.0, joint.position_limit[1], low), (-1.0, -joint.position_limit[0], high)):
                p, v, a = sign * position, sign * velocity, sign * push * joint.max_acceleration
                held = self.hold_s
                v1 = max(0.0, v + a * held)
                p1 = p + v * held + 0.5 * a * held**2 + v1 * self.ramp_s[k]
                if p1 + v1**2 / (2.0 * joint.braking_deceleration) < limit:
                    continue
                if v > 0:
                    command[k] = away
                    reasons.append("braking")
                elif sign * (command[k] - safe) > 0:
                    command[k] = safe
                    reasons.append("hold_at_limit")
        return tuple(command)

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
