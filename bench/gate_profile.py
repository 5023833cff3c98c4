"""Where a gate episode's time goes: per-thread CPU time of the agent's and the virtual robot's per-step pieces, over a
few randomised episodes run in this process on one core (as a gate worker runs them).

    .venv/bin/python bench/gate_profile.py [--episodes 4] [--cpu 0]

The wrappers add about a microsecond per call; the figures are for comparing pieces and code versions, not absolute.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
POLICY = Path(__file__).parents[1] / "tests" / "fixtures" / "furuta_swingup.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--cpu", type=int, default=0, help="the one core to run on")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    from robot_app.agent.policy_runner import OnnxPolicy
    from robot_app.agent.runtime import Agent
    from robot_app.agent.supervisor import SafetySupervisor
    from robot_app.hardware.serial_robot import SerialRobot
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import SensorPipeline
    from sim.gate import plan_episodes, run_episode
    from sim.virtual_robot import VirtualRobot

    cpu_ns, wall_ns, calls = collections.Counter(), collections.Counter(), collections.Counter()

    def timed(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a, **k):
            cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
            try:
                return original(*a, **k)
            finally:
                cpu_ns[label] += time.thread_time_ns() - cpu
                wall_ns[label] += time.perf_counter_ns() - wall
                calls[label] += 1

        setattr(owner, name, wrapper)

    pieces = [
        (Agent, "run", "agent: whole run"), (Agent, "_tick", "agent: tick"), (Agent, "_read", "agent: read"),
        (SensorPipeline, "update", "agent: sensor pipeline"), (OnnxPolicy, "__call__", "agent: policy"),
        (SafetySupervisor, "check", "agent: supervisor"), (SerialRobot, "send_command", "agent: send command"),
        (Agent, "_close_open_step", "agent: record transition"),
        (VirtualRobot, "serve", "device: whole run"), (VirtualRobot, "_step_delayed", "device: physics"),
        (VirtualRobot, "_receive", "device: receive"), (VirtualRobot, "_apply", "device: command audit"),
        (VirtualRobot, "_send_sensor", "device: send sensor frame"),
    ]
    for owner, name, label in pieces:
        timed(owner, name, label)
    plans = plan_episodes(load_robot_spec("furuta"), args.episodes + 1, 0)
    run_episode(str(POLICY), "furuta", plans[0])  # warm-up, not counted
    cpu_ns.clear(), wall_ns.clear(), calls.clear()
    for plan in plans[1:]:
        run_episode(str(POLICY), "furuta", plan)
    print(f"{args.episodes} episodes on CPU {args.cpu}; per episode: CPU ms, wall ms; per call: CPU µs")
    for _, _, label in pieces:
        n = max(calls[label], 1)
        print(f"{label:28s} {cpu_ns[label] / args.episodes / 1e6:8.1f} {wall_ns[label] / args.episodes / 1e6:8.1f}"
              f"  {calls[label] / args.episodes:6.0f} calls  {cpu_ns[label] / n / 1e3:8.1f} µs/call")


if __name__ == "__main__":
    main()
