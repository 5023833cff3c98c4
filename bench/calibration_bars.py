"""Calibration against hidden truths: does `robot-app calibrate` recover 5 virtual units' offsets, directions, stops and
dead zones within the bars (2 counts, exactly, 2 degrees, 0.1 V)?

Each unit's physics and device parameters are drawn from the spec's randomisation ranges (as the gate draws them);
its hidden calibration truth from TRUTH_RANGES. The unit runs as `robot-app virtual-robot --lockstep --truth ...`, and
calibrate runs as a user runs it; a direction mismatch is corrected and confirmed by running the steps again.

    .venv/bin/python bench/calibration_bars.py [--units 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from calibration.encoders import load_calibration  # noqa: E402
from robot_app.robot.spec import Parameter, load_robot_spec  # noqa: E402
from sim.virtual_robot import Variation  # noqa: E402

CLI = [sys.executable, "-m", "robot_app.cli"]
RESULTS = ROOT / "results" / "calibration_bars_s{seed}.json"
TRUTH_RANGES = {  # the hidden calibration truth, beyond the gate's ranges: where a fresh unit powers on
    "arm_offset_counts": (-80, 80),  # the arm powered on up to 14 degrees off the centre of its travel
    "pendulum_offset_counts": (-20, 20),  # the pendulum still swinging a little at power-on
    "stop_rad": (2.2, 2.5),  # each mechanical stop, drawn on its own (the spec says 2.356)
    "dead_zone_v": (0.0, 0.5),  # each side's
}


def draw_truth(spec, rng) -> Variation:
    physics, device = spec.split_draws(spec.draw(rng))
    return Variation(
        physics=physics, plant_latency_s=device[Parameter.PLANT_LATENCY], jitter_s=device[Parameter.CONTROL_JITTER],
        sensor_noise_counts=device[Parameter.SENSOR_NOISE],
        count_offsets=(int(rng.integers(*TRUTH_RANGES["arm_offset_counts"], endpoint=True)),
                       int(rng.integers(*TRUTH_RANGES["pendulum_offset_counts"], endpoint=True))),
        count_directions=tuple(int(d) for d in rng.choice([-1, 1], 2)),
        hard_stops=(-float(rng.uniform(*TRUTH_RANGES["stop_rad"])), float(rng.uniform(*TRUTH_RANGES["stop_rad"]))),
        dead_zone_v=tuple(float(v) for v in rng.uniform(*TRUTH_RANGES["dead_zone_v"], 2)))


@contextlib.contextmanager
def unit_device(truth: Variation, unit: str, audit: Path):
    """A hidden unit: `robot-app virtual-robot --lockstep --truth ...`, its pty's path yielded."""
    device = subprocess.Popen([*CLI, "virtual-robot", "--lockstep", "--robot-id", unit, "--audit-out", str(audit),
                               "--truth",
                               yaml.safe_dump(truth.model_dump(mode="json"), default_flow_style=True, width=1e9)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield device.stdout.readline().strip()
    finally:
        device.terminate()
        device.wait(timeout=20)


def calibrate_on(port: str, unit: str, out: Path) -> list[str]:
    """Calibrate a unit as a user would; after a direction mismatch is corrected, the steps again. Each run's exit and
    last line."""
    command, runs = [*CLI, "calibrate", "--port", port, "--robot-id", unit, "--out-dir", str(out)], []
    for steps in ([], ["--step", "direction", "--step", "travel", "--step", "dead_zone"]):
        run = subprocess.run([*command, *steps], capture_output=True, text=True, timeout=600)
        runs.append(f"exit {run.returncode}: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ''}")
        if run.returncode == 0:
            break
        if run.returncode != 1:
            raise RuntimeError(f"calibrate failed on {unit}: {run.stderr}")
    return runs


def calibrate(truth: Variation, unit: str, out: Path) -> tuple[float, list[str], list[float]]:
    """Calibrate one hidden unit: (wall seconds, each calibrate run's exit and last line, the arm's speed at each
    arrival at a stop, from the virtual robot's audit)."""
    audit = out / f"{unit}-audit.json"
    started = time.perf_counter()
    with unit_device(truth, unit, audit) as port:
        runs = calibrate_on(port, unit, out)
    return time.perf_counter() - started, runs, json.loads(audit.read_text())["hard_stop_speeds"]


def judge(spec, truth: Variation, path: Path) -> dict:
    calibration = load_calibration(path, robot=spec.name)
    arm, pendulum = calibration.encoders["arm_encoder"], calibration.encoders["pendulum_encoder"]
    (arm_offset, pendulum_offset), directions = truth.count_offsets, truth.count_directions
    low, high = truth.hard_stops
    centre = (low + high) / 2
    true_arm = arm_offset + directions[0] * centre / arm.scale  # the arm's zero: the centre of its travel
    true_pendulum = pendulum_offset + 1024  # down is half a turn from upright
    wrap = (pendulum.offset_counts - true_pendulum + 1024) % 2048 - 1024
    travel = calibration.steps["travel"].measured
    breakaway = calibration.steps["dead_zone"].measured["breakaway_v"]
    friction_v = truth.physics["arm_friction"] / truth.physics["motor_gain"]  # Coulomb friction, in volts
    true_breakaway = {"negative": truth.dead_zone_v[0] + friction_v, "positive": truth.dead_zone_v[1] + friction_v}
    return {
        "arm_offset_error_counts": arm.offset_counts - true_arm,
        "pendulum_offset_error_counts": float(wrap),
        "directions_right": [arm.direction, pendulum.direction] == list(directions),
        "stop_errors_deg": [math.degrees(m - t) for m, t in zip(travel["stops_rad"], (low - centre, high - centre))],
        "breakaway_errors_v": {side: breakaway[side]["mean_v"] - true_breakaway[side] for side in true_breakaway},
        "breakaway_sd_v": {side: breakaway[side]["sd_v"] for side in true_breakaway},
        "max_approach_rad_s": travel["max_approach_rad_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = load_robot_spec("furuta")
    rng = np.random.default_rng(args.seed)
    units = []
    with tempfile.TemporaryDirectory() as out:
        for n in range(args.units):
            truth, unit = draw_truth(spec, rng), f"furuta-bench-{n}"
            seconds, runs, stop_speeds = calibrate(truth, unit, Path(out))
            result = judge(spec, truth, Path(out) / f"{unit}.yaml")
            units.append({"unit": unit, "truth": truth.model_dump(mode="json"), "runs": runs, "seconds": seconds,
                          "hard_stop_speeds": stop_speeds,
                          **result})
            print(json.dumps(units[-1] | {"truth": None}, default=float))
    bars = {
        "offsets within 2 counts": all(abs(u["arm_offset_error_counts"]) <= 2
                                       and abs(u["pendulum_offset_error_counts"]) <= 2 for u in units),
        "directions exact": all(u["directions_right"] for u in units),
        "stops within 2 degrees": all(max(map(abs, u["stop_errors_deg"])) <= 2 for u in units),
        "breakaway within 0.1 V": all(max(map(abs, u["breakaway_errors_v"].values())) <= 0.1 for u in units),
    }
    results = {"date": time.strftime("%Y-%m-%d"), "seed": args.seed, "bars": bars, "units": units}
    Path(str(RESULTS).format(seed=args.seed)).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(json.dumps(bars))


if __name__ == "__main__":
    main()
