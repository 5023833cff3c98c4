"""Learning curves: SAC (H=0) against SAC-SVG(H) on dm_control tasks, several seeds, through the real `robot-app train`.

Runs go to bench/results/learning/<task>-H<h>-s<seed>; a finished run is skipped and an interrupted one resumed, so the
script can be re-run until everything is done. The summary (table, JSON, PNG) covers whatever has finished.

    .venv/bin/python bench/learning.py [--tasks cartpole-swingup ...] [--horizons 0 3] [--seeds 0 1 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "learning"
TASKS = ["cartpole-swingup", "pendulum-swingup", "reacher-easy"]


def run_dir(task: str, horizon: int, seed: int) -> Path:
    return RUNS / f"{task}-H{horizon}-s{seed}"


def evaluations(folder: Path) -> list[dict]:
    path = folder / "eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def train(folder: Path, steps: int, settings: list) -> str:
    """`robot-app train` into `folder` with `settings` (flags of a new run), resuming it if interrupted."""
    done = evaluations(folder)
    if done and done[-1]["env_step"] >= steps:
        return f"{folder.name}: already done"
    resume = (folder / "checkpoints" / "last.pt").is_file()
    command = [sys.executable, "-m", "robot_app.cli", "train", "--out", str(folder), "--steps", str(steps)]
    command += ["--resume"] if resume else [str(s) for s in settings] + ["--overwrite"]
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": "disable"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    status = "ok" if result.returncode == 0 else f"FAILED: {result.stderr.strip().splitlines()[-1:]}"
    return f"{folder.name}: {status} in {time.time() - started:.0f} s"


def settings(task: str, horizon: int, seed: int) -> list:
    return ["--env", f"dmc:{task}", "--horizon", horizon, "--seed", seed, "--eval-every", 5000, "--eval-episodes", 10]


def summarise(tasks, horizons, seeds, steps) -> dict:
    summary = {}
    for task in tasks:
        for horizon in horizons:
            curves = [evaluations(run_dir(task, horizon, s)) for s in seeds]
            curves = [c for c in curves if c and c[-1]["env_step"] >= steps]
            if not curves:
                continue
            points = sorted({e["env_step"] for e in curves[0]})
            means = np.array([[next(e["return_mean"] for e in c if e["env_step"] == p) for p in points] for c in curves])
            summary[f"{task}/H{horizon}"] = {
                "task": task, "horizon": horizon, "seeds": len(curves), "env_steps": points,
                "mean": means.mean(0).round(1).tolist(), "std": means.std(0).round(1).tolist(),
                "final_per_seed": means[:, -1].round(1).tolist(),
            }
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({v["task"] for v in summary.values()}, key=TASKS.index)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for v in (v for v in summary.values() if v["task"] == task):
            x, m, s = np.array(v["env_steps"]), np.array(v["mean"]), np.array(v["std"])
            label = "SAC (H=0)" if v["horizon"] == 0 else f"SAC-SVG(H={v['horizon']})"
            ax.plot(x, m, label=f"{label}, {v['seeds']} seeds")
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set_title(f"dmc:{task}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return (10 episodes)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--horizons", nargs="+", type=int, default=[0, 3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    jobs = [(t, h, s) for t in args.tasks for s in args.seeds for h in args.horizons]
    if not args.summary_only:
        with ThreadPoolExecutor(args.workers) as pool:
            for line in pool.map(lambda job: train(run_dir(*job), args.steps, settings(*job)), jobs):
                print(line, flush=True)
    summary = summarise(args.tasks, args.horizons, args.seeds, args.steps)
    (ROOT / "results" / "learning_summary.json").write_text(json.dumps(summary, indent=2))
    if not summary:
        print("no run has finished yet")
        return
    plot(summary, ROOT.parent / "docs" / "learning_curves.png")
    print("| task | algorithm | seeds | return at " + " | ".join(f"{p // 1000}k" for p in next(iter(summary.values()))["env_steps"]) + " |")
    for v in summary.values():
        name = "SAC" if v["horizon"] == 0 else f"SAC-SVG({v['horizon']})"
        cells = " | ".join(f"{m:.0f}±{s:.0f}" for m, s in zip(v["mean"], v["std"]))
        print(f"| {v['task']} | {name} | {v['seeds']} | {cells} |")


if __name__ == "__main__":
    main()
