"""The robot spec: joints, sensors, actuators, limits, timing and randomisation ranges, loaded from YAML."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robot_app.common.actions import ActionScaler
from robot_app.common.files import read_yaml_mapping

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
    name: str
    joint: str
    unit: str
    command_limit: tuple[float, float]
    rate_limit: float = Field(gt=0)  # command units per second
    safe_command: float

    @model_validator(mode="after")
    def _limits(self) -> "ActuatorSpec":
        _ordered(self.command_limit, f"actuator {self.name}: command_limit")
        if not self.command_limit[0] <= self.safe_command <= self.command_limit[1]:
            raise ValueError(f"actuator {self.name}: safe_command {self.safe_command} is outside "
                             f"command_limit {list(self.command_limit)}")
        return self


class RandomRange(_Strict):
    """A range the gate and sim training draw from: `[low, high]` is uniform; `{low, high, log: true}` is log-uniform,
    for a quantity known only to within orders of magnitude (each decade equally likely, as OpenAI's in-hand
    manipulation drew damping and friction scales)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value):
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"a range is [low, high] or {{low, high, log}}, got {list(value)}")
            return {"low": value[0], "high": value[1]}
        return value

    @model_validator(mode="after")
    def _order(self) -> "RandomRange":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}")
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
        joints = {j.name for j in self.joints}
        for part in [*self.sensors, *self.actuators]:
            if part.joint not in joints:
                raise ValueError(f"{part.name} refers to joint {part.joint!r}; joints are {sorted(joints)}")
        return self

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
    return RobotSpec.model_validate(read_yaml_mapping(path, "robot spec"))
