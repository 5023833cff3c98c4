"""The robot's planner alone, on one core: onnxruntime's time per decision of the exported planning graph, at the
default network sizes on the Furuta's shapes (6 observations, 1 action), for several (samples, iterations).

    .venv/bin/python bench/planner.py [--decisions 300] [--horizon 3]

It is the planning artifact's own cost, before the agent's loop and its deadline are in the picture.
Results go to bench/results/planner.json; docs/BENCHMARKS.md quotes them with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from policies.planner import PlannerConfig  # noqa: E402
from policies.sac_svg import SACSVG, SACSVGConfig  # noqa: E402
from policies.world_model import export_world_model  # noqa: E402
from robot_app.agent.world_planner import WorldModelPlanner  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "planner.json"
SETTINGS = [(64, 2), (128, 3), (256, 4), (512, 6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--horizon", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # one core, as on the robot
    torch.manual_seed(0)
    agent = SACSVG(6, 1, SACSVGConfig(horizon=args.horizon))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for samples, iterations in SETTINGS:
            path = Path(tmp) / f"planner-{samples}-{iterations}.onnx"
            config = PlannerConfig(samples=samples, iterations=iterations, elites=min(32, samples // 4),
                                   policy_samples=min(24, samples // 8))
            export_world_model(agent, path, env="furuta:swingup", obs_layout=[("state", 6)], action_layout=["motor"],
                               action_low=[-5.0], action_high=[5.0], action_repeat=1, training_step=0,
                               source_run="bench", planner=config, parity_decisions=2)
            planner = WorldModelPlanner(path, seed=0)
            obs = np.random.default_rng(0).normal(size=(args.decisions + 20, 6)).astype(np.float32)
            times = []
            for i, o in enumerate(obs):
                started = time.perf_counter_ns()
                planner.plan(o)
                if i >= 20:  # after onnxruntime's first calls
                    times.append((time.perf_counter_ns() - started) / 1e6)
            p50, p99 = np.quantile(times, [0.5, 0.99])
            rows.append({"samples": samples, "iterations": iterations, "elites": config.elites,
                         "policy_samples": config.policy_samples, "horizon": args.horizon,
                         "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
                         "max_ms": round(max(times), 3), "decisions": len(times),
                         "share_of_a_50_hz_period_p99": round(float(p99) / 20.0, 3)})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores",
                                   "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
