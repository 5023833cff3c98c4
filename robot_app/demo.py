"""`robot-app demo`: the whole stack on one machine, as separate processes over tcp on 127.0.0.1.

A learner (ingest, online SAC-SVG(H); each candidate goes through the policy registry and the sim-validation gate, and
only what passes is signed and deployed), and for each robot a lockstep virtual Furuta on a pty and an agent that
drives it through pyserial, ships its transitions over CURVE-secured ZeroMQ, and loads only gate-signed policies.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from policies.signing import generate_signing_keys
from robot_app.transport.keys import generate_keys

CLI = [sys.executable, "-m", "robot_app.cli"]
MARKER = "demo.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_folder(out: Path) -> None:
    if out.exists():
        if not (out / MARKER).is_file():
            raise ValueError(f"{out} exists and is not a demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _keys(out: Path, robot_ids: list[str]) -> Path:
    keys = out / "keys"
    generate_keys(keys, "learner")
    generate_signing_keys(keys, "gate")
    for robot_id in robot_ids:
        public, _ = generate_keys(keys, robot_id)
        (keys / "allowed").mkdir(exist_ok=True)
        shutil.copy(public, keys / "allowed" / public.name)
    return keys


def _last_progress(path: Path) -> dict | None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    return json.loads(lines[-1]) if lines else None


def run_demo(out: str | Path, robots: int = 1, minutes: float = 10.0, horizon: int = 3,
             transitions_per_s: float = 30.0, gate_episodes: int = 4) -> int:
    """transitions_per_s: the robots' combined lockstep pace, near what one learner core can update on.
    gate_episodes: randomised sim-validation episodes per candidate; only what passes is signed and deployed."""
    out = Path(out)
    _fresh_folder(out)
    robot_ids = [f"furuta-virtual-{i}" for i in range(robots)]
    pace_hz = transitions_per_s / robots
    (out / MARKER).write_text(json.dumps({"robots": robot_ids, "minutes": minutes, "horizon": horizon}))
    keys = _keys(out, robot_ids)
    listen, announce = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    budget_s = minutes * 60
    logs = out / "logs"
    logs.mkdir()
    processes: list[tuple[str, subprocess.Popen]] = []

    def spawn(name: str, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen([*CLI, *args], stderr=open(logs / f"{name}.log", "w"), **kwargs)
        processes.append((name, proc))
        return proc

    print(f"demo: {robots} virtual Furuta robot(s), learner SAC-SVG({horizon}), {minutes:g} min; logs in {logs}")
    try:
        spawn("learner", ["learner", "--out", str(out / "learner"), "--listen", listen, "--announce", announce,
                          "--keys", str(keys), "--horizon", str(horizon), "--registry", str(out / "registry"),
                          "--signing-key", str(keys / "gate.sign_key"), "--gate-episodes", str(gate_episodes),
                          "--auto-deploy"])
        for i, robot_id in enumerate(robot_ids):
            device = spawn(f"{robot_id}-device", ["virtual-robot", "--lockstep", "--robot-id", robot_id,
                                                  "--seed", str(i)], stdout=subprocess.PIPE, text=True)
            port = device.stdout.readline().strip()
            if not port:
                raise RuntimeError(f"the virtual robot {robot_id} did not start; see {logs}")
            spawn(f"{robot_id}-agent", ["agent", "--port", port, "--robot-id", robot_id, "--policy", "random",
                                        "--explore", "0.3", "--learner", listen, "--announcements", announce,
                                        "--keys", str(keys), "--log", str(out / robot_id / "transitions.sqlite"),
                                        "--status-every", "60", "--pace", str(pace_hz),
                                        "--trusted-key", str(keys / "gate.sign_pub")],
                  stdout=subprocess.DEVNULL)
        started = time.monotonic()
        while time.monotonic() - started < budget_s:
            time.sleep(min(15.0, max(0.0, budget_s - (time.monotonic() - started))))
            for name, proc in processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}; see {logs}/{name}.log")
            row = _last_progress(out / "learner" / "progress.jsonl")
            if row:
                print(f"  {row['elapsed_s']:6.0f} s  transitions {row['transitions']:7d}  updates {row['updates']:6d}  "
                      f"candidates {row['candidates']:3d}  episodes {row['episodes']:4d}  "
                      f"return (last 10 episodes) {row['recent_return']}  gate {_gate_line(row['gate'])}", flush=True)
    finally:
        for name, proc in reversed(processes):  # agents first (a safe stop each), then devices, then the learner
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return _report(out)


def _gate_line(gate: dict | None) -> str:
    if not gate:
        return "-"
    states = gate["states"]
    return (f"{states.get('validated', 0) + states.get('deployed', 0) + states.get('retired', 0)} passed "
            f"{states.get('rejected', 0)} rejected, deployed {gate['deployed'] or 'none yet'}")


def _report(out: Path) -> int:
    progress = [json.loads(line) for line in (out / "learner" / "progress.jsonl").read_text().splitlines()]
    returns = [row["recent_return"] for row in progress if row["recent_return"] is not None]
    if not returns:
        print("demo: no episode finished; see the logs")
        return 1
    best = max(returns)
    print(f"demo: swing-up return (mean of the last 10 episodes) went from {returns[0]:.1f} to {returns[-1]:.1f} "
          f"(best {best:.1f}, out of 400) over {progress[-1]['updates']} updates on "
          f"{progress[-1]['transitions']} transitions; curve in {out / 'learner' / 'progress.jsonl'}")
    return 0
