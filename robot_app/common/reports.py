"""The typed results that cross a process or file boundary: gate episodes and reports, the agent's summary, and the
learner's progress rows and options. Report files are written and read through them; `schemas()` gives their JSON
Schemas (docs/schemas/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Result(BaseModel):
    """Strict: a field this side does not know is an error, not silently kept or dropped."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)


class EpisodeTrace(Result):
    obs: list[list[float]]
    command: list[list[float]]  # what went on the wire, native units
    reward: list[float]


class EpisodeResult(Result):
    """One gate episode on one randomised virtual robot, measured on both sides of the wire."""

    index: int
    seed: int
    draws: dict[str, float]  # the randomisation this episode's robot was drawn with
    count_offsets: list[int]  # the encoder zero errors, in counts
    dead_zone_v: tuple[float, float] = (0.0, 0.0)  # the motor's, negative side and positive (a fitted unit's)
    steps: int
    episode_return: float = Field(alias="return")
    tail_reward: float  # the last quarter's mean reward per step: what success is judged on
    interventions: dict[str, int]  # supervisor interventions by reason, counted per tick
    faults: dict[str, int]  # latched safe stops by reason
    wire_violations: int  # commands the device saw outside the limits or the rate limit
    joint_violations: int  # hard-stop arrivals too fast, and joints over their velocity limit
    hard_stop_speeds: list[float]
    velocity_over_limit: list[str]
    max_abs_position: dict[str, float]
    max_abs_velocity: dict[str, float]
    command_step_mean: float  # the policy's own mean |command change| per step, clipped to the limits
    policy_p50_us: float = 0.0  # the policy's time per decision: a planner's, with pi's action and any fallback
    policy_p99_us: float
    plan_fallbacks: int = 0  # steps a planning artifact ran out of time on, and sent pi's action
    tick_overruns: int
    stop_reason: str | None
    seconds: float
    trace: EpisodeTrace | None = None  # kept in memory for the plots; report.json leaves it out


class GateMetrics(Result):
    return_mean: float
    return_min: float
    return_p10: float
    return_p50: float
    return_p90: float
    success_rate: float
    interventions: dict[str, int]
    intervention_rate: float
    faults: dict[str, int]
    wire_violations: int
    joint_violations: int
    max_abs_position: dict[str, float]
    max_abs_velocity: dict[str, float]
    command_step_mean: float
    tick_overruns: int
    policy_p50_us_median: float = 0.0
    policy_p99_us_max: float
    plan_fallback_rate: float = 0.0  # of all steps: a planning artifact's decisions not ready in time


class GateReport(Result):
    """The gate's verdict on one artifact, with every episode and the config it was judged by."""

    artifact: str
    robot: str
    config: dict[str, Any]  # the GateConfig, as judged
    created: float  # unix time
    version: str | None  # None: the artifact did not load
    kind: str | None = None  # the policy kind it ran as: "onnx-actor", or "planning" (planned episodes)
    passed: bool
    reasons: list[str]  # why it was rejected; empty when it passed
    episodes: list[EpisodeResult] = []
    metrics: GateMetrics | None = None
    workers: int | None = None
    wall_s: float | None = None
    folder: str | None = None  # where the registry keeps the written report
    physics: dict[str, Any] | None = None  # the unit's fitted physics it was judged under; None: the datasheet's

    def to_json(self) -> str:
        """report.json: everything but the episodes' traces."""
        return self.model_dump_json(indent=1, exclude={"episodes": {"__all__": {"trace"}}})


class AgentSummary(Result):
    """What one agent run did, when it stops: `robot-app agent` prints it, and the gate measures from it."""

    robot_id: str
    episodes: int
    transitions: int
    wall_s: float
    cpu_share: float
    interventions: dict[str, int]
    faults: dict[str, int]
    link: dict[str, int]
    link_losses: int
    credit_waits: int
    plan_fallbacks: int = 0  # ticks a planning policy ran out of time on, and sent pi's action instead
    tick_errors: int
    stop_reason: str | None
    failure: str | None  # why the agent stopped itself, if it did
    overruns: int  # realtime: deadlines missed; lockstep: commands sent more than a period after their frame
    ticks: int | None = None  # realtime only
    skipped_periods: int | None = None  # realtime only
    policy_p50_us: float
    policy_p99_us: float
    policy_max_us: float
    jitter_p50_us: float | None = None  # realtime only, as are the tick_work figures
    jitter_p99_us: float | None = None
    jitter_max_us: float | None = None
    tick_work_p50_us: float | None = None
    tick_work_p99_us: float | None = None
    tick_work_max_us: float | None = None


class GateSummary(Result):
    states: dict[str, int]  # registry policies by state
    deployed: str | None


class ProgressRow(Result):
    """One line of the learner's progress.jsonl."""

    elapsed_s: float
    transitions: int
    updates: int
    updates_per_transition: float | None  # what the learner kept up with (None before the warmup ends)
    configured_updates_per_transition: float
    owed_updates: int
    candidates: int
    episodes: int
    recent_return: float | None  # the mean return of the last 10 episodes
    robots: dict[str, dict[str, int]]  # ingest counters per robot
    running: dict[str, str]  # the policy version each robot last reported
    rejected: dict[str, int]
    quarantined: dict[str, int]
    gate: GateSummary | None
    losses: dict[str, float]


class LearnerOptions(Result):
    """How the online learner trains (robot-app learner's flags)."""

    horizon: int = Field(3, ge=0)
    agent_overrides: dict[str, Any] = {}  # SACSVGConfig fields
    seed: int = 0
    warmup: int = Field(1000, ge=0)
    updates_per_transition: float = Field(1.0, gt=0)
    candidate_every: int = Field(1000, ge=1)
    total_updates: int = Field(100_000, ge=1)
    replay_capacity: int = Field(1_000_000, ge=1)
    credit_rows: int | None = Field(None, ge=1)
    planner: dict[str, Any] | None = None  # PlannerConfig settings: candidates are planning artifacts; None: actors


class DeploymentOptions(Result):
    """What happens to the learner's candidates: the registry they enter, and the gate that signs what passes."""

    registry: str  # a folder
    signing_key: str | None = None  # the gate runs only with one
    gate_config: str | None = None  # a gate.yaml; None: sim/gate.yaml
    gate_episodes: int | None = Field(None, ge=1)  # None: the config's
    explore_below_bar: bool = False  # judge by the config's exploring task bars
    auto_deploy: bool = False


SCHEMA_MODELS = (EpisodeResult, GateReport, AgentSummary, ProgressRow, LearnerOptions, DeploymentOptions)


def schemas() -> dict[str, dict]:
    """The JSON Schema of every model above that a file or a process boundary carries, by model name."""
    return {model.__name__: model.model_json_schema(by_alias=True) for model in SCHEMA_MODELS}


def write_schemas(folder: str | Path) -> list[Path]:
    """docs/schemas/<Model>.json, one file per model: `python -m robot_app.common.reports docs/schemas`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        paths.append(folder / f"{name}.json")
        paths[-1].write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    return paths


if __name__ == "__main__":
    for written in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(written)
