"""Encoder calibration: per-encoder offset, scale and direction, loaded from YAML and applied on the read path."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robot_app.common.files import load_yaml_model

CALIBRATION_DIR = Path(__file__).parent


class EncoderCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    offset_counts: int  # the raw count at the joint's zero
    scale: float = Field(gt=0)  # radians per count
    direction: Literal[-1, 1]


class RobotCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    robot: str
    robot_id: str | None = None  # the unit it was measured on; None: the robot type's nominal one, for any unit
    encoders: dict[str, EncoderCalibration]

    def for_sensors(self, sensor_names: list[str]) -> "EncoderMap":
        missing = [name for name in sensor_names if name not in self.encoders]
        if missing:
            raise ValueError(f"calibration for {self.robot} has no entry for encoders {missing}")
        return EncoderMap([self.encoders[name] for name in sensor_names])


class EncoderMap:
    """Counts <-> calibrated joint angles for a fixed order of encoders."""

    def __init__(self, encoders: list[EncoderCalibration]):
        self.offset = tuple(float(e.offset_counts) for e in encoders)
        self.gain = tuple(float(e.direction * e.scale) for e in encoders)

    def angles(self, counts) -> tuple[float, ...]:
        """One frame's angles, in plain floats: the read path runs this every tick on a few values."""
        return tuple((count - offset) * gain for count, offset, gain in zip(counts, self.offset, self.gain, strict=True))

    def counts(self, angles) -> np.ndarray:
        """The raw counts a device reports at these joint angles (the virtual robot's encoders)."""
        return np.round(np.asarray(angles, dtype=np.float64) / self.gain + self.offset).astype(np.int64)


def load_calibration(robot_or_path: str | Path, robot: str | None = None) -> RobotCalibration:
    """A robot's calibration by name ('furuta' reads calibration/furuta.yaml) or by path to a YAML file; with `robot`,
    a calibration made for another robot is refused."""
    path = Path(robot_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CALIBRATION_DIR / f"{robot_or_path}.yaml"
    calibration = load_yaml_model(RobotCalibration, path, "calibration")
    if robot is not None and calibration.robot != robot:
        raise ValueError(f"calibration {path}: robot: {calibration.robot!r}, but this is robot {robot!r}; refusing "
                         "to drive it with another robot's calibration")
    return calibration
