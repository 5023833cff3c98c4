"""Agent timing, in one run: loop jitter at 500 Hz against the realtime virtual robot, ONNX vs torch policy latency for
the same 256x256 MLP, serial round trips over the pty, and the adversarial sweep's device-side limit audit.

    .venv/bin/python bench/agent.py [--seconds 60] [--rate 500]
    .venv/bin/python bench/agent.py --safety     # the adversarial sweep alone, realtime at 500 Hz and lockstep at 50 Hz

Results go to bench/results/agent.json; docs/BENCHMARKS.md quotes them with the command and the machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "disable")
CLI = [sys.executable, "-m", "robot_app.cli"]
RESULTS = Path(__file__).parent / "results" / "agent.json"


def start_virtual_robot(*flags: str, audit: Path | None = None) -> tuple[subprocess.Popen, str]:
    extra = ["--audit-out", str(audit)] if audit else []
    proc = subprocess.Popen([*CLI, "virtual-robot", *flags, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def export_mlp_policy(path: Path):
    """A 256x256 actor with the Furuta layout (random weights: latency does not depend on them)."""
    from policies.export import DeployedPolicy, export_onnx
    from policies.networks import SquashedGaussianActor
    from policies.normalizer import RunningNormalizer
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    spec = load_robot_spec("furuta")
    layout = make_task(spec).obs_layout
    policy = DeployedPolicy(RunningNormalizer(6), SquashedGaussianActor(6, 1, (256, 256)), [-5.0], [5.0])
    export_onnx(policy, path, env="furuta:swingup", obs_layout=list(layout), action_layout=["motor"],
                action_repeat=1, training_step=0, source_run="bench", horizon=0)
    return policy


def percentiles_us(samples_ns) -> dict:
    values = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max()), "n": len(values)}


def bench_policy_latency(onnx_path: Path, torch_policy, calls: int = 20_000, cpus: set[int] | None = None) -> dict:
    import torch

    from robot_app.agent.policy_runner import OnnxPolicy

    torch.set_num_threads(1)
    everywhere = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)  # as `robot-app agent --cpus` runs the loop
    onnx = OnnxPolicy(onnx_path)
    obs = np.random.default_rng(0).standard_normal(6).astype(np.float32)
    torch_policy.eval()

    def torch_call(x):
        with torch.inference_mode():
            return torch_policy(torch.from_numpy(x)[None])[0].numpy()

    def time_calls(fn, arg) -> dict:
        for _ in range(500):
            fn(arg)
        samples = np.empty(calls, dtype=np.int64)
        gc.collect()
        gc.disable()  # as in the agent's loop, which collects between ticks
        for i in range(calls):
            start = time.perf_counter_ns()
            fn(arg)
            samples[i] = time.perf_counter_ns() - start
        gc.enable()
        return percentiles_us(samples)

    out = {"onnxruntime": time_calls(onnx, obs), "torch eager": time_calls(torch_call, obs)}
    # The control: a pure-Python loop as long as onnxruntime's median call. Its p99 is what this VM adds to any
    # piece of work that long (timer interrupts, the hypervisor), whatever runs it.
    spins = _spins_lasting(out["onnxruntime"]["p50"])
    out["python loop, onnxruntime's p50 long"] = time_calls(_spin, spins) | {"iterations": spins}
    os.sched_setaffinity(0, everywhere)
    return out


def _spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


def _spins_lasting(target_us: float) -> int:
    """Iterations of _spin whose median time is about target_us."""
    iterations = 100
    for _ in range(3):
        times = []
        for _ in range(200):
            start = time.perf_counter_ns()
            _spin(iterations)
            times.append(time.perf_counter_ns() - start)
        iterations = max(1, round(iterations * target_us * 1e3 / float(np.median(times))))
    return iterations


def echo_timing_robot(port: str):
    """A SerialRobot that sends heartbeats and notes when each echo arrives: the bench's probe, not the agent's."""
    from robot_app.hardware.protocol import MessageType
    from robot_app.hardware.serial_robot import SerialRobot

    class EchoTimingRobot(SerialRobot):
        def __init__(self, port: str):
            super().__init__(port)
            self.heartbeat_echo_ns: dict[int, int] = {}

        def send_heartbeat(self) -> int:
            return self._send(MessageType.HEARTBEAT, b"")

        def _dispatch(self, frame, message, received_ns: int) -> None:
            if frame.type == MessageType.HEARTBEAT:
                self.heartbeat_echo_ns[frame.seq] = received_ns
            super()._dispatch(frame, message, received_ns)

    return EchoTimingRobot(port)


def bench_round_trip(lockstep: bool, rate: float, trips: int = 2000) -> dict:
    flags = ["--lockstep"] if lockstep else []
    proc, port = start_virtual_robot(*flags, "--rate", str(rate))
    try:
        robot = echo_timing_robot(port)
        robot.connect()
        samples = []
        for _ in range(trips):
            start = time.monotonic_ns()
            seq = robot.send_heartbeat()
            while seq not in robot.heartbeat_echo_ns:
                robot.poll(0.5)
            samples.append(robot.heartbeat_echo_ns.pop(seq) - start)
        robot.close()
    finally:
        stop(proc)
    return percentiles_us(samples)


def bench_loop(policy: str, seconds: float, rate: float, tmp: Path, *agent_flags: str) -> dict:
    audit = tmp / "loop-audit.json"
    proc, port = start_virtual_robot("--rate", str(rate), audit=audit)
    summary = tmp / "loop-summary.json"
    try:
        subprocess.run([*CLI, "agent", "--port", port, "--policy", policy, "--rate", str(rate), "--duration",
                        str(seconds), "--log", str(tmp / "loop.sqlite"), "--summary-out", str(summary),
                        "--status-every", "1000", *agent_flags], check=True, capture_output=True,
                       timeout=seconds + 120)
    finally:
        stop(proc)
    out = json.loads(summary.read_text())
    out["device_audit"] = json.loads(audit.read_text())
    return out


ADVERSARIES = ("random", "nan", "bang_bang", "pump", "steady_push")


def bench_adversarial(seconds: float, rate: float, tmp: Path, lockstep: bool = False) -> dict:
    """Each adversary drives the virtual robot; the device counts commands outside the spec's limits and rate, and
    arrivals at a hard stop; the agent's own log gives the share of consecutive commands that flip sign."""
    from robot_app.robot.spec import load_robot_spec

    max_stop_speed = load_robot_spec("furuta").joint("arm").max_hard_stop_speed
    out = {}
    for name in ADVERSARIES:
        audit, commands = tmp / f"{name}-audit.json", tmp / f"{name}-commands.npy"
        proc, port = start_virtual_robot("--rate", str(rate), *(["--lockstep"] if lockstep else []), audit=audit)
        try:
            subprocess.run([sys.executable, __file__, "--adversary", name, "--port", port, "--rate", str(rate),
                            "--seconds", str(seconds), "--commands-out", str(commands)], check=True,
                           timeout=seconds + 120)
        finally:
            stop(proc)
        result = json.loads(audit.read_text())
        signs = np.sign(np.load(commands))
        out[name] = {"commands": result["commands"], "outside_limits": result["limit_violations"],
                     "rate_violations": result["rate_violations"], "max_command_step": result["max_command_step"],
                     "sign_flip_share": float(np.mean(signs[1:] * signs[:-1] < 0)) if len(signs) > 1 else 0.0,
                     "hard_stop_arrivals": result["hard_stop_speeds"],
                     "too_fast_stop_arrivals": sum(s > max_stop_speed for s in result["hard_stop_speeds"]),
                     "max_abs_arm_position": result["max_abs_position"][0]}
    return out


