"""The sim-validation gate: an ONNX artifact runs through the robot's own agent code against randomised virtual robots.

Each episode is the real path: the agent runtime, the policy runner and the safety supervisor drive a lockstep virtual
robot over a pty, through the serial protocol. The virtual robot differs from the nominal one as drawn from the robot
spec's randomisation ranges: masses, friction, damping, motor gain, cable stiffness, sensor noise, plant latency and
jitter (in simulated time), and an encoder calibration error. Episodes run in parallel on every core, each from its
recorded seed, so a report is reproducible. The verdict checks the config's thresholds; any limit violation, at the
wire or at a joint, rejects.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import math
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robot_app.common.files import load_yaml_model
from robot_app.common.logs import format_counts
from robot_app.common.progress import Progress
from robot_app.common.reports import AgentSummary, EpisodeResult, EpisodeTrace, GateMetrics, GateReport
from robot_app.robot.physics import WIDEN, load_physics, physics_provenance
from robot_app.robot.spec import Parameter, RobotSpec, load_robot_spec
from robot_app.robot.task import make_task

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).parent / "gate.yaml"


class TaskBars(BaseModel):
    """What a policy must reach at the task, as opposed to the safety checks."""

    model_config = ConfigDict(extra="forbid")
    min_return_mean: float
    min_return_p10: float
    min_success_rate: float = Field(ge=0, le=1)


class GateConfig(TaskBars):
    """How many episodes, from which seed, and what a policy must reach: the task bars, and the safety checks. Limit
    violations must always be 0."""

    episodes: int = Field(16, ge=1)
    seed: int = 0
    workers: int | None = Field(None, ge=1)  # None: every core
    success_reward: float  # an episode succeeds if its last quarter averages at least this reward per step
    max_intervention_rate: float = Field(ge=0)  # supervisor interventions per step, all reasons together
    # The policy's smoothness: mean |change of its own command| per step, in native units, clipped to the command
    # limits. Judged before the supervisor, whose rate limit keeps every command on the wire smooth.
    max_command_step_mean: float = Field(gt=0)
    max_tick_overrun_rate: float = Field(ge=0)  # steps answered more than a control period after their sensor frame
    max_plan_fallback_rate: float = Field(ge=0, le=1)  # a planning artifact: steps where pi's action went instead
    exploring: TaskBars  # the task bars for a robot learning from scratch (learner --explore-below-bar)

    def for_exploring(self) -> "GateConfig":
        """The same safety checks with the exploring task bars: the robot explores with policies that do not balance
        yet, while every safety limit holds."""
        return self.model_copy(update=self.exploring.model_dump())


def load_gate_config(path: str | Path | None = None, **overrides) -> GateConfig:
    return load_yaml_model(GateConfig, path or DEFAULT_CONFIG, "gate config", **overrides)


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
    index: int
    seed: int
    draws: dict[str, float]  # one value per randomisation range of the spec
    dead_zone_v: tuple[float, float] = (0.0, 0.0)  # a fitted unit's (the datasheet's robot has none)


def plan_episodes(spec: RobotSpec, episodes: int, seed: int, dead_zone_v=(0.0, 0.0)) -> list[EpisodePlan]:
    """The randomisation of every episode, drawn from the spec's ranges, from one seed."""
    rng = np.random.default_rng(seed)
    plans = []
    for index in range(episodes):
        draws = spec.draw(rng)  # then the episode's seed, from the same stream
        plans.append(EpisodePlan(index, int(rng.integers(2**31)), draws, tuple(dead_zone_v)))
    return plans


