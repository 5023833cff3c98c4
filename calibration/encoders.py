"""A robot's calibration: per-encoder offset, scale and direction (applied on the read path), and what measured them."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from robot_app.common.files import load_yaml_model, write_atomic

CALIBRATION_DIR = Path(__file__).parent


class EncoderCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    offset_counts: int  # the raw count at the joint's zero
    scale: float = Field(gt=0)  # radians per count
    direction: Literal[-1, 1]


class StepRecord(BaseModel):
    """What one calibration step measured, and on what: its provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: str  # ISO 8601, UTC
    robot_id: str
    firmware: str  # as the device's HELLO says; "" when it says none
    checks: list[str]  # the checks it passed, in words
    spread: dict[str, float]  # what repeating the measurement varied by, in the unit its name says
    measured: dict[str, Any]


class RobotCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    robot: str
    robot_id: str | None = None  # the unit it was measured on; None: the robot type's nominal one, for any unit
    encoders: dict[str, EncoderCalibration]
    steps: dict[str, StepRecord] = {}  # the latest record of each calibration step that produced this version

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

    def raw_counts(self, angles) -> tuple[float, ...]:
        """The counts these angles were read from, unrounded: angles() inverted."""
        return tuple(angle / gain + offset for angle, offset, gain in zip(angles, self.offset, self.gain, strict=True))

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


def save_calibration(calibration: RobotCalibration, directory: str | os.PathLike) -> Path:
    """Write a unit's calibration to <directory>/<robot_id>.yaml. The version it replaces is kept, moved to
    <directory>/history/<robot_id>/<when it was replaced>.yaml: nothing measured before is lost."""
    if calibration.robot_id is None:
        raise ValueError("only a unit's calibration (one with a robot_id) is saved; the nominal one is edited by hand")
    directory = Path(directory)
    path = directory / f"{calibration.robot_id}.yaml"
    if path.exists():
        history = directory / "history" / calibration.robot_id
        history.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        os.link(path, history / f"{stamp}.yaml")  # a second writer in the same microsecond fails, never overwrites
    text = (f"# Calibration of {calibration.robot} unit {calibration.robot_id}, written by robot-app calibrate; "
            f"earlier versions are in history/{calibration.robot_id}/.\n")
    write_atomic(path, (text + yaml.safe_dump(calibration.model_dump(mode="json"), sort_keys=False)).encode())
    return path
