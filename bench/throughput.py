"""Env-steps/s with one update per step (batch 256, 256x256): our SAC and SAC-SVG(3) against SB3's SAC, in one run.

Each variant runs in its own fresh process, rounds interleave the variants, and the table reports medians, ratios to SB3
and the fraction of the CPU's matmul ceiling measured in the same run.

    .venv/bin/python bench/throughput.py [--steps 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
ENV, WARM = "dmc:cartpole-swingup", 1000
VARIANTS = ["ours-sac", "ours-svg3", "sb3-sac"]


def matmul_ceiling_gflops() -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(5):
        a @ b
    start, n = time.perf_counter(), 40
    for _ in range(n):
        a @ b
    return 2 * 1024**3 * n / (time.perf_counter() - start) / 1e9


def measure_ours(horizon: int, steps: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from robot_app.learner.training import TrainConfig, Trainer

    config = TrainConfig(env=ENV, horizon=horizon, action_repeat=1, steps=WARM + steps, random_steps=WARM, seed=0)
    trainer = Trainer(config, tempfile.mkdtemp())
    for _ in range(WARM - 1):  # random actions, no updates
        trainer.decide_and_learn()
    with FlopCounterMode(display=False) as counter:
        trainer._update()
    for _ in range(21):  # the first learning decisions warm the allocator and caches
        trainer.decide_and_learn()
    start = time.perf_counter()
    for _ in range(steps):  # exactly the trainer's per-decision work: act, env step, store, normalise, update
        trainer.decide_and_learn()
    return {"steps_per_s": steps / (time.perf_counter() - start), "update_flops": counter.get_total_flops()}


def measure_sb3(steps: int) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback
    from torch.utils.flop_counter import FlopCounterMode

    from sb3_env import GymEnv, sb3_sac  # beside this script

    class Clock(BaseCallback):
        def _on_step(self):
            if self.num_timesteps == WARM + 20:
                self.start = time.perf_counter()
            return True

    model = sb3_sac(GymEnv(ENV, seed=0, action_repeat=1), WARM, seed=0)
    clock = Clock()
    model.learn(total_timesteps=WARM + 20 + steps, callback=clock)
    elapsed = time.perf_counter() - clock.start
    with FlopCounterMode(display=False) as counter:
        model.train(gradient_steps=1, batch_size=256)
    return {"steps_per_s": steps / elapsed, "update_flops": counter.get_total_flops()}


def run_variant(variant: str, steps: int) -> dict:
    if variant == "sb3-sac":
        return measure_sb3(steps)
    horizon = 3 if variant == "ours-svg3" else 0
    return measure_ours(horizon, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help="internal: measure one variant in this process")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.json")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps)))
        return

    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    ceilings = [matmul_ceiling_gflops()]
    for round_index in range(args.rounds):
        order = VARIANTS[round_index % len(VARIANTS):] + VARIANTS[: round_index % len(VARIANTS)]
        for variant in order:
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_index}: {variant}: {results[variant][-1]['steps_per_s']:.1f} steps/s", file=sys.stderr)
        ceilings.append(matmul_ceiling_gflops())
    ceiling = statistics.median(ceilings)
    sb3 = statistics.median(r["steps_per_s"] for r in results["sb3-sac"])
    rows = []
    for variant, runs in results.items():
        rate = statistics.median(r["steps_per_s"] for r in runs)
        flops = runs[0]["update_flops"]
        rows.append({"variant": variant, "steps_per_s": round(rate, 1), "vs_sb3": round(rate / sb3, 2),
                     "update_mflop": round(flops / 1e6, 1), "gflops": round(rate * flops / 1e9, 2),
                     "of_ceiling": round(rate * flops / 1e9 / ceiling, 3), "runs": [round(r["steps_per_s"], 1) for r in runs]})
    report = {"env": ENV, "action_repeat": 1, "warm_steps": WARM, "steps": args.steps, "rounds": args.rounds,
              "matmul_ceiling_gflops": round(ceiling, 1), "machine": f"{platform.node()} {os.cpu_count()} cpus",
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"| variant | env-steps/s | vs SB3 | MFLOP/update | GFLOP/s | of {ceiling:.0f} GFLOP/s ceiling | runs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['steps_per_s']} | {r['vs_sb3']}x | {r['update_mflop']} | {r['gflops']} | "
              f"{100 * r['of_ceiling']:.1f}% | {r['runs']} |")


if __name__ == "__main__":
    main()
