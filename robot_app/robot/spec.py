"""The robot spec: joints, sensors, actuators, limits, timing and randomisation ranges, loaded from YAML."""

from __future__ import annotations

import enum
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robot_app.common.actions import ActionScaler
from robot_app.common.files import load_yaml_model

SPEC_DIR = Path(__file__).parent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered(pair: tuple[float, float] | None, what: str) -> None:
    if pair is not None and not pair[0] < pair[1]:
        raise ValueError(f"{what} must be [low, high] with low < high, got {list(pair)}")


class JointSpec(_Strict):
    name: str
    position_limit: tuple[float, float] | None = None  # software limit; None for a continuous joint
    hard_stop: tuple[float, float] | None = None  # mechanical stops
    max_hard_stop_speed: float = Field(0.0, ge=0)
    velocity_limit: float = Field(gt=0)
    braking_deceleration: float = Field(1.0, gt=0)  # a conservative floor on full-reverse deceleration
    max_acceleration: float = Field(1.0, gt=0)  # what a full command does from rest, nominally

    @model_validator(mode="after")
    def _limits(self) -> "JointSpec":
        _ordered(self.position_limit, f"joint {self.name}: position_limit")
        _ordered(self.hard_stop, f"joint {self.name}: hard_stop")
        if self.position_limit and self.hard_stop and not (
            self.hard_stop[0] < self.position_limit[0] and self.position_limit[1] < self.hard_stop[1]
        ):
            raise ValueError(f"joint {self.name}: position_limit {list(self.position_limit)} must lie inside "
                             f"hard_stop {list(self.hard_stop)}")
        return self


class SensorSpec(_Strict):
    name: str
    joint: str
    counts_per_rev: int = Field(gt=0)


class ActuatorSpec(_Strict):
    name: str  # also the actuator's name in the MJCF
    joint: str
    unit: str
    command_limit: tuple[float, float]
    rate_limit: float = Field(gt=0)  # command units per second
    safe_command: float
    # The reset controller between episodes drives the actuator's joint to 0: -reset_kp * angle - reset_kd * speed.
    reset_kp: float = Field(ge=0)  # command units per rad
    reset_kd: float = Field(ge=0)  # command units per rad/s

    @model_validator(mode="after")
    def _limits(self) -> "ActuatorSpec":
        _ordered(self.command_limit, f"actuator {self.name}: command_limit")
        if not self.command_limit[0] <= self.safe_command <= self.command_limit[1]:
            raise ValueError(f"actuator {self.name}: safe_command {self.safe_command} is outside "
                             f"command_limit {list(self.command_limit)}")
        return self


class Parameter(str, enum.Enum):
    """What a randomisation range sets. The physical ones set an element of the robot's MJCF, named by `element`;
    the device's act on the wire and the encoders."""

    JOINT_DAMPING = "joint_damping"  # viscous, N·m·s/rad
    JOINT_FRICTION = "joint_friction"  # Coulomb, N·m
    JOINT_STIFFNESS = "joint_stiffness"  # N·m/rad towards the joint's zero (a cable, a spring)
    BODY_MASS = "body_mass"  # kg; the body keeps its shape, so its inertia scales with the mass
    ACTUATOR_GAIN = "actuator_gain"  # torque per command unit; a back-EMF term scales with it
    PLANT_LATENCY = "plant_latency"  # s: each command reaches the motor (the plant) this far into its period
    CONTROL_JITTER = "control_jitter"  # s: plus up to this much, drawn every period
    SENSOR_NOISE = "sensor_noise"  # counts: std of Gaussian noise on every encoder reading
    ENCODER_OFFSET = "encoder_offset"  # counts: each encoder's zero is off by up to ± this

    @property
    def physical(self) -> bool:
        return self in _PHYSICAL


_PHYSICAL = frozenset({Parameter.JOINT_DAMPING, Parameter.JOINT_FRICTION, Parameter.JOINT_STIFFNESS,
                       Parameter.BODY_MASS, Parameter.ACTUATOR_GAIN})


