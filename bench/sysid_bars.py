"""Identification against hidden truths: on 5 virtual units, does calibrate -> excite -> sysid recover damping and motor
gain within 5% and the plant latency within 1 ms (the jitter found beside it), with a held-out RMSE within 2x the
encoder floor; what of friction; and does the gate on the fitted physics predict a fixed policy's return on the true
unit at least 2x closer than the gate on the datasheet ranges? Then CMA-ES against Gauss-Newton for the non-smooth
parameters, on the first unit's log.

Each unit is drawn as bench/calibration_bars.py draws it, and runs as `robot-app virtual-robot --lockstep --truth`;
calibrate, excite (its defaults: a 20-s pendulum swing, then 40 s of chirp and steps) and sysid (on one core, masses
weighed) run as a user runs them.

    .venv/bin/python bench/sysid_bars.py [--units 5] [--seed 0] [--episodes 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from calibration_bars import CLI, calibrate_on, draw_truth, unit_device  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parent
from robot_app.robot.physics import FittedValue, PhysicsOverlay, load_physics  # noqa: E402
from robot_app.robot.spec import Parameter, load_robot_spec  # noqa: E402
from sim.gate import load_gate_config, validate  # noqa: E402
from sim.sysid import DEAD_ZONE, QUANTISATION_FLOOR, build_problem, load_recording, solve  # noqa: E402

RESULTS = ROOT / "results" / "sysid_bars_s{seed}.json"
POLICY = ROOT.parent / "tests" / "fixtures" / "furuta_balance.onnx"  # balances where the pendulum's damping is low
NON_SMOOTH = ("arm_friction", "pendulum_friction", *DEAD_ZONE)


def truth_overlay(spec, truth, unit: str) -> PhysicsOverlay:
    """The hidden unit as an overlay with no intervals: the gate on it runs the true unit (its encoder offsets drawn
    as for every gate run)."""
    values = truth.physics | {name: value for name, span in spec.randomisation.items() for parameter, value in (
        (Parameter.PLANT_LATENCY, truth.plant_latency_s), (Parameter.CONTROL_JITTER, truth.jitter_s),
        (Parameter.SENSOR_NOISE, truth.sensor_noise_counts)) if span.parameter is parameter}
    return PhysicsOverlay(robot=spec.name, robot_id=unit, created="hidden truth", method="hidden truth", logs=[],
                          parameters={n: FittedValue(nominal=v, value=v, interval_95=0.0) for n, v in values.items()},
                          dead_zone_v=truth.dead_zone_v, held_out_rmse_counts=[0, 0],
                          datasheet_held_out_rmse_counts=[0, 0], quantisation_floor_counts=QUANTISATION_FLOOR,
                          fit_seconds=0)


def identify_unit(truth, unit: str, out: Path) -> dict:
    """Calibrate, excite and identify one hidden unit through the CLI."""
    log, fitted = out / f"{unit}.sqlite", out / f"{unit}-fitted.yaml"
    with unit_device(truth, unit, out / f"{unit}-audit.json") as port:
        runs = calibrate_on(port, unit, out)
        excite = subprocess.run([*CLI, "excite", "--port", port, "--calibration", str(out / f"{unit}.yaml"), "--out",
                                 str(log)], capture_output=True, text=True, timeout=900)
        if excite.returncode:
            raise RuntimeError(f"excite failed on {unit}: {excite.stderr}")
    weighed = [f"--weighed={name}={truth.physics[name]}" for name in ("arm_mass", "pendulum_mass")]
    started = time.perf_counter()
    sysid = subprocess.run(["taskset", "-c", "0", *CLI, "sysid", str(log), "--out", str(fitted), *weighed],
                           capture_output=True, text=True, timeout=1800, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if sysid.returncode:
        raise RuntimeError(f"sysid failed on {unit}: {sysid.stderr}")
    return {"calibrate_runs": runs, "sysid_wall_s": time.perf_counter() - started, "log": log, "fitted": fitted}


def judge(truth, physics: PhysicsOverlay) -> dict:
    p = physics.parameters
    relative = {name: p[name].value / truth.physics[name] - 1 for name in ("arm_damping", "pendulum_damping",
                                                                        "motor_gain")}
    latency, jitter = p["plant_latency_s"].value, p["control_jitter_s"].value
    floor = math.sqrt(QUANTISATION_FLOOR ** 2 + truth.sensor_noise_counts ** 2)  # rounding and the unit's noise
    friction = {name: {"true": truth.physics[name], "fitted": p[name].value, "interval_95": p[name].interval_95,
                       "error": p[name].value / truth.physics[name] - 1,
                       "within_interval": abs(p[name].value - truth.physics[name]) <= p[name].interval_95}
                for name in ("arm_friction", "pendulum_friction", "cable_stiffness")}
    return {
        "relative_errors": relative,
        "latency_error_ms": {"plant_latency": (latency - truth.plant_latency_s) * 1e3,
                             "mean_delay": (latency + jitter / 2 - truth.plant_latency_s - truth.jitter_s / 2) * 1e3,
                             "jitter": (jitter - truth.jitter_s) * 1e3},
        "latency_interval_ms": {"plant_latency": p["plant_latency_s"].interval_95 * 1e3,
                                "jitter": p["control_jitter_s"].interval_95 * 1e3},
        "dead_zone_errors_v": [f - t for f, t in zip(physics.dead_zone_v, truth.dead_zone_v)],
        "held_out_rmse_counts": physics.held_out_rmse_counts,
        "datasheet_held_out_rmse_counts": physics.datasheet_held_out_rmse_counts,
        "floor_counts": floor, "held_out_over_floor": [v / floor for v in physics.held_out_rmse_counts],
        "held_out_over_quantisation": [v / QUANTISATION_FLOOR for v in physics.held_out_rmse_counts],
        "friction": friction, "fit_seconds": physics.fit_seconds,
    }


def gate_return(config, physics_path: Path | None) -> float:
    return validate(POLICY, "furuta", config, physics=physics_path).metrics.return_mean


def non_smooth_fits(spec, log: Path, truth, iterations: int = 20) -> dict:
    """The friction and dead-zone parameters fitted again from their starts, the rest held at the Gauss-Newton
    optimum: by Gauss-Newton (mujoco.sysid) and by CMA-ES (cma), each judged by its cost and its errors."""
    import cma
    from mujoco import sysid

    recording = load_recording(log)
    known = {name: truth.physics[name] for name in ("arm_mass", "pendulum_mass")}
    problem, params = build_problem(spec, [recording], known)
    optimum = solve(params, problem.residual, problem.jacobian, max_iter=30)
    names = [u.name for u in problem.simulator.unknowns]
    free = [names.index(n) for n in NON_SMOOTH]
    low, high = params.get_bounds()
    start = optimum.copy()
    start[free] = [problem.simulator.unknowns[k].start for k in free]

    def full(xs):  # [free] or [free, columns]
        xs = np.asarray(xs, dtype=np.float64)
        x = np.repeat(start[:, None], 1 if xs.ndim == 1 else xs.shape[1], axis=1)
        x[free] = xs.reshape(len(free), -1)
        return x[:, 0] if xs.ndim == 1 else x

    def cost(xs) -> float:
        return float(np.sum(problem.residual(full(xs)) ** 2))

    def errors(xs) -> dict:
        values = problem.simulator.values(problem.split(full(xs))[0])
        true = {"arm_friction": truth.physics["arm_friction"], "pendulum_friction": truth.physics["pendulum_friction"],
                DEAD_ZONE[0]: truth.dead_zone_v[0], DEAD_ZONE[1]: truth.dead_zone_v[1]}
        return {n: values[n] - true[n] for n in NON_SMOOTH}

    found = {"start_cost": cost(start[free]), "optimum_cost": cost(optimum[free])}
    sub = sysid.ParameterDict()
    for k in free:
        sub.add(sysid.Parameter(names[k], start[k], low[k], high[k]))
    started = time.perf_counter()
    gn_x = solve(sub, lambda xs: problem.residual(full(xs)),
                 lambda xs, r=None: problem.jacobian(full(np.asarray(xs).reshape(-1)))[:, free], iterations)
    found["gauss_newton"] = {"cost": cost(gn_x), "errors": errors(gn_x), "seconds": time.perf_counter() - started}
    started = time.perf_counter()
    spans = high[free] - low[free]
    es = cma.CMAEvolutionStrategy(start[free] / spans, 0.1, {"bounds": [list(low[free] / spans),
                                                                       list(high[free] / spans)],
                                                            "maxfevals": 400, "verbose": -9, "seed": 1})
    es.optimize(lambda z: cost(np.asarray(z) * spans))
    cma_x = np.asarray(es.result.xbest) * spans
    found["cma_es"] = {"cost": cost(cma_x), "errors": errors(cma_x), "seconds": time.perf_counter() - started,
                       "evaluations": es.result.evaluations}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=16)
    args = parser.parse_args()
    spec = load_robot_spec("furuta")
    rng = np.random.default_rng(args.seed)
    config = load_gate_config(episodes=args.episodes, seed=args.seed, workers=2)
    datasheet = gate_return(config, None)  # one prediction for every unit: the spec's ranges
    print(json.dumps({"datasheet_gate_return": datasheet}))
    units, comparison = [], None
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for n in range(args.units):
            truth, unit = draw_truth(spec, rng), f"furuta-sysid-{n}"
            run = identify_unit(truth, unit, out)
            physics = load_physics(run["fitted"])
            true_path = out / f"{unit}-truth.yaml"
            true_path.write_text(yaml.safe_dump(truth_overlay(spec, truth, unit).model_dump(mode="json")))
            true_return, fitted_return = gate_return(config, true_path), gate_return(config, run["fitted"])
            units.append({"unit": unit, "truth": truth.model_dump(mode="json"), **judge(truth, physics),
                          "sysid_wall_s": run["sysid_wall_s"], "calibrate_runs": run["calibrate_runs"],
                          "fitted": physics.model_dump(mode="json"),
                          "gate": {"true_return": true_return, "fitted_return": fitted_return,
                                   "datasheet_return": datasheet, "fitted_error": abs(fitted_return - true_return),
                                   "datasheet_error": abs(datasheet - true_return)}})
            print(json.dumps(units[-1] | {"truth": None, "fitted": None}, default=float))
            if n == 0:
                comparison = non_smooth_fits(spec, run["log"], truth)
                print(json.dumps({"non_smooth": comparison}, default=float))
    fitted_errors = [u["gate"]["fitted_error"] for u in units]
    datasheet_errors = [u["gate"]["datasheet_error"] for u in units]
    bars = {
        "damping and gain within 5%": all(max(map(abs, u["relative_errors"].values())) <= 0.05 for u in units),
        "plant latency within 1 ms": all(abs(u["latency_error_ms"]["plant_latency"]) <= 1 for u in units),
        "mean delay within 1 ms": all(abs(u["latency_error_ms"]["mean_delay"]) <= 1 for u in units),
        "held-out RMSE within 2x the floor (rounding and noise)": all(max(u["held_out_over_floor"]) <= 2
                                                                      for u in units),
        "held-out RMSE within 2x the quantisation floor": all(max(u["held_out_over_quantisation"]) <= 2
                                                              for u in units),
        "fitted gate 2x closer (mean error)": bool(np.mean(fitted_errors) * 2 <= np.mean(datasheet_errors)),
        "fitted gate 2x closer (every unit)": all(f * 2 <= d for f, d in zip(fitted_errors, datasheet_errors)),
        "fit under 5 min for 60 s on one core": all(u["fit_seconds"] < 300 for u in units),
    }
    results = {"date": time.strftime("%Y-%m-%d"), "seed": args.seed, "episodes": args.episodes, "bars": bars,
               "gate_errors": {"fitted": fitted_errors, "datasheet": datasheet_errors}, "units": units,
               "non_smooth": comparison}
    Path(str(RESULTS).format(seed=args.seed)).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(json.dumps(bars, default=bool))


if __name__ == "__main__":
    main()
