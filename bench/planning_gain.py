"""What CEM-MPC planning adds: SAC-SVG(3) runs with `--plan-eval`, the policy and the planner on the same checkpoints.

Each (task, seed) is a real `robot-app train --plan-eval` run; its evaluations at every 10k env steps hold both returns.
After training, the final checkpoint is also planned with take="mean" and take="elite" on the same episodes (paired).
One finished run leaves bench/results/planning_gain/<task>_s<seed>.json, so the script can be re-run (or run as two
queues on two cores) until all are done; --summary prints the tables docs/BENCHMARKS.md quotes.

    .venv/bin/python bench/planning_gain.py [--tasks dmc:cartpole-swingup ...] [--seeds 0 1 2] [--summary]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))
from learning import evaluations, train  # noqa: E402

RESULTS = ROOT / "results" / "planning_gain"
RUNS = ROOT.parent / "runs" / "bench-planning"
TASKS = ["dmc:cartpole-swingup", "dmc:reacher-easy", "dmc:pendulum-swingup", "furuta:swingup"]
EARLY, STEPS, EPISODES = 10_000, 50_000, 10


def result_path(task: str, seed: int) -> Path:
    return RESULTS / f"{task.replace(':', '_')}_s{seed}.json"


def compare_takes(folder: Path, seed: int) -> dict:
    """The final checkpoint planned both ways, each on the same EPISODES episodes of a fresh evaluation env."""
    import torch

    from policies.planner import Planner, PlannerConfig
    from robot_app.learner.training import load_agent
    from sim.envs import evaluate_returns, make_env

    torch.set_num_threads(1)
    loaded = load_agent(folder)
    out = {}
    for take in ("mean", "elite"):
        env = make_env(loaded.config.env, 10_000 + seed, loaded.config.action_repeat)
        planner = Planner(loaded.agent, PlannerConfig(take=take), seed=seed)
        out[take] = evaluate_returns(env, planner.plan, EPISODES, reset=planner.reset)
    return out


def run(task: str, seed: int) -> str:
    if result_path(task, seed).is_file():
        return f"{task} seed {seed}: already done"
    folder = RUNS / f"{task.replace(':', '_')}-s{seed}"
    started = time.time()
    line = train(folder, STEPS, ["--env", task, "--horizon", 3, "--seed", seed, "--eval-every", EARLY,
                                 "--eval-episodes", EPISODES, "--plan-eval"])
    rows = evaluations(folder)
    if not rows or rows[-1]["env_step"] < STEPS:
        return line
    trained = time.time() - started
    takes = compare_takes(folder, seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"task": task, "seed": seed, "evaluations": rows, "takes": takes, "train_seconds": round(trained),
              "date": time.strftime("%Y-%m-%d")}
    result_path(task, seed).write_text(json.dumps(record, indent=1))
    return f"{line}; takes mean {np.mean(takes['mean']):.1f} elite {np.mean(takes['elite']):.1f}"


def at(record: dict, step: int) -> dict:
    return next(r for r in record["evaluations"] if r["env_step"] >= step)


def summary(tasks, seeds) -> None:
    print("| task | checkpoint | seeds | policy | planned | paired difference | planned / policy |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        records = [json.loads(result_path(task, s).read_text()) for s in seeds if result_path(task, s).is_file()]
        if not records:
            continue
        for step in (EARLY, STEPS):
            policy = np.array([at(r, step)["return_mean"] for r in records])
            planned = np.array([at(r, step)["plan_return_mean"] for r in records])
            diff = planned - policy
            print(f"| {task} | {step // 1000}k | {len(records)} | {policy.mean():.1f} ± {policy.std():.1f} | "
                  f"{planned.mean():.1f} ± {planned.std():.1f} | {diff.mean():+.1f} ± {diff.std():.1f} | "
                  f"{planned.mean() / policy.mean() if policy.mean() > 0 else float('nan'):.3f} |")
    print("\n| task | seeds | take mean | take elite | elite − mean (paired) |")
    print("|---|---|---|---|---|")
    for task in tasks:
        records = [json.loads(result_path(task, s).read_text()) for s in seeds if result_path(task, s).is_file()]
        if records:
            mean = np.array([np.mean(r["takes"]["mean"]) for r in records])
            elite = np.array([np.mean(r["takes"]["elite"]) for r in records])
            print(f"| {task} | {len(records)} | {mean.mean():.1f} ± {mean.std():.1f} | {elite.mean():.1f} ± "
                  f"{elite.std():.1f} | {(elite - mean).mean():+.1f} ± {(elite - mean).std():.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--summary", action="store_true", help="only print the tables of what has finished")
    args = parser.parse_args()
    if not args.summary:
        for seed in args.seeds:
            for task in args.tasks:
                print(run(task, seed), flush=True)
    summary(args.tasks, args.seeds)


if __name__ == "__main__":
    main()