def run_episode(artifact: str, robot: str, plan: EpisodePlan) -> EpisodeResult:
    """One randomised episode through the agent runtime, measured. Runs in a worker process."""
    from calibration.encoders import load_calibration
    from robot_app.agent.loading import load_policy
    from robot_app.agent.runtime import Agent
    from robot_app.agent.transition_log import TransitionRecorder
    from robot_app.hardware.serial_robot import SerialRobot
    from sim.virtual_robot import Variation, VirtualRobot

    started = time.perf_counter()
    spec = load_robot_spec(robot)
    physics, device = spec.split_draws(plan.draws)
    rng = np.random.default_rng(plan.seed)
    offset = device[Parameter.ENCODER_OFFSET]
    variation = Variation(physics=physics, plant_latency_s=device[Parameter.PLANT_LATENCY],
                          jitter_s=device[Parameter.CONTROL_JITTER], sensor_noise_counts=device[Parameter.SENSOR_NOISE],
                          count_offsets=tuple(int(round(v)) for v in rng.uniform(-abs(offset), abs(offset),
                                                                                  len(spec.sensors))),
                          dead_zone_v=plan.dead_zone_v)
    virtual = VirtualRobot(spec, lockstep=True, seed=plan.seed, robot_id=f"{spec.name}-gate-{plan.index}",
                           variation=variation)
    audit = {}
    serving = threading.Thread(target=lambda: audit.update(dataclasses.asdict(virtual.serve())), daemon=True)
    serving.start()
    recorder = TransitionRecorder()
    policy = load_policy(artifact, spec, make_task(spec).obs_layout)
    agent = Agent(SerialRobot(virtual.port), spec, load_calibration(spec.name), policy, recorder, status_every_s=1e9)
    summary = agent.run(episodes=1)
    virtual.stop()
    serving.join(timeout=10)
    return _measure(spec, plan, variation, recorder.rows, summary, audit, time.perf_counter() - started)


