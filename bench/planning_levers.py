"""Which planner settings stop CEM-MPC losing to a trained policy: paired policy and planned returns per checkpoint.

Trains SAC-SVG(3) runs to 10k and 50k env steps (both checkpoints kept, under runs/bench-levers), then evaluates the
policy and each planner setting in LEVERS on the same EPISODES episodes (one env seed per checkpoint, so paired).
One finished (task, seed, step) leaves bench/results/planning_levers/<task>_s<seed>_<step>.json, and a later run
adds only the levers that file lacks; --summary prints the table docs/BENCHMARKS.md quotes.

    .venv/bin/python bench/planning_levers.py [--tasks furuta:swingup ...] [--seeds 0] [--summary]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))
from learning import train  # noqa: E402

RESULTS = ROOT / "results" / "planning_levers"
RUNS = ROOT.parent / "runs" / "bench-levers"
TASKS = ["dmc:cartpole-swingup", "dmc:reacher-easy", "furuta:swingup"]
STEPS, EPISODES = (10_000, 50_000), 10
LEVERS = {  # name -> PlannerConfig fields changed from the defaults
    "default": {},
    "elites 64": {"elites": 64},
    "temperature 0.1": {"temperature": 0.1},
    "max_std 0.5": {"max_std": 0.5},
    "pi samples 128": {"policy_samples": 128},
    "max_std 0.5, pi samples 128": {"max_std": 0.5, "policy_samples": 128},
    "horizon 1": {"horizon": 1},
    "horizon 2": {"horizon": 2},
    "horizon 1, max_std 0.5": {"horizon": 1, "max_std": 0.5},
}


def name(task: str, seed: int) -> str:
    return f"{task.replace(':', '_')}_s{seed}"


def checkpoints(task: str, seed: int) -> dict[int, Path]:
    """Trains (or resumes) the run, keeping a copy of the checkpoint at each of STEPS."""
    folder = RUNS / name(task, seed)
    kept = {step: folder / f"checkpoint-{step}.pt" for step in STEPS}
    for step in STEPS:
        if not kept[step].is_file():
            print(train(folder, step, ["--env", task, "--horizon", 3, "--seed", seed, "--eval-every", 10_000,
                                       "--eval-episodes", EPISODES]), flush=True)
            shutil.copy(folder / "checkpoints" / "last.pt", kept[step])
    return kept


def evaluate(checkpoint: Path, seed: int, done: dict[str, list[float]]) -> dict[str, list[float]]:
    """The policy's deterministic returns and each lever's planned returns, all on the same episodes; what is in done
    already is kept, not rerun."""
    import torch

    from policies.planner import Planner, PlannerConfig
    from robot_app.learner.training import load_agent
    from sim.envs import evaluate_returns, make_env

    torch.set_num_threads(1)
    loaded = load_agent(checkpoint)
    agent = loaded.agent

    def episodes(act, reset=None):
        env = make_env(loaded.config.env, 10_000 + seed, loaded.config.action_repeat)
        return evaluate_returns(env, act, EPISODES, reset=reset)

    out = dict(done)
    if "policy" not in out:
        out["policy"] = episodes(lambda obs: agent.act(obs, deterministic=True))
    for lever, fields in LEVERS.items():
        if lever in out:
            continue
        planner = Planner(agent, PlannerConfig(**fields), seed=seed)
        out[lever] = episodes(planner.plan, planner.reset)
    return out


def run(task: str, seed: int) -> None:
    kept = checkpoints(task, seed)
    for step, checkpoint in kept.items():
        path = RESULTS / f"{name(task, seed)}_{step}.json"
        before = json.loads(path.read_text()) if path.is_file() else {"returns": {}, "eval_seconds": 0}
        done = before["returns"]
        if set(done) >= {"policy", *LEVERS}:
            continue
        started = time.time()
        returns = evaluate(checkpoint, seed, done)
        RESULTS.mkdir(parents=True, exist_ok=True)
        seconds = before["eval_seconds"] + round(time.time() - started)
        path.write_text(json.dumps({"task": task, "seed": seed, "env_step": step, "returns": returns,
                                    "eval_seconds": seconds, "date": time.strftime("%Y-%m-%d")}))
        print(f"{task} seed {seed} at {step}: " + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in returns.items()),
              flush=True)


def summary() -> None:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    print("| task | seed | checkpoint | policy | " + " | ".join(LEVERS) + " |")
    print("|---|---|---|---|" + "---|" * len(LEVERS))
    for r in sorted(records, key=lambda r: (r["task"], r["seed"], r["env_step"])):
        policy = np.array(r["returns"]["policy"])
        cells = [f"{np.mean(r['returns'][k]):.1f} ({np.mean(np.array(r['returns'][k]) - policy):+.1f})"
                 if k in r["returns"] else "" for k in LEVERS]
        print(f"| {r['task']} | {r['seed']} | {r['env_step'] // 1000}k | {policy.mean():.1f} | " + " | ".join(cells)
              + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--summary", action="store_true", help="only print the table of what has finished")
    args = parser.parse_args()
    if not args.summary:
        for seed in args.seeds:
            for task in args.tasks:
                run(task, seed)
    summary()


if __name__ == "__main__":
    main()
