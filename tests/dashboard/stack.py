"""The real stack for the dashboard's browser tests and benchmark: virtual robots, agents, a learner that does not
train, and the dashboard, as processes on 127.0.0.1, with a registry holding two validated, signed policies."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from robot_app.agent.loading import SIGNATURE_SUFFIX
from robot_app.common.signing import generate_signing_keys, load_signing_key, sign
from robot_app.dashboard.tokens import TokenStore
from robot_app.demo import terminate
from robot_app.learner.registry import PolicyRegistry
from robot_app.robot.spec import load_robot_spec
from robot_app.transport.keys import generate_keys
from tests.conftest import free_port

CLI = [sys.executable, "-m", "robot_app.cli"]
FIXTURES = Path(__file__).parent.parent / "fixtures"
POLICIES = ("furuta_swingup.onnx", "furuta_balance.onnx")


def short_episode_spec(folder: Path, episode_s: float) -> Path:
    """The default robot with short episodes, so a deployed policy takes over within seconds."""
    spec = load_robot_spec("furuta")
    path = folder / "furuta.yaml"
    path.write_text(json.dumps(spec.model_dump(mode="json") | {"episode_s": episode_s}))
    return path


def validated_registry(folder: Path, signing_key: Path) -> list[str]:
    """A registry of two policies, validated and signed as the gate would (its episodes are not what the dashboard's
    tests are about); their versions."""
    registry, key = PolicyRegistry(folder), load_signing_key(signing_key)
    try:
        versions = []
        for name in POLICIES:
            record = registry.add_candidate(FIXTURES / name, "test")
            registry.start_validation(record.version, "test")
            signature = sign(Path(record.path).read_bytes(), key)
            Path(record.path + SIGNATURE_SUFFIX).write_text(signature)
            registry.move(record.version, "validated", "test", "validated for the test", signature=signature)
            versions.append(record.version)
        return versions
    finally:
        registry.close()


class Stack:
    """Start with `with Stack(tmp_path) as stack:`; every process is stopped on leaving, agents first."""

    def __init__(self, folder: Path, robots: int = 1, rate_hz: float | None = None, episode_s: float = 2.0):
        self.folder, self.robots, self.rate_hz = Path(folder), robots, rate_hz
        self.folder.mkdir(parents=True, exist_ok=True)
        self.robot_ids = [f"robot-{i}" for i in range(robots)]
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.spec = short_episode_spec(self.folder, episode_s)
        self.keys = self.folder / "keys"
        self.registry = self.folder / "registry"
        self.state = self.folder / "dashboard"
        self.audits = {robot: self.folder / f"{robot}.audit.json" for robot in self.robot_ids}
        self.url = ""

    def __enter__(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _keys(self) -> None:
        generate_keys(self.keys, "learner")
        generate_keys(self.keys, "dashboard")
        (self.keys / "dashboards").mkdir()
        shutil.copy(self.keys / "dashboard.key", self.keys / "dashboards")
        (self.keys / "allowed").mkdir()
        for robot in self.robot_ids:
            generate_keys(self.keys, robot)
            shutil.copy(self.keys / f"{robot}.key", self.keys / "allowed")
        generate_signing_keys(self.keys, "gate")

    def _registry(self) -> None:
        self.versions = validated_registry(self.registry, self.keys / "gate.sign_key")

    def _spawn(self, name: str, args: list[str], stdout=subprocess.DEVNULL) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        proc = subprocess.Popen([*CLI, *args], stdout=stdout, stderr=log, text=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def _start(self) -> None:
        self._keys()
        self._registry()
        listen, announce, self.dashboard_endpoint = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
        self.learner_metrics_port = free_port()
        robot = ["--robot", str(self.spec)]
        self._spawn("learner", ["learner", *robot, "--out", str(self.folder / "learner"), "--listen", listen,
                                "--announce", announce, "--keys", str(self.keys), "--registry", str(self.registry),
                                "--dashboard", self.dashboard_endpoint, "--warmup", "1000000000", "--torch-threads",
                                "1", "--metrics", f"127.0.0.1:{self.learner_metrics_port}"])
        rate = ["--rate", str(self.rate_hz)] if self.rate_hz else []
        for robot_id in self.robot_ids:
            device = self._spawn(f"{robot_id}-device", ["virtual-robot", *robot, "--robot-id", robot_id, *rate,
                                                        "--audit-out", str(self.audits[robot_id])],
                                 stdout=subprocess.PIPE)
            port = device.stdout.readline().strip()
            assert port, f"the virtual robot did not start: {(self.folder / f'{robot_id}-device.log').read_text()}"
            self._spawn(f"{robot_id}-agent", [
                "agent", *robot, *rate, "--port", port, "--robot-id", robot_id, "--policy", "zero", "--learner",
                listen, "--announcements", announce, "--keys", str(self.keys), "--trusted-key",
                str(self.keys / "gate.sign_pub"), "--log", str(self.folder / robot_id / "transitions.sqlite"),
                "--status-every", "60"])
        tokens = TokenStore(self.state)
        self.operator_token, self.viewer_token = tokens.add("alice", "operator"), tokens.add("victor", "viewer")
        dashboard = self._spawn("dashboard", [
            "dashboard", *robot, "--state", str(self.state), "--learner", self.dashboard_endpoint, "--keys",
            str(self.keys), "--registry", str(self.registry), "--learner-out", str(self.folder / "learner"),
            "--port", "0"], stdout=subprocess.PIPE)
        line = dashboard.stdout.readline()
        assert line.startswith("dashboard on "), f"the dashboard did not start: {self.log('dashboard')}"
        self.url = line.split()[2]
        self.wait_for(lambda: all(r["link_up"] for r in self.fleet().values()) and len(self.fleet()) == self.robots,
                      timeout_s=90, what="every robot reporting through the learner")

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def get(self, path: str, token: str | None = None, text: bool = False):
        request = urllib.request.Request(self.url.rstrip("/") + path,
                                         headers={"Authorization": f"Bearer {token or self.operator_token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return body.decode() if text else json.loads(body)

    def fleet(self) -> dict:
        return self.get("/api/fleet")["robots"]

    def wait_for(self, condition, timeout_s: float = 30.0, what: str = "the condition", ignore=()) -> None:
        """Poll `condition`; fail if it times out or a process (but those in `ignore`) exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            for name, proc in self.procs:
                assert name in ignore or proc.poll() is None, \
                    f"{name} exited with {proc.returncode}: {self.log(name)[-2000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def stop_process(self, name: str, kill: bool = False) -> None:
        for role, proc in self.procs:
            if role == name and proc.poll() is None:
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                proc.wait(timeout=30)

    def stop(self) -> None:
        order = sorted(self.procs, key=lambda p: ("agent" not in p[0], "device" not in p[0]))
        for _, proc in order:
            terminate(proc)

    def audit(self, robot_id: str) -> dict:
        return json.loads(self.audits[robot_id].read_text())