def _measure(spec: RobotSpec, plan: EpisodePlan, variation, rows, summary: AgentSummary, audit: dict,
             seconds: float) -> EpisodeResult:
    rewards = np.array([t.reward for t in rows])
    commands = np.array([t.action for t in rows]).reshape(len(rows), -1)
    low, high = spec.command_limits
    asked = np.nan_to_num(np.clip(np.array([t.policy_action for t in rows]).reshape(len(rows), -1), low, high))
    tail = rewards[-max(1, len(rewards) // 4):]
    joints = spec.joints
    stop_speed = min((j.max_hard_stop_speed for j in joints if j.hard_stop), default=math.inf)
    over_speed = [speed for speed in audit["hard_stop_speeds"] if speed > stop_speed]  # the device watches its stops
    velocity_over = [j.name for j, v in zip(joints, audit["max_abs_velocity"]) if v > j.velocity_limit]
    return EpisodeResult(
        index=plan.index, seed=plan.seed, draws=plan.draws, count_offsets=list(variation.count_offsets),
        dead_zone_v=variation.dead_zone_v,
        steps=len(rows), episode_return=float(rewards.sum()), tail_reward=float(tail.mean()) if len(rows) else 0.0,
        interventions=summary.interventions, faults=summary.faults,
        wire_violations=audit["limit_violations"] + audit["rate_violations"],
        joint_violations=len(over_speed) + len(velocity_over),
        hard_stop_speeds=audit["hard_stop_speeds"], velocity_over_limit=velocity_over,
        max_abs_position=dict(zip([j.name for j in joints], audit["max_abs_position"])),
        max_abs_velocity=dict(zip([j.name for j in joints], audit["max_abs_velocity"])),
        command_step_mean=float(np.abs(np.diff(asked, axis=0)).mean()) if len(rows) > 1 else 0.0,
        policy_p50_us=summary.policy_p50_us, policy_p99_us=summary.policy_p99_us,
        plan_fallbacks=summary.plan_fallbacks, tick_overruns=summary.overruns,
        stop_reason=summary.stop_reason, seconds=seconds,
        trace=EpisodeTrace(obs=[t.obs.tolist() for t in rows], command=commands.tolist(), reward=rewards.tolist()),
    )


def _episode_job(job):
    _freeze_worker_heap()
    return run_episode(*job)


@functools.cache
def _freeze_worker_heap() -> None:
    """A pool worker runs many episodes. What its imports built lives as long as it does, so it is frozen once, and
    the agent's full collection before each handshake scans only that episode's objects (docs/BENCHMARKS.md)."""
    import onnxruntime  # noqa: F401  (what run_episode uses, loaded before the freeze)

    import robot_app.agent.loading  # noqa: F401
    import robot_app.agent.runtime  # noqa: F401
    import sim.virtual_robot  # noqa: F401

    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def core_pool(workers: int):
    """A process pool whose workers each keep to one core, while there are cores enough. An episode's agent and
    device threads hand every step to each other; on one core they share its caches instead of bouncing between two
    (docs/BENCHMARKS.md). A worker that dies breaks the pool (BrokenProcessPool) instead of leaving
    its task unanswered for ever, as multiprocessing.Pool would."""
    context = multiprocessing.get_context("spawn")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinning = {} if workers > len(cores) else {"initializer": _keep_to_one_core,
                                                "initargs": (cores, context.Value("i", 0))}
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, **pinning) as pool:
        try:
            yield pool
        except BaseException:
            pool.shutdown(cancel_futures=True)  # what is still queued is not run
            raise


def _keep_to_one_core(cores: list[int], started) -> None:
    with started.get_lock():
        index, started.value = started.value, started.value + 1
    os.sched_setaffinity(0, {cores[index]})  # core_pool starts no more workers than there are cores


def validate(artifact: str | Path, robot: str = "furuta", config: GateConfig | None = None,
             progress: bool = False, physics: str | Path | None = None, widen: float = WIDEN) -> GateReport:
    """Run the gate on one artifact; return the report (verdict, reasons, metrics, episodes). With `physics` (a
    `robot-app sysid` overlay), the episodes draw around that unit's fitted values instead of the spec's ranges."""
    from robot_app.agent.loading import load_policy
    from robot_app.common.artifact import ArtifactError

    config = config or load_gate_config()
    spec = load_robot_spec(robot)
    report = {"artifact": str(artifact), "robot": robot, "config": config.model_dump(), "created": time.time()}
    drawn, dead_zone_v = spec, (0.0, 0.0)
    if physics is not None:
        overlay = load_physics(physics)
        drawn, dead_zone_v = overlay.narrow(spec, widen), overlay.dead_zone_v
        report["physics"] = physics_provenance(physics, overlay, widen)
    try:
        policy = load_policy(str(artifact), spec, make_task(spec).obs_layout)  # fits this robot at all?
    except ArtifactError as error:
        return GateReport(**report, version=None, passed=False, reasons=[f"artifact: {error}"])
    plans = plan_episodes(drawn, config.episodes, config.seed, dead_zone_v)
    workers = min(config.workers or os.cpu_count() or 1, len(plans))
    jobs = [(str(artifact), robot, plan) for plan in plans]
    started = time.perf_counter()
    episodes = []
    with core_pool(workers) as pool, Progress(len(jobs), "validating", "episode", every_s=0, log=log,
                                              show=progress) as bar:
        try:
            for future in concurrent.futures.as_completed([pool.submit(_episode_job, job) for job in jobs]):
                episodes.append(future.result())
                bar.update()
        except concurrent.futures.process.BrokenProcessPool as error:
            raise RuntimeError(f"a validation worker died ({error}); the gate did not finish") from None
    episodes.sort(key=lambda e: e.index)
    metrics, reasons = judge(episodes, config)
    return GateReport(**report, version=policy.version, kind=policy.kind.value, workers=workers,
                      wall_s=time.perf_counter() - started, episodes=episodes, passed=not reasons, reasons=reasons,
                      metrics=metrics)


def judge(episodes: list[EpisodeResult], config: GateConfig) -> tuple[GateMetrics, list[str]]:
    """The episodes' metrics together, and the reasons they fail the config (none: the policy passes)."""
    returns = np.array([e.episode_return for e in episodes])
    steps = sum(e.steps for e in episodes)
    interventions, faults = _sum_counts(e.interventions for e in episodes), _sum_counts(e.faults for e in episodes)
    m = GateMetrics(
        return_mean=float(returns.mean()), return_min=float(returns.min()),
        return_p10=float(np.percentile(returns, 10)), return_p50=float(np.percentile(returns, 50)),
        return_p90=float(np.percentile(returns, 90)),
        success_rate=float(np.mean([e.tail_reward >= config.success_reward for e in episodes])),
        interventions=interventions, intervention_rate=sum(interventions.values()) / max(steps, 1),
        faults=faults,
        wire_violations=sum(e.wire_violations for e in episodes),
        joint_violations=sum(e.joint_violations for e in episodes),
        max_abs_position={name: max(e.max_abs_position[name] for e in episodes)
                          for name in episodes[0].max_abs_position},
        max_abs_velocity={name: max(e.max_abs_velocity[name] for e in episodes)
                          for name in episodes[0].max_abs_velocity},
        command_step_mean=float(np.mean([e.command_step_mean for e in episodes])),
        tick_overruns=sum(e.tick_overruns for e in episodes),
        policy_p50_us_median=float(np.median([e.policy_p50_us for e in episodes])),
        policy_p99_us_max=max(e.policy_p99_us for e in episodes),
        plan_fallback_rate=sum(e.plan_fallbacks for e in episodes) / max(steps, 1),
    )
    checks = [
        (m.wire_violations == 0, f"{m.wire_violations} commands outside the limits at the wire"),
        (m.joint_violations == 0, f"{m.joint_violations} joint limit violations (hard-stop impacts too fast, or speeds "
                                  "over a joint's limit)"),
        (not faults, f"the supervisor latched a safe stop: {faults}"),
        (m.return_mean >= config.min_return_mean, f"mean return {m.return_mean:.1f} < {config.min_return_mean}"),
        (m.return_p10 >= config.min_return_p10,
         f"10th-percentile return {m.return_p10:.1f} < {config.min_return_p10}"),
        (m.success_rate >= config.min_success_rate, f"success rate {m.success_rate:.2f} < {config.min_success_rate}"),
        (m.intervention_rate <= config.max_intervention_rate,
         f"{m.intervention_rate:.3f} supervisor interventions per step > {config.max_intervention_rate} "
         f"({m.interventions})"),
        (m.tick_overruns <= config.max_tick_overrun_rate * steps,
         f"{m.tick_overruns} of {steps} steps answered later than a control period"),
        (m.plan_fallback_rate <= config.max_plan_fallback_rate,
         f"the planner ran out of time on {m.plan_fallback_rate:.3f} of the steps > {config.max_plan_fallback_rate} "
         f"(its p99 per decision: {m.policy_p99_us_max / 1e3:.1f} ms)"),
        (m.command_step_mean <= config.max_command_step_mean,
         f"rough commands: mean step {m.command_step_mean:.3f} > {config.max_command_step_mean}"),
    ]
    return m, [reason for ok, reason in checks if not ok]


def _sum_counts(counters) -> dict[str, int]:
    total: dict[str, int] = {}
    for counter in counters:
        for reason, count in counter.items():
            total[reason] = total.get(reason, 0) + count
    return total


def write_report(report: GateReport, folder: str | Path) -> Path:
    """report.json (episodes without their traces), report.md, returns.png and traces.png in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.to_json())
    lines = [f"# Sim validation of {report.version or report.artifact}: {'PASSED' if report.passed else 'REJECTED'}",
             ""]
    lines += [f"- {reason}" for reason in report.reasons] or ["- every check passed"]
    physics = report.physics
    lines += ["", f"Physics: unit {physics['robot_id']}'s fitted values ({physics['path']}, sha256 "
                  f"{physics['sha256'][:12]}), drawn within {physics['widen']:g}x their 95% intervals." if physics else
              "Physics: the spec's datasheet ranges."]
    if report.metrics is not None:
        spec = load_robot_spec(report.robot)
        m, bars = report.metrics, report.config
        lines += ["", f"Task bars ({bar_set(bars)}): mean return {m.return_mean:.1f} (at least {bars['min_return_mean']:g}), "
                      f"10th percentile {m.return_p10:.1f} (at least {bars['min_return_p10']:g}), success rate "
                      f"{m.success_rate:.2f} (at least {bars['min_success_rate']:g}; an episode succeeds when its last "
                      f"quarter averages a reward of {bars['success_reward']:g} per step).", "",
                  "| joint | max \\|position\\| | position limit | max \\|velocity\\| (rad/s) | velocity limit |",
                  "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in joint_rows(m, spec)]
        if report.kind == "planning":
            lines += ["", f"Planned episodes (CEM-MPC on the robot's side): per decision p50 "
                          f"{m.policy_p50_us_median / 1e3:.2f} ms (median of the episodes), p99 "
                          f"{m.policy_p99_us_max / 1e3:.2f} ms (the worst episode's); pi's action went on "
                          f"{m.plan_fallback_rate:.2%} of the steps (at most {bars['max_plan_fallback_rate']:.0%})."]
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_cell(value)} |" for name, value in m.model_dump().items()
                  if name not in ("max_abs_position", "max_abs_velocity")]
        lines += ["", f"{len(report.episodes)} episodes on {report.workers} workers in {report.wall_s:.1f} s, "
                      f"seed {report.config['seed']}.", "", "![returns](returns.png)", "", "![traces](traces.png)"]
        _plots(report, folder, spec)
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder


def bar_set(config: dict) -> str:
    """Which task bars a report was judged by: the full gate's, or the exploring ones (learner --explore-below-bar)."""
    exploring = config.get("exploring", {})
    return "exploring" if exploring and all(config[k] == v for k, v in exploring.items()) else "full gate"


def joint_rows(metrics: GateMetrics, spec: RobotSpec) -> list[tuple[str, str, str, str, str]]:
    """Per joint: its largest |position| and |velocity| over the episodes, beside its limits. A continuous joint has no
    position limit: its angle counts whole turns, so the turns are given too."""
    rows = []
    for joint in spec.joints:
        position = metrics.max_abs_position[joint.name]
        if joint.position_limit:
            shown, limit = f"{position:.3f} rad", f"{joint.position_limit[0]:g} .. {joint.position_limit[1]:g} rad"
        else:
            shown, limit = f"{position:.1f} rad ({position / (2 * math.pi):.1f} turns)", "none: continuous"
        rows.append((joint.name, shown, limit, f"{metrics.max_abs_velocity[joint.name]:.1f}",
                     f"{joint.velocity_limit:g}"))
    return rows


def _cell(value) -> str:
    if isinstance(value, dict):
        return format_counts(value)
    return str(round(value, 4) if isinstance(value, float) else value)


def _plots(report: GateReport, folder: Path, spec: RobotSpec) -> None:
    """returns.png, with the task bars; traces.png: per joint angle the observation carries as a (cos, sin) pair, its
    distance from the joint's zero (for the Furuta pendulum, from upright), with the joint's limits, and the commands
    with the command limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    episodes, bars = report.episodes, report.config
    figure, axis = plt.subplots(figsize=(7, 3.5))
    success = [e.tail_reward >= bars["success_reward"] for e in episodes]
    axis.bar([e.index for e in episodes], [e.episode_return for e in episodes],
             color=["tab:green" if ok else "tab:gray" for ok in success])
    axis.axhline(bars["min_return_mean"], color="tab:blue", ls="--", label=f"mean bar {bars['min_return_mean']:g}")
    axis.axhline(bars["min_return_p10"], color="tab:orange", ls=":", label=f"10th-percentile bar {bars['min_return_p10']:g}")
    axis.axhline(report.metrics.return_mean, color="black", lw=0.8, label=f"mean {report.metrics.return_mean:.1f}")
    handles = axis.get_legend_handles_labels()[0] + [Patch(color="tab:green", label="succeeded"),
                                                     Patch(color="tab:gray", label="did not succeed")]
    axis.set(xlabel="episode", ylabel="return", title=f"returns under randomisation ({bar_set(bars)} bars: success "
                                                        f"{report.metrics.success_rate:.2f}, bar {bars['min_success_rate']:g})")
    axis.legend(handles=handles, fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(folder / "returns.png", dpi=80)
    plt.close(figure)

    task = make_task(spec)
    low, high = spec.command_limits
    figure, axes = plt.subplots(len(task.joints) + 1, 1, figsize=(7, 2.5 * (len(task.joints) + 1)), sharex=True)
    traced = [e for e in episodes if e.trace and e.trace.obs]
    for column, (axis, joint) in enumerate(zip(axes, task.joints)):
        for episode in traced:
            axis.plot(np.abs(task.joint_positions(np.array(episode.trace.obs))[:, column]), lw=0.7)
        mark_joint_limits(axis, spec.joint(joint), absolute=True)
        axis.set(ylabel=f"|{joint}| from 0 (rad)", ylim=(0, np.pi))
    command_axis = axes[-1]
    for episode in traced:
        command_axis.plot(np.array(episode.trace.command)[:, 0], lw=0.7)
    mark_command_limits(command_axis, low[0], high[0])
    command_axis.set(ylabel=f"{spec.actuators[0].name} command", xlabel="step")
    figure.suptitle("one line per episode", fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "traces.png", dpi=80)
    plt.close(figure)


def mark_joint_limits(axis, joint, absolute: bool = False) -> None:
    """A joint's software limit and hard stops as lines on `axis` (for |angle| with `absolute`), with a legend."""
    for bounds, style, label in ((joint.position_limit, "--", "software limit"), (joint.hard_stop, ":", "hard stop")):
        if bounds:
            for bound in ([max(map(abs, bounds))] if absolute else bounds):
                axis.axhline(bound, color="red" if style == "--" else "black", ls=style, label=label)
                label = None
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="upper right")