def run_adversary(name: str, port: str, rate: float, seconds: float, commands_out: str) -> None:
    from calibration.encoders import load_calibration
    from robot_app.agent.policy_runner import PolicyKind
    from robot_app.agent.runtime import Agent
    from robot_app.hardware.serial_robot import SerialRobot
    from robot_app.robot.spec import load_robot_spec

    rng = np.random.default_rng(0)
    policies = {
        "random": lambda obs: rng.uniform(-5.0, 5.0, 1),
        "nan": lambda obs: np.array([np.nan]),
        "bang_bang": lambda obs: np.array([5.0 if int(time.monotonic() * 8) % 2 else -5.0]),
        "pump": lambda obs: np.array([5.0 if obs[4] >= 0 else -5.0]),
        "steady_push": lambda obs: np.array([5.0]),
    }

    class Adversary:
        version, kind, sample_seed, fell_back = name, PolicyKind.BRING_UP, -1, False

        def reset(self):
            pass

        def __call__(self, obs):
            return policies[name](obs)

    class Commands:  # stands in for the transition log: keeps each command that went on the wire
        def __init__(self):
            self.sent = []

        def append(self, transition):
            self.sent.append(float(transition.action[0]))

        def next_episode(self, robot_id):
            return 0

    spec = load_robot_spec("furuta").with_rate(rate)
    log = Commands()
    Agent(SerialRobot(port), spec, load_calibration("furuta"), Adversary(), log, status_every_s=1e9).run(
        duration_s=seconds)
    np.save(commands_out, np.array(log.sent))


