"""The artifact contracts: the metadata an exported ONNX policy or planner carries. Torch-free, for the agent."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

METADATA_KEY = "robot_app.policy"
FORMAT = "robot_app.policy/1"
INPUT_NAME, OUTPUT_NAME = "obs", "action"
# The stochastic actor, beside the deterministic action: pi(a|s) = tanh(N(mean, std)) in [-1, 1], then native units.
MEAN_NAME, STD_NAME = "pre_tanh_mean", "pre_tanh_std"


# The planning artifact: one decision of the planner (policies.planner.PlanningGraph); noise in noise_shapes order.
WORLD_METADATA_KEY = "robot_app.world_model"
WORLD_FORMAT = "robot_app.world_model/1"
PLAN_INPUTS = ("obs", "warm_mean", "policy_noise", "gaussian_noise", "terminal_noise")
PLAN_OUTPUTS = ("action", "mean")
# The planner's fallback inside the same file: pi's own policy artifact (the bytes `robot-app export` writes), base64.
WORLD_POLICY_KEY = "robot_app.world_model.policy"


class ArtifactError(ValueError):
    """A policy artifact is missing, malformed, or does not fit what it is asked to drive."""


class Layouts:
    """obs_dim and action_dim of whatever has an `obs_layout` of (field, width) pairs and an `action_layout`: a task,
    an environment's spec, an artifact's metadata."""

    @property
    def obs_dim(self) -> int:
        return sum(width for _, width in self.obs_layout)

    @property
    def action_dim(self) -> int:
        return len(self.action_layout)


class _Artifact(Layouts, BaseModel):
    """What every artifact a robot runs declares: what it was trained on, its layouts and native action bounds, and
    its provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str
    obs_layout: list[tuple[str, int]]  # (field, width) in the order of the flat observation
    action_layout: list[str]
    action_low: list[float]  # the native units the artifact's actions are mapped onto
    action_high: list[float]
    action_repeat: int = Field(1, ge=1)  # simulator steps per decision of the environment it was trained on
    training_step: int = Field(ge=0)
    source_run: str
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    exported_at: str

    @model_validator(mode="after")
    def _consistent(self):
        expected = type(self).model_fields["format"].default
        if self.format != expected:
            raise ValueError(f"format is {self.format!r}, this runtime reads {expected!r}")
        if not (len(self.action_low) == len(self.action_high) == len(self.action_layout)):
            raise ValueError("action_low, action_high and action_layout differ in length")
        if not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in zip(self.action_low,
                                                                                          self.action_high)):
            raise ValueError(f"action_low {self.action_low} must lie below action_high {self.action_high}, both "
                             "finite")
        return self


class PolicyMetadata(_Artifact):
    """What a runtime needs to drive a policy: layouts, native action bounds and provenance."""

    format: str = FORMAT
    horizon: int = Field(ge=0)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, source: str = "artifact") -> "PolicyMetadata":
        try:
            return cls.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as error:
            raise ArtifactError(f"{source}: bad '{METADATA_KEY}' metadata: {error}") from None

    @classmethod
    def from_props(cls, props: dict[str, Any], source: str = "artifact") -> "PolicyMetadata":
        if METADATA_KEY not in props:
            raise ArtifactError(f"{source}: no '{METADATA_KEY}' metadata; was it exported by robot-app export?")
        return cls.from_json(props[METADATA_KEY], source)


class WorldModelMetadata(_Artifact):
    """What a robot needs to plan over a world model: layouts, native bounds, the objective's gamma and alpha, and
    the planner's settings (PlannerConfig's fields, the horizon resolved), which fix the graph's shapes. The
    normaliser, actor, critic and model are inside the graph."""

    format: str = WORLD_FORMAT
    kind: str = "planning"
    gamma: float = Field(gt=0, le=1)
    alpha: float = Field(ge=0)
    planner: dict[str, Any]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_props(cls, props: dict[str, Any], source: str = "artifact") -> "WorldModelMetadata":
        if WORLD_METADATA_KEY not in props:
            raise ArtifactError(f"{source}: no '{WORLD_METADATA_KEY}' metadata; is it a planning artifact?")
        try:
            return cls.model_validate(json.loads(props[WORLD_METADATA_KEY]))
        except (json.JSONDecodeError, ValidationError) as error:
            raise ArtifactError(f"{source}: bad '{WORLD_METADATA_KEY}' metadata: {error}") from None


def read_metadata(props: dict[str, Any], source: str = "artifact") -> PolicyMetadata | WorldModelMetadata:
    """The metadata of either kind of artifact, by which key its ONNX properties carry."""
    if WORLD_METADATA_KEY in props:
        return WorldModelMetadata.from_props(props, source)
    return PolicyMetadata.from_props(props, source)


def embedded_policy(props: dict[str, Any], source: str = "artifact") -> bytes:
    """The policy artifact a planning artifact carries for its fallback (see WORLD_POLICY_KEY)."""
    try:
        return base64.b64decode(props[WORLD_POLICY_KEY], validate=True)
    except KeyError:
        raise ArtifactError(f"{source}: a planning artifact without its fallback policy "
                            f"('{WORLD_POLICY_KEY}')") from None
    except (binascii.Error, ValueError) as error:
        raise ArtifactError(f"{source}: '{WORLD_POLICY_KEY}' is not base64: {error}") from None
