"""`robot-app demo`: the whole stack on one machine, as separate processes over tcp on 127.0.0.1.

A learner (ingest, online SAC-SVG(H); each candidate goes through the policy registry and the sim-validation gate, and
only what passes is signed and deployed), and for each robot a lockstep virtual Furuta on a pty and an agent that
drives it through pyserial, ships its transitions over CURVE-secured ZeroMQ, and loads only gate-signed policies.
The demo supervises them: one that dies is restarted with backoff, and the run goes on. The learner runs niced, so on
a shared machine the robots' control loops get the CPU first.

While it learns, the gate holds candidates to every safety check but not yet to its success bar (`learner
--explore-below-bar`): a robot learning from scratch explores with policies that do not balance yet. At the end the
best few go through the full gate, and the best that passes it is released (deployed).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from robot_app.common.files import write_atomic
from robot_app.common.logs import shown
from robot_app.common.reports import GateReport
from robot_app.common.signing import generate_signing_keys
from robot_app.transport.keys import generate_keys

CLI = [sys.executable, "-m", "robot_app.cli"]
MARKER = "demo.json"
PROCESSES = "processes.json"  # each role's current pid, rewritten at every (re)start
LEARNER_NICE = 10  # on a shared machine the robots' control loops, not the learner, get the CPU first
BRING_UP_POLICY = "random"  # what each robot runs until the gate deploys a policy
RELEASE_SHORTLIST = 3  # the best policies, by their learning-gate reports, that the full gate judges at the end


class StackError(RuntimeError):
    """A process of the stack did not start; its log says why."""


def _free_port(wanted: int = 0) -> int:
    """`wanted` if it is free on 127.0.0.1, else one the system chooses."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
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
    public, _ = generate_keys(keys, "dashboard")
    (keys / "dashboards").mkdir()
    shutil.copy(public, keys / "dashboards" / public.name)
    for robot_id in robot_ids:
        public, _ = generate_keys(keys, robot_id)
        (keys / "allowed").mkdir(exist_ok=True)
        shutil.copy(public, keys / "allowed" / public.name)
    return keys


def _last_progress(path: Path) -> dict | None:
    """The learner's last whole progress row (it may be writing the next one)."""
    try:
        lines = path.read_text().split("\n")[:-1]  # what follows the last newline is not whole yet
    except FileNotFoundError:
        return None
    return json.loads(lines[-1]) if lines else None


@dataclasses.dataclass
class _Role:
    """One supervised process: how to start it, and how it has fared."""

    name: str
    args: Callable[[], list[str]]  # asked anew at each start: an agent follows its device's pty
    prints_port: bool = False  # a virtual robot prints its pty's path first
    quiet: bool = True  # its stdout is dropped (the learner's last line is the demo's too)
    nice: int = 0  # added to its CPU niceness (its children inherit it)
    depends_on: "_Role | None" = None  # restarted whenever this one is (an agent on a restarted device's new pty)
    proc: subprocess.Popen | None = None
    port: str = ""
    restarts: int = 0
    backoff_s: float = 1.0  # back to 1 s once it has run a minute
    started: float = 0.0
    due: float | None = None  # when it starts again, after it died


