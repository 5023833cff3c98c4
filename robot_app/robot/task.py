"""The swing-up-and-balance task, defined once for the robot and for sim: sensor pipeline, observation, reward, end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from calibration.encoders import EncoderMap
from robot_app.common.artifact import Layouts
from robot_app.robot.spec import RobotSpec


@dataclasses.dataclass(frozen=True)
class JointState:
    """Calibrated joint angles and filtered velocities, in the spec's sensor order, at a device time."""

    position: tuple[float, ...]
    velocity: tuple[float, ...]
    time_s: float


class SensorPipeline:
    """Raw encoder counts -> calibrated angles -> velocities by a first-order low-passed finite difference.

    Plain floats throughout: the agent runs this every tick on a handful of values."""

    def __init__(self, encoders: EncoderMap, cutoff_rad_s: float):
        self.encoders = encoders
        self.cutoff = cutoff_rad_s
        self.state: JointState | None = None

    def reset(self) -> None:
        self.state = None

    def rebase(self, time_s: float) -> None:
        """Take `time_s` as the time of the last state (its source clock jumped): the next update differentiates
        from there, instead of from a time on the clock before the jump."""
        if self.state is not None:
            self.state = dataclasses.replace(self.state, time_s=time_s)

    def update(self, counts, time_s: float) -> JointState:
        position = self.encoders.angles(counts)
        last = self.state
        if last is None:
            velocity = (0.0,) * len(position)
        else:
            dt = time_s - last.time_s
            if dt <= 0:  # the same frame again: nothing new to differentiate
                return last
            blend = 1.0 - math.exp(-self.cutoff * dt)
            velocity = tuple(v + blend * ((p - p0) / dt - v) for p, p0, v in zip(position, last.position, last.velocity))
        self.state = JointState(position, velocity, time_s)
        return self.state


def wrap_angle(angle: float) -> float:
    """An angle in [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


class FurutaSwingUp(Layouts):
    """Swing the pendulum up from hanging and balance it, with the arm inside its software limit.

    Angles: arm theta (0 = centred), pendulum alpha (0 = upright, the calibration puts it there). Observation
    [cos θ, sin θ, cos α, sin α, θ̇, α̇]; reward max(0, 1 - (0.8|α| + 0.2|θ|)/π) as in public Furuta work; the episode
    terminates when the arm passes its software limit or a joint passes SPEED_MARGIN of its velocity limit, and is
    truncated after spec.episode_s.
    """

    # Within the safety limit: the measured speed is filtered (it lags), and a joint coasts on after the episode ends.
    # A learner then pays for spinning the pendulum up on a lightly damped robot, as the gate does.
    SPEED_MARGIN = 0.8

    obs_layout = (("arm_cos_sin", 2), ("pendulum_cos_sin", 2), ("velocity", 2))
    sensors = ("arm_encoder", "pendulum_encoder")

    def __init__(self, spec: RobotSpec):
        self.arm_limit = spec.joint("arm").position_limit
        joint_of = {sensor.name: sensor.joint for sensor in spec.sensors}
        self.joints = tuple(joint_of[name] for name in self.sensors)  # the joint of each angle in a JointState
        self.speed_limits = tuple(self.SPEED_MARGIN * spec.joint(joint).velocity_limit for joint in self.joints)
        self.max_episode_steps = spec.episode_steps
        self.action_layout = tuple(a.name for a in spec.actuators)
        self._reset_joints = [(a, self.joints.index(a.joint)) for a in spec.actuators]

    def observe(self, state: JointState) -> np.ndarray:
        arm, pendulum = state.position
        return np.array(
            [math.cos(arm), math.sin(arm), math.cos(pendulum), math.sin(pendulum), *state.velocity], dtype=np.float32
        )

    def joint_positions(self, obs: np.ndarray) -> np.ndarray:
        """The joint angles, wrapped to (-pi, pi], that observations [T, obs_dim] carry: a column per `joints`."""
        obs = np.asarray(obs).reshape(-1, 6)
        return np.arctan2(obs[:, [1, 3]], obs[:, [0, 2]])

    def joint_velocities(self, obs: np.ndarray) -> np.ndarray:
        """The joint velocities (rad/s) that observations [T, obs_dim] carry: a column per `joints`."""
        return np.asarray(obs).reshape(-1, 6)[:, 4:6]

    def reward(self, state: JointState) -> float:
        arm, pendulum = state.position
        return max(0.0, 1.0 - (0.8 * abs(wrap_angle(pendulum)) + 0.2 * abs(arm)) / math.pi)

    def terminated(self, state: JointState) -> bool:
        return (not self.arm_limit[0] <= state.position[0] <= self.arm_limit[1]
                or any(abs(v) > limit for v, limit in zip(state.velocity, self.speed_limits)))

    # Between episodes a real robot cannot be teleported: a PD loop centres the arm while the pendulum settles.
    def reset_command(self, state: JointState) -> np.ndarray:
        """The spec's reset controller: each actuator drives its joint to 0."""
        return np.array([-a.reset_kp * state.position[i] - a.reset_kd * state.velocity[i]
                         for a, i in self._reset_joints])

    def ready(self, state: JointState) -> bool:
        """Arm centred and still, pendulum hanging and nearly still: a fair start for the next episode."""
        arm, pendulum = state.position
        return (abs(arm) < 0.05 and abs(wrap_angle(pendulum)) > math.pi - 0.2
                and abs(state.velocity[0]) < 0.2 and abs(state.velocity[1]) < 0.3)


TASKS = {"swingup": FurutaSwingUp}


def make_task(spec: RobotSpec):
    if spec.task not in TASKS:
        raise ValueError(f"robot {spec.name}: unknown task {spec.task!r}; known tasks {sorted(TASKS)}")
    return TASKS[spec.task](spec)