def latency_rounds(onnx_path: Path, torch_policy, rounds: int) -> None:
    """The policy latency bench alone, `rounds` times in a row: how its p99 moves with the VM's state."""
    out = []
    for _ in range(rounds):
        out.append({"time": time.strftime("%H:%M:%S"), "unpinned": bench_policy_latency(onnx_path, torch_policy),
                    "pinned": bench_policy_latency(onnx_path, torch_policy, cpus={max(os.sched_getaffinity(0))})})
        for where in ("unpinned", "pinned"):
            print(out[-1]["time"], where, {name: f"{r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.0f} us"
                                           for name, r in out[-1][where].items()}, flush=True)
    path = RESULTS.with_name("agent_latency.json")
    path.write_text(json.dumps({"machine": _machine(), "date": time.strftime("%Y-%m-%d"), "rounds": out}, indent=1))


def _machine() -> str:
    return f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the jitter run")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--latency-rounds", type=int, metavar="N",
                        help="only the policy latency bench, N rounds in a row (unpinned, then pinned, each round)")
    parser.add_argument("--safety", action="store_true",
                        help="only the adversarial sweep: realtime at --rate, and lockstep at the spec's 50 Hz")
    parser.add_argument("--adversary", help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    parser.add_argument("--commands-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.adversary:
        run_adversary(args.adversary, args.port, args.rate, args.seconds, args.commands_out)
        return
    tmp = Path(tempfile.mkdtemp())
    if args.safety:
        seconds = min(args.seconds, 20.0)
        results = {"machine": _machine(), "date": time.strftime("%Y-%m-%d"), "seconds": seconds,
                   f"realtime at {args.rate:g} Hz": bench_adversarial(seconds, args.rate, tmp),
                   "lockstep at 50 Hz": bench_adversarial(seconds, 50.0, tmp, lockstep=True)}
        path = RESULTS.with_name("agent_safety.json")
        path.write_text(json.dumps(results, indent=1))
        print(json.dumps(results, indent=1))
        return
    onnx_path = tmp / "mlp256.onnx"
    torch_policy = export_mlp_policy(onnx_path)
    if args.latency_rounds:
        latency_rounds(onnx_path, torch_policy, args.latency_rounds)
        return
    results = {
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
        "policy_latency_us": bench_policy_latency(onnx_path, torch_policy),
        "policy_latency_us_pinned": bench_policy_latency(onnx_path, torch_policy, cpus={max(os.sched_getaffinity(0))}),
        "serial_round_trip_us": {"lockstep device": bench_round_trip(True, args.rate),
                                 f"realtime device at {args.rate:g} Hz": bench_round_trip(False, args.rate)},
        "loop": bench_loop(str(onnx_path), args.seconds, args.rate, tmp),
        "loop_sched_fifo": bench_loop(str(onnx_path), args.seconds, args.rate, tmp, "--realtime-priority", "50"),
        "loop_sched_fifo_pinned": bench_loop(str(onnx_path), args.seconds, args.rate, tmp, "--realtime-priority", "50",
                                             "--cpus", str(max(os.sched_getaffinity(0)))),
        "adversarial": bench_adversarial(min(args.seconds, 20.0), args.rate, tmp),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
