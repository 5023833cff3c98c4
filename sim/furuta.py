"""The Furuta robot in MuJoCo: volts in, raw encoder counts out; and the `furuta:` training environment over it."""

from __future__ import annotations

import math
from pathlib import Path

import mujoco
import numpy as np

from calibration.encoders import load_calibration
from robot_app.robot.spec import Parameter, RobotSpec, load_robot_spec
from robot_app.robot.task import SensorPipeline, make_task
from sim.env import EnvSpec, StepResult, UnknownEnvironmentError

ASSETS = Path(__file__).parent / "assets"


def get_parameter(model, parameter: Parameter, element: str) -> float:
    """One physical parameter of the spec's randomisation table, as the MuJoCo model has it."""
    if parameter is Parameter.JOINT_DAMPING:
        return float(model.dof_damping[model.joint(element).dofadr[0]])
    if parameter is Parameter.JOINT_FRICTION:
        return float(model.dof_frictionloss[model.joint(element).dofadr[0]])
    if parameter is Parameter.JOINT_STIFFNESS:
        return float(model.jnt_stiffness[model.joint(element).id])
    if parameter is Parameter.BODY_MASS:
        return float(model.body_mass[model.body(element).id])
    if parameter is Parameter.ACTUATOR_GAIN:
        return float(model.actuator_gainprm[model.actuator(element).id, 0])
    raise ValueError(f"{parameter.value} is not a parameter of the MuJoCo model")


def set_parameter(model, parameter: Parameter, element: str, value: float) -> None:
    """Set one physical parameter of the spec's randomisation table on the MuJoCo model. An element the model does
    not name raises KeyError."""
    if parameter is Parameter.JOINT_DAMPING:
        model.dof_damping[model.joint(element).dofadr[0]] = value
    elif parameter is Parameter.JOINT_FRICTION:
        model.dof_frictionloss[model.joint(element).dofadr[0]] = value
    elif parameter is Parameter.JOINT_STIFFNESS:
        model.jnt_stiffness[model.joint(element).id] = value
    elif parameter is Parameter.BODY_MASS:  # the body keeps its shape: inertia scales with mass
        body = model.body(element).id
        model.body_inertia[body] *= value / model.body_mass[body]
        model.body_mass[body] = value
    elif parameter is Parameter.ACTUATOR_GAIN:  # an affine bias (the back-EMF term, gain * km) scales with the gain
        actuator = model.actuator(element).id
        model.actuator_biasprm[actuator, 2] *= value / model.actuator_gainprm[actuator, 0]
        model.actuator_gainprm[actuator, 0] = value
    else:
        raise ValueError(f"{parameter.value} is not a parameter of the MuJoCo model")


def dead_zone(volts: float, negative: float, positive: float) -> float:
    """A motor's dead zone: nothing for commands in (-negative, positive), and the command less the zone beyond."""
    if volts >= positive:
        return volts - positive
    return volts + negative if volts <= -negative else 0.0


class FurutaPhysics:
    """MuJoCo physics of a robot spec's MJCF, read through ideal quantised encoders that zero at qpos = 0.

    It also watches the arm's hard stops: every arrival at a stop is recorded with its speed.
    """

    def __init__(self, spec: RobotSpec):
        self.spec = spec
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / spec.mjcf))
        self.data = mujoco.MjData(self.model)
        self._sensor_joint = [self.model.joint(s.joint).qposadr[0] for s in spec.sensors]
        self._counts_per_rad = tuple(s.counts_per_rev / (2 * math.pi) for s in spec.sensors)
        arm = spec.joint("arm")
        self._arm_qpos = self.model.joint("arm").qposadr[0]
        self._arm_dof = self.model.joint("arm").dofadr[0]
        self._pendulum_qpos = self.model.joint("pendulum").qposadr[0]  # 0: hanging
        self._stops = arm.hard_stop
        self._dead_zone = (0.0, 0.0)
        self.hard_stop_speeds: list[float] = []  # |arm velocity| at each arrival at a hard stop
        self._at_stop = False
        self.max_abs_qpos = np.zeros(self.model.nq)  # per joint, sampled at the end of every step() call
        self.max_abs_qvel = np.zeros(self.model.nv)

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        """Physical parameters drawn from the spec's randomisation ranges, and set (domain randomisation)."""
        params = self.spec.draw(rng, physical_only=True)
        self.randomise(params)
        return params

    def hanging_still(self) -> bool:
        """Arm near centre, pendulum hanging, both nearly still: where a reset leaves the robot between episodes."""
        return bool(np.all(np.abs(self.data.qvel) < 0.05)) and abs(self.data.qpos[self._arm_qpos]) < 0.2 and abs(
            math.remainder(self.data.qpos[self._pendulum_qpos], 2 * math.pi)) < 0.1

    def randomise(self, params: dict[str, float]) -> None:
        """Set physical parameters by the names of the spec's randomisation ranges, as each range maps onto the
        MJCF (its parameter, of its element)."""
        model = self.model
        for name, value in params.items():
            span = self.spec.randomisation.get(name)
            if span is None or not span.parameter.physical:
                raise ValueError(f"randomisation {name!r} is not a physical parameter of robot {self.spec.name}")
            try:
                set_parameter(model, span.parameter, span.element, value)
            except KeyError:
                raise ValueError(f"randomisation {name!r}: {self.spec.mjcf} has no {span.parameter.value} element "
                                 f"{span.element!r}") from None

    def set_hidden(self, hard_stops: tuple[float, float] | None, dead_zone_v: tuple[float, float]) -> None:
        """What a unit hides from its spec: the arm's true mechanical stops (rad; None keeps the MJCF's), and the
        motor's dead zone (V either side of 0 that give no torque; beyond it the command is reduced by it)."""
        if hard_stops is not None:
            self.model.jnt_range[self.model.joint("arm").id] = hard_stops
            self._stops = tuple(hard_stops)
        self._dead_zone = tuple(dead_zone_v)

    @property
    def time_s(self) -> float:
        return float(self.data.time)

    def reset(self, qpos=None, qvel=None) -> None:
        mujoco.mj_resetData(self.model, self.data)
        if qpos is not None:
            self.data.qpos[:] = qpos
        if qvel is not None:
            self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self._at_stop = False

    def step(self, volts, duration_s: float) -> None:
        """Hold `volts` on the motors for duration_s of simulated time."""
        self.data.ctrl[:] = volts if self._dead_zone == (0.0, 0.0) else [dead_zone(v, *self._dead_zone) for v in volts]
        for _ in range(max(1, round(duration_s / self.model.opt.timestep))):
            speed = abs(self.data.qvel[self._arm_dof])
            mujoco.mj_step(self.model, self.data)
            if self._stops is not None:
                angle = self.data.qpos[self._arm_qpos]
                at_stop = not self._stops[0] + 1e-3 < angle < self._stops[1] - 1e-3
                if at_stop and not self._at_stop:
                    self.hard_stop_speeds.append(float(speed))
                self._at_stop = at_stop
        np.maximum(self.max_abs_qpos, np.abs(self.data.qpos), out=self.max_abs_qpos)
        np.maximum(self.max_abs_qvel, np.abs(self.data.qvel), out=self.max_abs_qvel)

    def counts(self) -> list[int]:
        qpos = self.data.qpos  # plain ints: the virtual robot sends them every period, and numpy costs more per call
        return [round(float(qpos[j]) * c) for j, c in zip(self._sensor_joint, self._counts_per_rad)]


