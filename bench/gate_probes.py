"""Probes of the gate's cost against raw stepping, each side by side with raw in the same run (not the bench itself:
bench/gate.py is). The same 32 plans go through the gate on the pinned pool, then raw replays that run's commands.

    .venv/bin/python bench/gate_probes.py transport [--rounds 3]   # the pty against a socketpair in its place
    .venv/bin/python bench/gate_probes.py concurrency [--rounds 2] # 1, 2 and 3 episodes at a time per worker

`transport` swaps the virtual robot's pty for a socketpair in the probe's workers only (the agent gets the other end
in place of pyserial's descriptor), to size what the pty's kernel path costs. The pty is the specified port.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
sys.path.insert(0, str(Path(__file__).parent))
POLICY = str(Path(__file__).parents[1] / "tests" / "fixtures" / "furuta_swingup.onnx")


class _SocketEnd:
    """Stands in for pyserial's Serial on one end of a socketpair (the port name carries its descriptor)."""

    def __init__(self, port: str, *args, **kwargs):
        self._fd = os.dup(int(port.removeprefix("socketpair:")))
        os.set_blocking(self._fd, False)

    def reset_input_buffer(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


def _episode_over_socketpair(job):
    import tty

    import serial

    from sim.gate import _episode_job

    os.openpty = lambda: tuple(end.detach() for end in socket.socketpair())  # this worker process only
    os.ttyname = lambda fd: f"socketpair:{fd}"
    tty.setraw = lambda fd: None
    serial.Serial = _SocketEnd
    return _episode_job(job)


def _episodes_at_once(jobs):
    from sim.gate import _episode_job

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as threads:
        return list(threads.map(_episode_job, jobs))


def _timed(pool_jobs, function) -> tuple[float, list]:
    from sim.gate import core_pool

    started = time.perf_counter()
    with core_pool(2) as pool:
        out = list(pool.map(function, pool_jobs))
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["transport", "concurrency"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from gate import raw_replay
    from robot_app.robot.spec import load_robot_spec
    from sim.gate import _episode_job, plan_episodes

    jobs = [(POLICY, "furuta", plan) for plan in plan_episodes(load_robot_spec("furuta"), 32, 0)]
    for round_ in range(1, args.rounds + 1):
        if args.probe == "transport":
            pty_s, episodes = _timed(jobs, _episode_job)
            pair_s, paired = _timed(jobs, _episode_over_socketpair)
            raw_s, _ = raw_replay(episodes, 2)
            print(f"round {round_}: pty {pty_s:.2f} s, socketpair {pair_s:.2f} s, raw {raw_s:.2f} s: "
                  f"{pty_s / raw_s:.2f}x and {pair_s / raw_s:.2f}x; return sums "
                  f"{sum(e.episode_return for e in episodes):.3f} and "
                  f"{sum(e.episode_return for e in paired):.3f}", flush=True)
        else:
            walls = {}
            for at_once in (1, 2, 3):
                groups = [jobs[i:i + at_once] for i in range(0, len(jobs), at_once)]
                walls[at_once], _ = _timed(groups, _episodes_at_once)
            print(f"round {round_}: " + ", ".join(f"{k} at a time {v:.2f} s" for k, v in walls.items()), flush=True)


if __name__ == "__main__":
    main()