def mark_command_limits(axis, low: float, high: float) -> None:
    axis.axhline(low, color="red", ls="--", label="command limit")
    axis.axhline(high, color="red", ls="--")
    axis.legend(fontsize=7, loc="upper right")


def gate_candidate(registry, version: str, signing_key, config: GateConfig | None = None, robot: str = "furuta",
                   actor: str = "gate", progress: bool = False, physics: str | Path | None = None,
                   widen: float = WIDEN) -> GateReport:
    """Validate a registry candidate: validating, then validated (signed) or rejected, with the report stored. A
    validation that does not finish returns the policy to candidate."""
    from robot_app.agent.loading import SIGNATURE_SUFFIX
    from robot_app.common.files import write_atomic
    from robot_app.common.signing import sign

    if physics is not None:  # a bad overlay is refused before the registry records a validation
        load_physics(physics).narrow(load_robot_spec(robot), widen)
    record = registry.start_validation(version, actor)
    try:
        report = validate(record.path, robot, config, progress, physics, widen)
    except BaseException:
        registry.move(version, "candidate", actor, "sim validation did not finish")
        raise
    folder = write_report(report, registry.folder / "reports" / version)
    stored = json.loads(report.model_copy(update={"folder": str(folder)}).to_json())
    if not report.passed:
        registry.move(version, "rejected", actor, "; ".join(report.reasons), report=stored)
        return report
    signature = sign(Path(record.path).read_bytes(), signing_key)
    write_atomic(record.path + SIGNATURE_SUFFIX, signature.encode())
    registry.move(version, "validated", actor, "passed sim validation", report=stored, signature=signature)
    return report
