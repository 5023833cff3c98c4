"""The robot's planner on one core: per decision alone and inside the agent's loop at 50 Hz, with its cost in FLOPs.

    .venv/bin/python bench/planner.py [--run runs/bench-planning/furuta_swingup-s0] [--episodes 3] [--decisions 300]

For each (samples, iterations), the run's checkpoint is exported as a planning artifact. Then:
- alone: onnxruntime's time per decision on core 0; the fixed cost of one call (the same inputs into an empty graph);
  and from ORT's profiler the share of a call outside its nodes' kernels (the profiler's own cost is in that share);
- in the loop: the agent on core 0 drives a realtime virtual robot (on core 1) at 50 Hz for --episodes episodes, with
  the default deadline; the decision's p50/p99 (pi's action, the plan and any fallback), the fallback rate, the return;
- cost: the MatMul/Gemm FLOPs of one decision (static shapes), against one core's float32 matmul rate (ORT's MatMul).
Results go to bench/results/planner.json; docs/BENCHMARKS.md quotes them with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent import start_virtual_robot, stop  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "planner.json"
SETTINGS = [(64, 2), (128, 3), (256, 4), (512, 6)]


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def matmul_flops(path: Path) -> int:
    """2·M·K·N summed over the graph's MatMul and Gemm nodes, from onnx's shape inference (the shapes are fixed)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes |= {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            transposed = node.op_type == "Gemm" and any(x.name == "transB" and x.i for x in node.attribute)
            k, n = (b[-1], b[-2]) if transposed else (b[-2], b[-1])
            total += 2 * int(np.prod(a[:-1])) * k * n
    return total


def matmul_ceiling() -> float:
    """One core's float32 matmul rate, GFLOP/s, as onnxruntime's own MatMul reaches it: the best of 10 runs of
    8 products of 512 x 512 (torch.mm reaches about half of it here)."""
    import onnxruntime
    from onnx import TensorProto, helper

    n = 512
    square = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", square[:2], square[2:])
    session = onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(), _one_thread(),
                                           providers=["CPUExecutionProvider"])
    feeds = {name: np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) for name in "ab"}
    best = min(_timed(lambda: [session.run(None, feeds) for _ in range(8)]) for _ in range(10)) / 8
    return 2 * n ** 3 / best / 1e9


def call_overhead_ms(path: Path, calls: int = 2000) -> float:
    """What one onnxruntime call costs with the planner's own inputs but no work: a graph of the same inputs that
    returns its observation (median ms)."""
    import onnxruntime
    from onnx import TensorProto, helper

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, i.shape) for i in session.get_inputs()]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, session.get_inputs()[0].shape)
    graph = helper.make_graph([helper.make_node("Identity", ["obs"], ["out"])], "call", inputs, [output])
    empty = onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(), _one_thread(),
                                         providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs()}
    return float(np.median([_timed(lambda: empty.run(None, feeds)) for _ in range(calls)]) * 1e3)


def _one_thread():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return options


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alone(path: Path, decisions: int) -> dict:
    from robot_app.agent.world_planner import WorldModelPlanner

    planner = WorldModelPlanner(path, seed=0)
    obs = np.random.default_rng(0).normal(size=(decisions + 20, planner.metadata.obs_dim)).astype(np.float32)
    times = [_timed(lambda: planner.plan(o)) * 1e3 for o in obs][20:]  # after onnxruntime's first calls
    p50, p99 = np.quantile(times, [0.5, 0.99])
    return {"alone_p50_ms": round(float(p50), 3), "alone_p99_ms": round(float(p99), 3)}


def outside_nodes(path: Path, decisions: int = 50) -> float:
    """The share of a planning call's time outside its nodes' kernels, from onnxruntime's own profile."""
    import onnxruntime

    from robot_app.agent.world_planner import WorldModelPlanner

    options = _one_thread()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "ort")
        planner = WorldModelPlanner(onnxruntime.InferenceSession(str(path), options), seed=0)
        obs = np.zeros(planner.metadata.obs_dim, np.float32)
        for _ in range(decisions):
            planner.plan(obs)
        events = json.loads(Path(planner.session.end_profiling()).read_text())
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][5:]
    nodes = sum(e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    nodes *= len(runs) / decisions  # the nodes of the runs kept
    return round(1.0 - nodes / sum(runs), 3)


def in_the_loop(path: Path, episodes: int) -> dict:
    """The agent on core 0, planning, against a realtime virtual robot on core 1, at the spec's 50 Hz."""
    from calibration.encoders import load_calibration
    from robot_app.agent.loading import load_policy
    from robot_app.agent.runtime import Agent
    from robot_app.agent.transition_log import TransitionRecorder
    from robot_app.hardware.serial_robot import SerialRobot
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    spec = load_robot_spec("furuta")
    proc, port = start_virtual_robot("--robot-id", "bench")
    os.sched_setaffinity(proc.pid, {1})
    try:
        recorder = TransitionRecorder()
        policy = load_policy(str(path), spec, make_task(spec).obs_layout)
        summary = Agent(SerialRobot(port), spec, load_calibration("furuta"), policy, recorder,
                        status_every_s=1e9).run(episodes=episodes)
    finally:
        stop(proc)
    returns = {}
    for row in recorder.rows:
        returns[row.episode] = returns.get(row.episode, 0.0) + row.reward
    return {"loop_p50_ms": round(summary.policy_p50_us / 1e3, 3), "loop_p99_ms": round(summary.policy_p99_us / 1e3, 3),
            "loop_max_ms": round(summary.policy_max_us / 1e3, 3), "decisions": summary.transitions,
            "fallback_rate": round(summary.plan_fallbacks / max(summary.transitions, 1), 4),
            "overruns": summary.overruns, "returns": [round(r, 1) for r in returns.values()],
            "return_mean": round(float(np.mean(list(returns.values()))), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/bench-planning/furuta_swingup-s0", help="a furuta:swingup run")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=300)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # one core, as on the robot
    from policies.planner import PlannerConfig
    from robot_app.learner.training import export_run

    ceiling = matmul_ceiling()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for samples, iterations in SETTINGS:
            config = PlannerConfig(samples=samples, iterations=iterations, elites=min(32, samples // 4),
                                   policy_samples=min(24, samples // 8))
            path = Path(tmp) / f"planner-{samples}-{iterations}.onnx"
            export_run(args.run, path, config)
            flops = matmul_flops(path)
            row = {"samples": samples, "iterations": iterations, "elites": config.elites,
                   "policy_samples": config.policy_samples, **alone(path, args.decisions),
                   "outside_nodes_share_profiled": outside_nodes(path), "mflop_per_decision": round(flops / 1e6, 1),
                   "call_overhead_ms": round(call_overhead_ms(path), 4), "nodes": node_count(path)}
            row["call_overhead_share"] = round(row["call_overhead_ms"] / row["alone_p50_ms"], 4)
            row["share_of_matmul_ceiling"] = round(flops / (row["alone_p50_ms"] / 1e3) / 1e9 / ceiling, 3)
            row |= in_the_loop(path, args.episodes)
            rows.append(row)
            print(json.dumps(row), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    RESULTS.write_text(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores", "commit": commit,
                                   "date": time.strftime("%Y-%m-%d"), "run": args.run,
                                   "matmul_ceiling_gflops_one_core": round(ceiling, 1), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
