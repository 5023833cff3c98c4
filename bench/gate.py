"""Sim-validation gate throughput: episodes per minute through the real agent path, against raw MuJoCo stepping of the
same episodes (same randomised physics, same commands, replayed) in the same run, both on every core.

    .venv/bin/python bench/gate.py [--episodes 32] [--policy tests/fixtures/furuta_swingup.onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering: MuJoCo then skips loading GLFW in every worker
RESULTS = Path(__file__).parent / "results" / "gate.json"


def _raw_episode(job) -> tuple[int, float]:
    """Step FurutaPhysics with the episode's physics draws through its recorded commands; return the steps and the
    seconds it took in the worker (building the model included, as the gate's episode builds its virtual robot)."""
    from robot_app.robot.spec import load_robot_spec
    from sim.furuta import FurutaPhysics

    draws, commands = job
    started = time.perf_counter()
    spec = load_robot_spec("furuta")
    physics = FurutaPhysics(spec)
    physics.randomise(spec.split_draws(draws)[0])
    physics.reset()
    for command in commands:
        physics.step(command, spec.period_s)
    return len(commands), time.perf_counter() - started


def raw_replay(episodes, workers: int) -> tuple[float, list[tuple[int, float]]]:
    """Raw stepping of the gate's episodes (their physics draws, their recorded commands) on the same pinned pool:
    the wall it took, and each episode's steps and seconds."""
    from sim.gate import core_pool

    started = time.perf_counter()
    with core_pool(workers) as pool:
        raw = list(pool.map(_raw_episode, [(e.draws, e.trace.command) for e in episodes]))
    return time.perf_counter() - started, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--policy", default=str(Path(__file__).parents[1] / "tests" / "fixtures" / "furuta_swingup.onnx"))
    args = parser.parse_args()
    from sim.gate import load_gate_config, validate

    workers = os.cpu_count() or 1
    config = load_gate_config(episodes=args.episodes, workers=workers)
    started = time.perf_counter()
    report = validate(args.policy, config=config)
    gate_s = time.perf_counter() - started
    raw_s, raw = raw_replay(report.episodes, workers)
    steps = sum(n for n, _ in raw)
    gate_episode_s = float(np.mean([e.seconds for e in report.episodes]))
    raw_episode_s = float(np.mean([seconds for _, seconds in raw]))
    results = {
        "machine": f"{platform.node()} {workers} cpus", "date": time.strftime("%Y-%m-%d"), "policy": args.policy,
        "episodes": args.episodes, "steps": steps, "workers": workers, "passed": report.passed,
        "gate_s": gate_s, "gate_episodes_per_min": 60 * args.episodes / gate_s,
        "gate_episode_s_in_worker": gate_episode_s,
        "raw_s": raw_s, "raw_episodes_per_min": 60 * args.episodes / raw_s, "raw_episode_s_in_worker": raw_episode_s,
        "gate_over_raw": gate_s / raw_s, "gate_over_raw_in_worker": gate_episode_s / raw_episode_s,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
