"""The environment interface every simulated task implements, and what a learner and an exporter know of one."""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import numpy as np

from robot_app.common.actions import ActionScaler
from robot_app.common.artifact import Layouts


class UnknownEnvironmentError(ValueError):
    """The environment name names no registered family or task."""


@dataclasses.dataclass(frozen=True)
class EnvSpec(Layouts):
    """What a learner and an exporter need to know about an environment."""

    name: str
    obs_layout: tuple[tuple[str, int], ...]  # (field, width) in the order the flat observation holds them
    action_layout: tuple[str, ...]
    action_low: tuple[float, ...]  # native units; the agent acts in [-1, 1] and the env rescales
    action_high: tuple[float, ...]
    action_repeat: int
    max_episode_steps: int  # agent decisions per episode before truncation

    @functools.cached_property
    def action_scaler(self) -> ActionScaler:
        return ActionScaler(self.action_low, self.action_high)

    def native_action(self, action) -> np.ndarray:
        """An agent's action in [-1, 1] (clipped to it) in the env's native units; a non-finite one is refused."""
        action = np.asarray(action, dtype=np.float64).reshape(self.action_dim)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"non-finite action {action!r}")
        return self.action_scaler.to_native(np.clip(action, -1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class StepResult:
    obs: np.ndarray
    reward: float
    terminated: bool  # a true end: do not bootstrap
    truncated: bool  # a time limit: bootstrap through it


class Env(Protocol):
    spec: EnvSpec

    def reset(self) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> StepResult: ...

    def get_rng_state(self) -> dict: ...

    def set_rng_state(self, state: dict) -> None: ...