def pulse_response(spec: RobotSpec, volts: float, pulse_s: float, duration_s: float) -> np.ndarray:
    """The nominal model's answer to a voltage pulse from rest, hanging: encoder counts [ticks, sensors] at the control
    rate, over duration_s. What the calibration's direction check expects a unit to do."""
    physics = FurutaPhysics(spec)
    physics.reset()
    ticks = round(duration_s / spec.period_s)
    trace = []
    for tick in range(ticks):
        physics.step([volts if tick < round(pulse_s / spec.period_s) else 0.0], spec.period_s)
        trace.append(physics.counts())
    return np.array(trace, dtype=np.int64)


class FurutaEnv:
    """`furuta:<task>[-randomised]`: the robot spec's task on simulated physics, observed through the robot's calibration
    and sensor pipeline exactly as the agent observes the real robot. One decision per control period (times repeat)."""

    def __init__(self, task_name: str, seed: int, action_repeat: int | None = None, robot: str = "furuta"):
        spec = load_robot_spec(robot)
        if task_name not in (spec.task, f"{spec.task}-randomised"):
            raise UnknownEnvironmentError(f"unknown environment 'furuta:{task_name}'; known: furuta:{spec.task}, "
                                          f"furuta:{spec.task}-randomised")
        self._randomised = task_name.endswith("-randomised")  # each episode's physics drawn as the gate draws them
        self.task = make_task(spec)
        self.physics = FurutaPhysics(spec)
        encoders = load_calibration(spec.name).for_sensors(list(self.task.sensors))
        self.pipeline = SensorPipeline(encoders, spec.velocity_cutoff_rad_s)
        self._period = spec.period_s
        self._rng = np.random.default_rng(seed)
        repeat = action_repeat or 1
        low, high = spec.command_limits
        self.spec = EnvSpec(
            name=f"furuta:{task_name}", obs_layout=self.task.obs_layout, action_layout=self.task.action_layout,
            action_low=low, action_high=high, action_repeat=repeat,
            max_episode_steps=-(-self.task.max_episode_steps // repeat),
        )
        self._steps = 0

    def _observe(self):
        return self.pipeline.update(self.physics.counts(), self.physics.time_s)

    def reset(self) -> np.ndarray:
        if self._randomised:
            self.physics.draw(self._rng)
        # Hanging near rest, as the agent's reset phase leaves the real robot.
        self.physics.reset(qpos=self._rng.uniform(-0.05, 0.05, 2), qvel=self._rng.uniform(-0.1, 0.1, 2))
        self.pipeline.reset()
        self._steps = 0
        return self.task.observe(self._observe())

    def step(self, action: np.ndarray) -> StepResult:
        volts = self.spec.native_action(action)
        reward, terminated = 0.0, False
        for _ in range(self.spec.action_repeat):
            self.physics.step(volts, self._period)
            state = self._observe()
            self._steps += 1
            reward += self.task.reward(state)
            terminated = self.task.terminated(state)
            if terminated:
                break
        truncated = not terminated and self._steps >= self.task.max_episode_steps
        return StepResult(self.task.observe(state), reward, terminated, truncated)

    def get_rng_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state