class _Supervisor:
    """Starts the demo's processes, restarts any that dies (with backoff and a line saying so), stops them all."""

    def __init__(self, logs: Path, out: Path):
        self.logs, self.out, self.roles = logs, out, []

    def add(self, role: _Role) -> _Role:
        self.roles.append(role)
        if not self._start(role):
            raise StackError(f"{role.name} did not start; see {self.logs}/{role.name}.log")
        return role

    def _start(self, role: _Role) -> bool:
        """Start the role's process; False if it printed no port (it is then restarted like one that died)."""
        log_file = open(self.logs / f"{role.name}.log", "a")  # appended: a restart keeps the log of the last run
        stdout = subprocess.PIPE if role.prints_port else subprocess.DEVNULL if role.quiet else None
        role.proc = subprocess.Popen([*CLI, *role.args()], stdout=stdout, stderr=log_file, text=True)
        log_file.close()
        if role.nice:
            with contextlib.suppress(ProcessLookupError):  # it died already: check() restarts it
                os.setpriority(os.PRIO_PROCESS, role.proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + role.nice)
        role.due, role.started = None, time.monotonic()
        if role.prints_port:
            role.port = role.proc.stdout.readline().strip()
            if not role.port:
                terminate(role.proc)
                return False
        write_atomic(self.out / PROCESSES, json.dumps({r.name: r.proc.pid for r in self.roles if r.proc}).encode())
        return True

    def check(self) -> None:
        """Restart what has died, once its backoff has passed; a dependant goes down and up with it."""
        now = time.monotonic()
        for role in self.roles:
            if role.due is None and role.proc.poll() is not None:
                if now - role.started > 60.0:
                    role.backoff_s = 1.0
                role.restarts += 1
                role.due = now + role.backoff_s
                print(f"demo: {role.name} exited with status {role.proc.returncode} (see {self.logs}/{role.name}.log);"
                      f" restarting it in {role.backoff_s:g} s (restart {role.restarts})", flush=True)
                role.backoff_s = min(2 * role.backoff_s, 30.0)
        for role in self.roles:
            if role.due is not None and now >= role.due and self._start(role):
                for dependant in self.roles:
                    if dependant.depends_on is role and dependant.due is None:
                        terminate(dependant.proc)
                        self._start(dependant)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each role's process has used, and (as `<name> children`) what its exited children used: the
        learner's gate workers. Linux only (from /proc); empty elsewhere."""
        used: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        for role in self.roles:
            try:
                fields = Path(f"/proc/{role.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            used[role.name] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            if children := (int(fields[13]) + int(fields[14])) / tick:  # cutime + cstime
                used[f"{role.name} children"] = children
        return used

    def stop(self) -> None:
        for role in reversed(self.roles):  # agents first (a safe stop each), then devices, then the learner
            if role.proc is not None:
                terminate(role.proc)


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, a minute to stop, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(out: str | Path, robots: int = 1, minutes: float = 20.0, horizon: int = 1,
             transitions: int | None = 36_000, gate_episodes: int = 4, randomise: bool = True,
             on_fresh_folder: Callable[[Path], None] | None = None, dashboard_port: int | None = 8000,
             planner: dict | None = None) -> int:
    """transitions: the budget, in transitions the learner has taken (None: until `minutes`); minutes is a cap.
    The robots run in lockstep, paced by the learner's credit: a busy machine takes longer, not learns less.
    gate_episodes: randomised sim-validation episodes per candidate; only what passes is signed and deployed.
    randomise: each virtual robot draws its physics anew between episodes, from the ranges the gate draws from.
    A process that dies is restarted, with backoff; the robots' outboxes hold their data meanwhile.
    on_fresh_folder(out) runs once `out` is emptied for this run (the CLI records its settings there).
    dashboard_port: the operator's dashboard on 127.0.0.1 there (a free port if it is taken), with an operator token;
    None: none, headless. planner: PlannerConfig settings: the learner exports planning artifacts, so the robots plan
    (CEM-MPC) within their control period, validated by the gate in planned episodes; None: they run pi alone."""
    if robots < 1:
        raise ValueError(f"--robots must be at least 1, got {robots}")
    if transitions is not None and transitions < 1:
        raise ValueError(f"--transitions must be at least 1, got {transitions}")
    out = Path(out)
    _fresh_folder(out)
    if on_fresh_folder is not None:
        on_fresh_folder(out)
    robot_ids = [f"furuta-virtual-{i}" for i in range(robots)]
    (out / MARKER).write_text(json.dumps({"robots": robot_ids, "minutes": minutes, "horizon": horizon,
                                          "transitions": transitions, "randomise": randomise, "planner": planner}))
    keys = _keys(out, robot_ids)
    listen, announce, dashboard = (f"tcp://127.0.0.1:{_free_port()}" for _ in range(3))
    budget_s = minutes * 60
    logs = out / "logs"
    logs.mkdir()
    supervisor = _Supervisor(logs, out)
    budget = f"{transitions} transitions, at most {minutes:g} min" if transitions else f"{minutes:g} min"
    planning = [f"--plan-{name}={value}" for name, value in (planner or {}).items()]
    plans = f", the robots planning with CEM-MPC ({', '.join(planning)})" if planner is not None else ""
    print(f"demo: {robots} virtual Furuta robot(s), learner SAC-SVG({horizon}){plans}, {budget}; logs in {logs}")
    try:
        supervisor.add(_Role("learner", lambda: [
            "learner", "--out", str(out / "learner"), "--listen", listen, "--announce", announce, "--keys", str(keys),
            "--horizon", str(horizon), "--registry", str(out / "registry"), "--signing-key",
            str(keys / "gate.sign_key"), "--gate-episodes", str(gate_episodes), "--auto-deploy", "--explore-below-bar",
            "--torch-threads", "1", "--dashboard", dashboard, "--metrics", f"127.0.0.1:{_free_port(9101)}",
            *(["--plan", *planning] if planner is not None else [])],
            quiet=False, nice=LEARNER_NICE))
        for i, robot_id in enumerate(robot_ids):
            device = supervisor.add(_Role(f"{robot_id}-device", lambda robot_id=robot_id, i=i: [
                "virtual-robot", "--lockstep", "--robot-id", robot_id, "--seed", str(i),
                *(["--randomise"] if randomise else [])], prints_port=True))
            supervisor.add(_Role(f"{robot_id}-agent", lambda robot_id=robot_id, device=device, i=i: [
                "agent", "--port", device.port, "--robot-id", robot_id, "--policy", BRING_UP_POLICY, "--sample",
                "--seed", str(i), "--learner", listen, "--announcements", announce, "--keys", str(keys),
                "--log", str(out / robot_id / "transitions.sqlite"), "--status-every", "60",
                "--trusted-key", str(keys / "gate.sign_pub")], depends_on=device))
        if dashboard_port is not None:
            _start_dashboard(supervisor, out, keys, dashboard, _free_port(dashboard_port))
        started = time.monotonic()
        next_progress = started + 15.0
        seen: collections.deque[tuple[float, int]] = collections.deque(maxlen=5)  # the last minute's progress
        while (elapsed := time.monotonic() - started) < budget_s:
            time.sleep(min(1.0, budget_s - elapsed))
            supervisor.check()
            row = _last_progress(out / "learner" / "progress.jsonl")
            done = transitions is not None and row is not None and row["transitions"] >= transitions
            if (time.monotonic() >= next_progress or done) and row:
                next_progress += 15.0
                seen.append((time.monotonic() - started, row["transitions"]))
                _print_progress(row, seen, transitions)
            if done:
                break
        cpu = supervisor.cpu_seconds()
        write_atomic(out / "cpu.json", json.dumps({"wall_s": time.monotonic() - started, "cpu_s": cpu}).encode())
        print(f"demo: CPU seconds by process in {(time.monotonic() - started) / 60:.1f} min: "
              + ", ".join(f"{name} {seconds:.0f}" for name, seconds in cpu.items()), flush=True)
    finally:
        supervisor.stop()
    return _report(out, {role.name: role.restarts for role in supervisor.roles if role.restarts}, planner is not None)


def _start_dashboard(supervisor: "_Supervisor", out: Path, keys: Path, learner: str, port: int) -> None:
    from robot_app.dashboard.tokens import TokenStore

    token = TokenStore(out / "dashboard").add("demo-operator", "operator")
    supervisor.add(_Role("dashboard", lambda: [
        "dashboard", "--state", str(out / "dashboard"), "--learner", learner, "--keys", str(keys), "--registry",
        str(out / "registry"), "--learner-out", str(out / "learner"), "--port", str(port)]))
    print(f"demo: dashboard on http://127.0.0.1:{port}/#token={token} (an operator token: open the link)", flush=True)


def _print_progress(row: dict, seen: collections.deque, budget: int | None) -> None:
    """One line; the ETA is at the pace of the last minute (the learner's pace, once it paces the robots)."""
    (then, before), (now, count) = seen[0], seen[-1]
    eta = ""
    if budget and count > before:
        eta = f" (of {budget}, ETA {max(0, budget - count) * (now - then) / (count - before) / 60:4.1f} min)"
    print(f"  {now / 60:5.1f} min  transitions {count:6d}{eta}  updates {row['updates']:6d}  "
          f"episodes {row['episodes']:4d}  return (last 10 episodes) {shown(row['recent_return'], '.1f')}  "
          f"gate {_gate_line(row['gate'])}", flush=True)


def _gate_line(gate: dict | None) -> str:
    if not gate:
        return "-"
    states = gate["states"]
    return (f"{states.get('validated', 0) + states.get('deployed', 0) + states.get('retired', 0)} passed "
            f"{states.get('rejected', 0)} rejected, deployed {gate['deployed'] or 'none yet'}")


def _report(out: Path, restarts: dict[str, int], planning: bool = False) -> int:
    from robot_app.plots import plot_folder, read_rows

    progress = read_rows(out / "learner" / "progress.jsonl")
    returns = [row["recent_return"] for row in progress if row["recent_return"] is not None]
    if restarts:
        print(f"demo: restarted {', '.join(f'{name} {n} time(s)' for name, n in restarts.items())}")
    if not returns:
        print("demo: no episode finished; see the logs")
        return 1
    print(f"demo: swing-up return (mean of the last 10 episodes) went from {returns[0]:.1f} to {returns[-1]:.1f} "
          f"(best {max(returns):.1f}, out of 400) over {progress[-1]['updates']} updates on "
          f"{progress[-1]['transitions']} transitions")
    if planning:
        planned, fallbacks = _planned_ticks(out / "learner" / "ingest.sqlite")
        print(f"demo: the robots planned on {planned} ticks; the planner ran out of time on {fallbacks} of them "
              f"({fallbacks / max(planned, 1):.1%}), and the policy's own action went out instead")
    try:
        released, curve = _release(out / "registry"), plot_folder(out)[0]
    except Exception as error:  # the run itself is done and recorded: say what failed, in one line
        print(f"demo: the final report failed ({type(error).__name__}: {error}); the run is in {out}")
        return 1
    print(f"demo: {released}; curve in {curve}")
    return 0


def _planned_ticks(store_path: Path) -> tuple[int, int]:
    """(ticks a deployed policy ran, the plan fallbacks among them) in what the learner stored: in demo --plan every
    deployed policy plans, and only the bring-up policy does not."""
    from robot_app.learner.ingest import IngestStore

    store = IngestStore(store_path)
    try:
        chunks = [chunk for _, _, chunk in store.read(limit_rows=1 << 40)]
    finally:
        store.close()
    planned = sum(version != BRING_UP_POLICY for chunk in chunks for version in chunk.row_policy_versions())
    return planned, sum(int(chunk.columns["plan_fallback"].sum()) for chunk in chunks)


def _release(registry_folder: Path, config=None) -> str:
    """The demo's last step, as an engineer ends a training run: the few best policies the learning gate passed, by
    their reports, run through the full gate (sim/gate.yaml: the success bar, and episodes of its own), and the best
    that passes is deployed. The line gives that verdict and the policy's deterministic nominal return.
    config: the full gate's (default sim/gate.yaml)."""
    from robot_app.learner.registry import PolicyRegistry
    from sim.envs import evaluate_artifact
    from sim.gate import load_gate_config, validate, write_report

    if not registry_folder.is_dir():
        return "no policy passed the gate; the robot ran its bring-up policy"
    registry = PolicyRegistry(registry_folder)
    try:
        passed = [p for p in registry.list() if p.state in ("validated", "deployed", "retired")]
        if not passed:
            return "no policy passed the gate; the robot ran its bring-up policy"
        shortlist = sorted(passed, key=lambda p: _merit(GateReport.model_validate(p.report) if p.report else None),
                           reverse=True)
        config, verdicts = config or load_gate_config(), []
        for policy in shortlist[:RELEASE_SHORTLIST]:
            report = validate(policy.path, config=config)
            write_report(report, registry.folder / "reports" / f"{policy.version}-release")
            verdicts.append((policy, report))
        best, report = max(verdicts, key=lambda v: (v[1].passed, *_merit(v[1])))
        success, return_mean = _merit(report)
        summary = f"success {success:.2f}, return mean {return_mean:.1f} over {config.episodes} randomised episodes"
        if report.passed:
            if best.state != "deployed":
                registry.deploy(best.version, "demo:release", f"passed the full gate: {summary}")
            head = f"released {best.version}: it passed the full gate, {summary}"
        else:
            head = (f"no policy passed the full gate (the best of {len(verdicts)}, {best.version}: {summary}; "
                    f"{'; '.join(report.reasons)}); deployed stays {getattr(registry.deployed(), 'version', None)}")
        _, nominal = evaluate_artifact(best.path, episodes=10, seed=0)
        return f"{head}; deterministic nominal return {sum(nominal) / len(nominal):.1f} (10 episodes)"
    finally:
        registry.close()


def _merit(report: GateReport | None) -> tuple[float, float]:
    """(success rate, mean return): how the demo ranks the policies the gate judged."""
    metrics = report.metrics if report is not None else None
    return (metrics.success_rate, metrics.return_mean) if metrics is not None else (0.0, 0.0)
