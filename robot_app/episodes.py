"""Recorded episodes as people read them: an agent's transition log or the learner's ingest store, exported as a plain
table (CSV, or Parquet with pyarrow) and drawn one episode at a time. Both files are opened read-only."""

from __future__ import annotations

import csv
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np

from robot_app.common.transition_chunk import MessageError, TransitionChunk
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import make_task

SCALARS = ("robot_id", "episode", "step", "seq", "policy_version", "interventions", "reward", "terminated", "truncated",
           "obs_time_ns", "command_time_ns", "next_obs_time_ns", "device_time_us", "sample_seed", "quarantined")
VECTORS = ("obs", "action", "policy_action", "next_obs")


def read_chunks(path: str | Path) -> list[tuple[str, TransitionChunk, bool]]:
    """(robot_id, chunk, quarantined) of every stored chunk, in the order it was recorded; at least one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no transition log at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "chunks" not in tables:
                raise ValueError(f"{path} is neither an agent's transition log nor a learner's ingest store")
            learner = "quarantine" in tables
            rows = db.execute(
                "SELECT robot_id, chunk, seq IN (SELECT seq FROM quarantine) FROM chunks ORDER BY seq" if learner else
                "SELECT robot_id, chunk, 0 FROM chunks ORDER BY first_seq").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path} is not a readable transition log: {error}") from None
    if not rows:
        raise ValueError(f"{path} holds no transitions" + ("" if learner else " (an agent's log keeps only what no "
                                                               "learner has taken yet: read the learner's ingest.sqlite)"))
    chunks = []
    for robot_id, packed, quarantined in rows:
        try:
            chunks.append((robot_id, TransitionChunk.unpack(packed), bool(quarantined)))
        except MessageError as error:
            raise ValueError(f"{path}: a stored chunk of {robot_id} does not decode ({error})") from None
    return chunks


def column_names(spec: RobotSpec, field: str, width: int) -> list[str]:
    """Names for a vector field's columns: the task's observation layout, or the actuators, where they fit."""
    if field in ("obs", "next_obs"):
        names = [f"{name}[{i}]" for name, size in make_task(spec).obs_layout for i in range(size)]
    else:
        names = [a.name for a in spec.actuators]
    names = names if len(names) == width else [str(i) for i in range(width)]
    return [f"{field}.{name}" for name in names]


def table(chunks, spec: RobotSpec) -> tuple[list[str], list[list]]:
    """The transitions as one header and one row each, in recorded order."""
    header: list[str] | None = None
    rows: list[list] = []
    for robot_id, chunk, quarantined in chunks:
        c = chunk.columns
        if header is None:
            header = list(SCALARS) + [name for field in VECTORS
                                      for name in column_names(spec, field, c[field].shape[1])]
        versions, interventions = chunk.row_policy_versions(), chunk.row_interventions()
        scalars = {name: c[name].tolist() for name in SCALARS if name in c}
        vectors = np.concatenate([c[field] for field in VECTORS], axis=1).tolist()
        for i in range(len(chunk)):
            rows.append([robot_id, scalars["episode"][i], scalars["step"][i], scalars["seq"][i], versions[i],
                         ";".join(interventions[i]), scalars["reward"][i], scalars["terminated"][i],
                         scalars["truncated"][i], scalars["obs_time_ns"][i], scalars["command_time_ns"][i],
                         scalars["next_obs_time_ns"][i], scalars["device_time_us"][i], scalars["sample_seed"][i],
                         quarantined, *vectors[i]])
    return header or list(SCALARS), rows


def episode_summaries(header: list[str], rows: list[list], max_steps: int) -> tuple[list[str], list[list]]:
    """One row per (robot, episode): steps, return, how it ended, its policies and its interventions. An episode
    ends terminated (the task's end), at its time limit, cut short (a stop or a safety latch, named where the
    agent recorded one), or is unfinished (its last transition is not in the log yet)."""
    at = {name: i for i, name in enumerate(header)}
    episodes: dict[tuple[str, int], list[list]] = defaultdict(list)
    for row in rows:
        episodes[(row[at["robot_id"]], row[at["episode"]])].append(row)
    out = []
    for (robot_id, episode), steps in episodes.items():
        counts: dict[str, int] = defaultdict(int)
        for row in steps:
            for name in filter(None, row[at["interventions"]].split(";")):
                counts[name] += 1
        last = steps[-1]
        why = last[at["interventions"]].replace(";", ", ")
        ended = ("terminated" if last[at["terminated"]] else "unfinished" if not last[at["truncated"]]
                 else "time limit" if last[at["step"]] + 1 >= max_steps else f"cut short ({why})" if why
                 else "cut short")
        out.append([robot_id, episode, len(steps), round(sum(r[at["reward"]] for r in steps), 3), ended,
                    ";".join(dict.fromkeys(r[at["policy_version"]] for r in steps)),
                    ";".join(f"{k}={v}" for k, v in sorted(counts.items())), steps[0][at["obs_time_ns"]],
                    last[at["next_obs_time_ns"]]])
    return (["robot_id", "episode", "steps", "return", "ended", "policy_versions", "interventions", "start_ns",
             "end_ns"], out)


def export(path: str | Path, out: str | Path, spec: RobotSpec, fmt: str = "csv") -> tuple[Path, Path, int, int]:
    """transitions.<fmt> and episodes.<fmt> in `out`; returns their paths and how many transitions and episodes."""
    header, rows = table(read_chunks(path), spec)
    summary_header, summaries = episode_summaries(header, rows, make_task(spec).max_episode_steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (columns, data) in (("transitions", (header, rows)), ("episodes", (summary_header, summaries))):
        target = out / f"{name}.{fmt}"
        _write_table(target, columns, data, fmt)
        written.append(target)
    return written[0], written[1], len(rows), len(summaries)


def _write_table(target: Path, columns: list[str], rows: list[list], fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({name: [row[i] for row in rows] for i, name in enumerate(columns)}), target)
        return
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def plot_episode(path: str | Path, spec: RobotSpec, out: str | Path, episode: int | None = None,
                 robot_id: str | None = None) -> tuple[Path, str, int, int]:
    """One episode's joint angles, command and reward, with the joint and command limits marked. By default the last
    episode recorded. Returns the PNG, the robot, the episode and its steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.gate import mark_command_limits, mark_joint_limits

    chunks = [(rid, c) for rid, c, _ in read_chunks(path) if robot_id in (None, rid)]
    if not chunks:
        raise ValueError(f"{path} holds no transitions of robot {robot_id!r}")
    if episode is None:
        robot_id, last = chunks[-1]
        episode = int(last.columns["episode"][-1])
    robot_id = robot_id or chunks[-1][0]
    picked = [c for rid, c in chunks if rid == robot_id]
    columns = {name: np.concatenate([c.columns[name][c.columns["episode"] == episode] for c in picked])
               for name in ("step", "obs", "action", "reward")}
    if not len(columns["step"]):
        known = sorted({int(e) for c in picked for e in c.columns["episode"].tolist()})
        raise ValueError(f"{path} has no episode {episode} of {robot_id}; it holds episodes {known[:10]}"
                         + (" ..." if len(known) > 10 else ""))
    task = make_task(spec)
    angles, low, high = task.joint_positions(columns["obs"]), *spec.command_limits
    seconds = columns["step"] * spec.period_s
    figure, axes = plt.subplots(len(task.joints) + 2, 1, figsize=(8, 2.2 * (len(task.joints) + 2)), sharex=True)
    for i, (axis, joint) in enumerate(zip(axes, task.joints)):
        continuous = spec.joint(joint).position_limit is None  # drawn unwrapped: its turns, not jumps at +-pi
        axis.plot(seconds, np.unwrap(angles[:, i]) if continuous else angles[:, i], lw=0.9)
        mark_joint_limits(axis, spec.joint(joint))
        axis.set(ylabel=f"{joint} (rad{', unwrapped' if continuous else ''})")
    axes[-2].plot(seconds, columns["action"][:, 0], lw=0.9)
    mark_command_limits(axes[-2], low[0], high[0])
    axes[-2].set(ylabel=f"{spec.actuators[0].name} command")
    axes[-1].plot(seconds, columns["reward"], lw=0.9)
    axes[-1].set(ylabel="reward", xlabel="time in episode (s)", ylim=(0, 1.05))
    figure.suptitle(f"{robot_id}, episode {episode}: {len(seconds)} steps, return {columns['reward'].sum():.1f}",
                    fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out, robot_id, episode, len(seconds)
