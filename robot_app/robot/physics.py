"""A unit's identified physics: the overlay `robot-app sysid` writes, and the spec whose ranges it narrows to it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robot_app.common.files import load_yaml_model
from robot_app.robot.spec import RandomRange, RobotSpec

WIDEN = 3.0  # the gate draws within this many 95% half-widths of each fitted value: the intervals assume white
# residuals, and a fit's worst parameters fall outside theirs (docs/SYSID_NOTES.md)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FittedValue(_Strict):
    nominal: float  # where the fit started: the MJCF's value (the datasheet's), or the calibration's
    value: float
    interval_95: float = Field(ge=0)  # half-width; 0 for a value weighed or set, not fitted


class PhysicsOverlay(_Strict):
    """Fitted values of the spec's randomisation table (and the dead zone and spring zero beside it), with how they
    were fitted and how well the fit predicts data it did not see."""

    robot: str
    robot_id: str | None
    created: str  # ISO date and time
    method: str
    logs: list[str]
    parameters: dict[str, FittedValue]
    dead_zone_v: tuple[float, float] = (0.0, 0.0)  # negative side, positive side
    arm_spring_zero_rad: float = 0.0
    held_out_rmse_counts: list[float]  # per joint, on the held-out fifth of every log
    datasheet_held_out_rmse_counts: list[float]  # the same, with the MJCF's values
    quantisation_floor_counts: float  # RMSE of rounding alone: 1/sqrt(12)
    fit_seconds: float

    @model_validator(mode="after")
    def _values(self) -> "PhysicsOverlay":
        if min(self.dead_zone_v) < 0:
            raise ValueError(f"dead_zone_v is two magnitudes, got {list(self.dead_zone_v)}")
        return self

    def narrow(self, spec: RobotSpec, widen: float = WIDEN) -> RobotSpec:
        """The spec with each fitted range replaced by value ± widen × its interval (uniform, not below 0); ranges
        the overlay does not fit (sensor noise, encoder offsets) are kept."""
        if self.robot != spec.name:
            raise ValueError(f"the physics overlay is for robot {self.robot!r}, not {spec.name!r}")
        unknown = sorted(set(self.parameters) - set(spec.randomisation))
        if unknown:
            raise ValueError(f"the physics overlay names {unknown}, which the {spec.name} spec does not randomise")
        ranges = dict(spec.randomisation)
        for name, fitted in self.parameters.items():
            span = ranges[name]
            ranges[name] = RandomRange(parameter=span.parameter, element=span.element,
                                       low=max(0.0, fitted.value - widen * fitted.interval_95),
                                       high=fitted.value + widen * fitted.interval_95)
        return RobotSpec.model_validate(spec.model_dump() | {"randomisation": {
            name: span.model_dump() for name, span in ranges.items()}})


def load_physics(path: str | Path) -> PhysicsOverlay:
    return load_yaml_model(PhysicsOverlay, path, "physics overlay")


def physics_provenance(path: str | Path, overlay: PhysicsOverlay, widen: float) -> dict:
    """What a verdict records of the physics it was reached under."""
    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(), "robot_id":
            overlay.robot_id, "created": overlay.created, "widen": widen}