class RandomRange(_Strict):
    """A range the gate and sim training draw `parameter` (of MJCF `element`, for a physical one) from: uniform, or
    with `log: true` log-uniform, for a quantity known only to within orders of magnitude (each decade equally likely,
    as OpenAI's in-hand manipulation drew damping and friction scales)."""

    parameter: Parameter
    element: str | None = None  # the joint, body or actuator a physical parameter belongs to
    low: float
    high: float
    log: bool = False

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value):
        if isinstance(value, (list, tuple)):
            raise ValueError(f"a range is {{parameter, element (a physical one's), low, high, log}}, not "
                             f"{list(value)}: it names what it sets")
        return value

    @model_validator(mode="after")
    def _order(self) -> "RandomRange":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}")
        if self.parameter.physical != (self.element is not None):
            raise ValueError(f"{self.parameter.value} {'needs' if self.parameter.physical else 'takes no'} element")
        return self

    def draw(self, rng) -> float:
        """One value, from a numpy Generator (one uniform draw either way, so the stream stays aligned)."""
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return float(rng.uniform(self.low, self.high))


class RobotSpec(_Strict):
    name: str
    mjcf: str
    task: str
    control_rate_hz: float = Field(gt=0)
    watchdog_timeout_s: float = Field(gt=0)
    episode_s: float = Field(gt=0)
    joints: list[JointSpec]
    sensors: list[SensorSpec]
    velocity_cutoff_rad_s: float = Field(gt=0)
    actuators: list[ActuatorSpec]
    randomisation: dict[str, RandomRange] = {}

    @model_validator(mode="after")
    def _references(self) -> "RobotSpec":
        joints, actuators = {j.name for j in self.joints}, {a.name for a in self.actuators}
        for part in [*self.sensors, *self.actuators]:
            if part.joint not in joints:
                raise ValueError(f"{part.name} refers to joint {part.joint!r}; joints are {sorted(joints)}")
        device_parameters = set()
        for name, span in self.randomisation.items():
            p = span.parameter
            known = joints if p.value.startswith("joint_") else actuators if p is Parameter.ACTUATOR_GAIN else None
            if known is not None and span.element not in known:
                raise ValueError(f"randomisation {name}: {p.value} of {span.element!r}, which is none of "
                                 f"{sorted(known)}")
            if not p.physical:
                if p in device_parameters:
                    raise ValueError(f"randomisation {name}: a second range for {p.value}")
                device_parameters.add(p)
        return self

    def draw(self, rng, physical_only: bool = False) -> dict[str, float]:
        """One value of every randomisation range (or of the physical ones), from a numpy Generator. Ranges draw in
        the order of their names, one uniform each: a range's name fixes which value of the stream it gets."""
        return {name: span.draw(rng) for name, span in sorted(self.randomisation.items())
                if span.parameter.physical or not physical_only}

    def split_draws(self, draws: dict[str, float]) -> tuple[dict[str, float], dict[Parameter, float]]:
        """A draw of the randomisation ranges, split: the physical parameters by range name (for the physics), and
        the device's by parameter (0 where the spec draws none)."""
        physical = {name: value for name, value in draws.items() if self.randomisation[name].parameter.physical}
        device = {p: 0.0 for p in Parameter if not p.physical}
        device |= {self.randomisation[name].parameter: value for name, value in draws.items() if name not in physical}
        return physical, device

    @property
    def command_limits(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(low, high) of every actuator's command in native units: where everything reads them."""
        return tuple(a.command_limit[0] for a in self.actuators), tuple(a.command_limit[1] for a in self.actuators)

    @property
    def action_scaler(self) -> ActionScaler:
        """Actions in [-1, 1] onto the command limits."""
        return ActionScaler(*self.command_limits)

    def joint(self, name: str) -> JointSpec:
        return next(j for j in self.joints if j.name == name)

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def episode_steps(self) -> int:
        return round(self.episode_s * self.control_rate_hz)

    def with_rate(self, rate_hz: float | None) -> "RobotSpec":
        """The same robot driven at another control rate (the benchmarks run the loop at 500 Hz)."""
        return self if rate_hz is None else RobotSpec.model_validate(self.model_dump() | {"control_rate_hz": rate_hz})


def load_robot_spec(name_or_path: str | Path) -> RobotSpec:
    """A spec by robot name (a YAML beside this module, e.g. 'furuta') or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SPEC_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))
            raise ValueError(f"unknown robot {str(name_or_path)!r}; known robots: {known}, or pass a .yaml path")
    return load_yaml_model(RobotSpec, path, "robot spec")
