"""What a new user hits first: the README's recipes, bad input anywhere, and output that people can read."""

import csv
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from robot_app.cli import main
from tests.conftest import TINY_AGENT

ROOT = Path(__file__).parents[2]
BALANCE = ROOT / "tests" / "fixtures" / "furuta_balance.onnx"


def cli(capsys, *args) -> tuple[int, str, str]:
    """robot-app in this process: its exit status, stdout and stderr. An error it does not turn into one line fails
    the test with its traceback."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(capsys, *args) -> str:
    status, _, err = cli(capsys, *args)
    assert status == 2, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 1000-step cartpole run with small nets: config.json, metrics, and checkpoints/{last.pt, replay.npz}."""
    from robot_app.learner.training import Trainer

    out = tmp_path_factory.mktemp("first_use") / "run"
    Trainer.open(out, {"env": "dmc:cartpole-swingup", "steps": 1000, "eval_every": 1000, "eval_episodes": 1,
                       "log_every": 20, "agent": dict(TINY_AGENT)}).run()
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


# ---- recipes that failed or misled ----------------------------------------------------------------------------------


def test_readme_recipe_gives_the_virtual_robot_the_agents_robot_id():
    readme = (ROOT / "README.md").read_text()
    recipe = readme[readme.index("## Robots and the learner over ZeroMQ"):]
    agent_id = re.search(r"robot-app agent .*--robot-id (\S+)", recipe).group(1)
    assert re.search(rf"robot-app virtual-robot .*--robot-id {agent_id}\b", recipe)


def test_a_short_run_still_learns_and_a_run_that_cannot_is_refused(tiny_run, capsys):
    from robot_app.learner.training import TrainConfig

    config = json.loads((tiny_run / "config.json").read_text())
    assert config["random_steps"] == 250  # a quarter of 1000 steps, not 4000
    assert (tiny_run / "metrics.jsonl").read_text().strip()
    assert TrainConfig(env="dmc:cartpole-swingup", steps=50_000).random_steps == 4000
    line = one_line_error(capsys, "train", "--env", "dmc:cartpole-swingup", "--steps", "3000", "--random-steps",
                          "4000", "--out", tiny_run.parent / "never")
    assert "random_steps 4000 is not below steps 3000" in line
    assert not (tiny_run.parent / "never").exists()


def test_resuming_with_fewer_steps_than_done_is_refused_and_rewrites_nothing(run_copy, capsys):
    before = {p.name: p.read_bytes() for p in [run_copy / "config.json", *(run_copy / "checkpoints").iterdir()]}
    line = one_line_error(capsys, "train", "--out", run_copy, "--resume", "--steps", "600")
    assert "at env step 1000 already" in line and "--steps 600" in line
    after = {p.name: p.read_bytes() for p in [run_copy / "config.json", *(run_copy / "checkpoints").iterdir()]}
    assert after == before


def test_validate_refuses_a_dm_control_policy_with_the_reason_and_writes_no_report(run_copy, capsys):
    policy = run_copy.parent / "cartpole.onnx"
    assert cli(capsys, "export", run_copy, "--out", policy)[0] == 0
    line = one_line_error(capsys, "validate", policy, "--episodes", "1")
    assert "trained on 'dmc:cartpole-swingup', not on a furuta task" in line and "robot-app evaluate" in line
    assert not policy.with_suffix(".validation").exists()
    registry = run_copy.parent / "registry"
    line = one_line_error(capsys, "policies", "add", policy, "--registry", registry)
    assert "not on a furuta task" in line and not registry.exists()  # nor enters a registry


@pytest.mark.parametrize("content", [None, b"not onnx"])
def test_validate_on_a_missing_or_corrupt_file_exits_2_without_a_report(tmp_path, capsys, content):
    policy = tmp_path / "policy.onnx"
    if content is not None:
        policy.write_bytes(content)
    line = one_line_error(capsys, "validate", policy, "--episodes", "1")
    assert str(policy) in line
    assert not policy.with_suffix(".validation").exists()


# ---- the two safety hazards -------------------------------------------------------------------------------------------


def test_estop_signals_only_a_robot_app_agent(capsys):
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        line = one_line_error(capsys, "estop", bystander.pid)
        assert "is not a robot-app agent" in line and "nothing sent" in line
        assert bystander.poll() is None  # SIGUSR1's default action would have killed it
    finally:
        bystander.kill()
        bystander.wait()
    assert "no process" in one_line_error(capsys, "estop", 2**22 + 1)
    # A process whose command line is `... robot_app.cli agent ...` gets the signal.
    agent = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7)); "
                               "print('ready', flush=True); signal.pause()", "robot_app.cli", "agent"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        status, out, _ = cli(capsys, "estop", agent.pid)
        assert status == 0 and f"e-stop sent to agent pid {agent.pid}" in out
        assert agent.wait(timeout=30) == 7
    finally:
        agent.kill()
        agent.wait()


def test_the_agent_refuses_another_robots_calibration(tmp_path, capsys):
    from calibration.encoders import RobotCalibration, load_calibration
    from robot_app.agent.policy_runner import ConstantPolicy
    from robot_app.agent.runtime import Agent
    from robot_app.robot.spec import load_robot_spec

    other = tmp_path / "ur5.yaml"
    other.write_text(Path(ROOT / "calibration" / "furuta.yaml").read_text().replace("robot: furuta", "robot: ur5"))
    line = one_line_error(capsys, "agent", "--port", "/dev/null", "--policy", "zero", "--calibration", other,
                          "--log", tmp_path / "t.sqlite")
    assert f"calibration {other}: robot: 'ur5', but this is robot 'furuta'" in line
    foreign = RobotCalibration(robot="ur5", encoders=load_calibration("furuta").encoders)
    with pytest.raises(ValueError, match="robot 'ur5'"):
        Agent(None, load_robot_spec("furuta"), foreign, ConstantPolicy([0.0]))


# ---- one line that names the file, the field or line, and the value --------------------------------------------------


def _spec_without(field: str, path: Path) -> Path:
    text = (ROOT / "robot_app" / "robot" / "furuta.yaml").read_text()
    path.write_text(re.sub(rf"^{field}:.*\n", "", text, flags=re.M))
    return path


@pytest.mark.parametrize("case", [
    "robots 0", "endpoint", "episodes 0", "registry file", "yaml syntax", "gate typo", "spec missing",
    "deploy no version", "show no version",
])
def test_bad_input_names_what_is_wrong(tmp_path, capsys, case):
    gate_typo = tmp_path / "gate.yaml"
    gate_typo.write_text((ROOT / "sim" / "gate.yaml").read_text().replace("min_success_rate", "min_sucess_rate", 1))
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("episodes: 4\nmin_return_mean: [\n")
    (tmp_path / "afile").write_text("")
    args, expected = {
        "robots 0": (["demo", "--robots", "0"], "--robots: must be at least 1, got 0"),
        "endpoint": (["learner", "--out", tmp_path, "--listen", "notanendpoint", "--insecure-local-dev"],
                     "'notanendpoint' is not a ZeroMQ endpoint"),
        "episodes 0": (["evaluate", tmp_path, "--episodes", "0"], "--episodes: must be at least 1, got 0"),
        "registry file": (["policies", "list", "--registry", tmp_path / "afile"], "afile is a file, not a policy "
                                                                                   "registry folder"),
        "yaml syntax": (["validate", BALANCE, "--gate-config", broken_yaml],
                        f"gate config {broken_yaml}:3:1: not valid YAML"),
        "gate typo": (["validate", BALANCE, "--gate-config", gate_typo],
                      "min_sucess_rate: unknown key (did you mean 'min_success_rate'?)"),
        "spec missing": (["virtual-robot", "--robot", _spec_without("watchdog_timeout_s", tmp_path / "r.yaml")],
                         f"robot spec {tmp_path / 'r.yaml'}: watchdog_timeout_s: missing"),
        "deploy no version": (["policies", "deploy", "--registry", tmp_path], "policies deploy needs a version"),
        "show no version": (["policies", "show", "--registry", tmp_path], "policies show needs a version"),
    }[case]
    if case in ("robots 0", "endpoint", "episodes 0"):  # argparse's own exit
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in args])
        assert exited.value.code == 2
        assert expected in capsys.readouterr().err
        return
    line = one_line_error(capsys, *args)
    assert expected in line
    assert len(line) < 400  # no dump of the whole file


def test_a_missing_spec_field_does_not_dump_the_spec(tmp_path, capsys):
    line = one_line_error(capsys, "virtual-robot", "--robot", _spec_without("name", tmp_path / "r.yaml"))
    assert line.endswith("name: missing") and "{" not in line


@pytest.mark.parametrize("damage, expected", [
    ("replay", "replay.npz is unreadable (ValueError): not the .npz a checkpoint writes"),
    ("foreign pt", "it holds objects other than tensors and plain data"),
    ("truncated pt", "truncated or corrupt"),
    ("config json", "config.json:1:2: not valid JSON"),
])
def test_a_damaged_run_folder_gets_a_line_naming_the_file(run_copy, capsys, damage, expected):
    import pickle

    if damage == "replay":
        (run_copy / "checkpoints" / "replay.npz").write_bytes(b"junk")
    elif damage == "foreign pt":
        (run_copy / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"a": object}))
    elif damage == "truncated pt":
        last = run_copy / "checkpoints" / "last.pt"
        last.write_bytes(last.read_bytes()[:20_000])
    else:
        (run_copy / "config.json").write_text("{bad")
    line = one_line_error(capsys, "train", "--out", run_copy, "--resume", "--steps", "2000")
    assert expected in line and "weights_only" not in line and "allow_pickle" not in line


@pytest.mark.parametrize("command, modules, extra", [
    (["train", "--env", "dmc:cartpole-swingup", "--out", "x"], "torch", "the `learner` extra"),
    (["validate", str(BALANCE)], "mujoco", "the `sim` extra"),
    (["virtual-robot"], "mujoco", "the `sim` extra"),
    (["learner", "--out", "l"], "torch, zmq", "the `learner` extra"),  # not the agent's, which has zmq too
    (["learner", "--out", "l", "--registry", "r", "--signing-key", "k"], "mujoco", "the `sim` extra"),  # the gate
    (["demo", "--out", "d", "--minutes", "0.1"], "torch, mujoco", "the `learner` and `sim` extras"),  # all it lacks
])
def test_a_command_whose_extra_is_not_installed_says_which_to_install(tmp_path, command, modules, extra):
    script = (f"import sys; sys.modules.update(dict.fromkeys({modules.split(', ')!r}))\n"  # as if not installed
              f"from robot_app.cli import main; sys.exit(main({command!r}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert f"needs {modules}, which this install lacks: install {extra}" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())  # it started nothing, wrote nothing


# ---- silent surprises ----------------------------------------------------------------------------------------------


def test_an_agent_without_its_port_writes_nothing(tmp_path, capsys):
    line = one_line_error(capsys, "agent", "--port", tmp_path / "ttyUSB9", "--policy", "zero", "--log",
                          tmp_path / "agent" / "t.sqlite")
    assert f"no serial port at {tmp_path / 'ttyUSB9'}" in line and not (tmp_path / "agent").exists()


def test_reading_a_mistyped_registry_creates_nothing(tmp_path, capsys):
    assert "no policy registry at" in one_line_error(capsys, "policies", "list", "--registry", tmp_path / "regsitry")
    assert not (tmp_path / "regsitry").exists()


def test_adding_the_same_file_twice_says_so(tmp_path, capsys):
    registry = ["--registry", tmp_path / "registry"]
    status, first, _ = cli(capsys, "policies", "add", BALANCE, *registry)
    assert status == 0 and "added as a candidate" in first
    status, second, _ = cli(capsys, "policies", "add", BALANCE, *registry)
    assert status == 0 and f"{first.split()[0]} is already in the registry (candidate); nothing added" in second


def test_counts_read_as_words():
    from robot_app.common.logs import format_counts, shown

    assert format_counts({}) == "none"
    assert format_counts({"speed": 3, "position": 1}) == "speed 3, position 1"
    assert (shown(None, ".1f"), shown(83.44, ".1f")) == ("-", "83.4")


def test_output_into_a_pipe_its_reader_closed_ends_quietly(tmp_path):
    from robot_app.learner.registry import PolicyRegistry

    PolicyRegistry(tmp_path / "registry").close()
    listing = subprocess.Popen([sys.executable, "-m", "robot_app.cli", "policies", "list", "--registry",
                                tmp_path / "registry"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.close()  # `| head -0`: gone before the first line
    _, err = listing.communicate(timeout=60)
    assert listing.returncode == 128 + signal.SIGPIPE and err == b""


def test_a_bare_command_lists_the_commands_and_version_answers(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("train", "agent", "learner", "validate", "policies", "demo", "estop"))
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and re.match(r"robot-app \d+\.\d+", capsys.readouterr().out)


# ---- progress --------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_off_a_terminal_logs_a_line_every_so_often(caplog):
    from robot_app.common.progress import Progress

    clock = FakeClock()
    caplog.set_level(logging.INFO)
    with Progress(100, "training", "step", every_s=10, terminal=False, clock=clock, log=logging.getLogger("t")) as bar:
        for _ in range(95):
            clock.now += 1.0
            bar.update()
    lines = [r.getMessage() for r in caplog.records if r.name == "t"]
    assert len(lines) == 9 + 1  # every 10 s of 95 s, and the last
    assert lines[0].startswith("training 10/100 steps (10%)") and "ETA" in lines[0]
    assert lines[-1].startswith("training 95/100 steps (95%)")


def test_progress_on_a_terminal_routes_log_lines_above_its_bar():
    from robot_app.common.progress import Progress

    root = logging.getLogger()
    with Progress(3, "evaluating", "episode", terminal=True):
        assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)
    assert not any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)


def test_evaluate_and_export_say_what_they_are_doing(tiny_run, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert cli(capsys, "evaluate", tiny_run, "--episodes", "2")[0] == 0
    assert [r.getMessage()[:13] for r in caplog.records if "evaluating" in r.getMessage()] == ["evaluating 1/"
                                                                                               , "evaluating 2/"]
    caplog.clear()
    assert cli(capsys, "export", tiny_run, "--out", tmp_path / "p.onnx")[0] == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "exporting the actor" in said and "checking parity" in said


def test_an_agent_and_a_virtual_robot_run_the_readme_way_and_report_in_words(tmp_path):
    """The README's bring-up, against a lockstep virtual robot given the agent's --robot-id."""
    device = subprocess.Popen([sys.executable, "-m", "robot_app.cli", "virtual-robot", "--lockstep", "--robot-id",
                               "furuta-1", "--status-every", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        port = device.stdout.readline().strip()
        agent = subprocess.run([sys.executable, "-m", "robot_app.cli", "agent", "--port", port, "--robot-id",
                                "furuta-1", "--policy", "zero", "--episodes", "1", "--log", tmp_path / "t.sqlite",
                                "--status-every", "0.1"],
                               capture_output=True, text=True, timeout=120)
        assert agent.returncode == 0, agent.stderr
        stopped = agent.stdout.strip().splitlines()[-1]
        assert "1 episodes" in stopped and "interventions none" in stopped and "{" not in stopped
        assert "interventions=none" in agent.stderr and "link_errors=none" in agent.stderr
        assert "{" not in agent.stderr
    finally:
        device.send_signal(signal.SIGTERM)
        _, err = device.communicate(timeout=30)
    assert "furuta-1 serving on" in err and "(lockstep)" in err
    assert "furuta-1 on " in err and "commands" in err  # its periodic status line
    assert "0 hard-stop arrivals" in err and "[" not in err
    assert "policy: zero" in (tmp_path / "robot-app-agent.yaml").read_text()  # the settings it resolved

    # What it recorded, as a table and as a plot
    exported = subprocess.run([sys.executable, "-m", "robot_app.cli", "episodes", "export", tmp_path / "t.sqlite",
                               "--out", tmp_path / "table"], capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    with open(tmp_path / "table" / "transitions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 400 and {row["policy_version"] for row in rows} == {"zero"}
    assert [int(row["step"]) for row in rows] == list(range(400)) and rows[0]["robot_id"] == "furuta-1"
    assert {"obs.pendulum_cos_sin[1]", "action.motor", "interventions", "obs_time_ns"} <= set(rows[0])
    with open(tmp_path / "table" / "episodes.csv") as f:
        (episode,) = list(csv.DictReader(f))
    assert (episode["steps"], episode["ended"]) == ("400", "time limit")
    assert float(episode["return"]) == pytest.approx(sum(float(row["reward"]) for row in rows), abs=0.01)
    plotted = subprocess.run([sys.executable, "-m", "robot_app.cli", "episodes", "plot", tmp_path / "t.sqlite",
                              "--out", tmp_path / "episode.png"], capture_output=True, text=True, timeout=120)
    assert plotted.returncode == 0, plotted.stderr
    assert "furuta-1 episode 0, 400 steps" in plotted.stdout and (tmp_path / "episode.png").stat().st_size > 0


def test_episodes_export_parquet_and_refuse_what_is_no_log(tmp_path, capsys):
    import pyarrow.parquet as pq

    from robot_app.agent.transition_log import TransitionLog
    from tests.agent.test_transition_log import transition

    with TransitionLog(tmp_path / "t.sqlite") as log:
        for step in range(5):
            log.append(transition(0, step))
    status, out, _ = cli(capsys, "episodes", "export", tmp_path / "t.sqlite", "--out", tmp_path / "x", "--format",
                         "parquet")
    assert status == 0 and "(5 transitions)" in out
    assert pq.read_table(tmp_path / "x" / "transitions.parquet").num_rows == 5
    (tmp_path / "junk.sqlite").write_bytes(b"junk" * 100)
    assert "is not a readable transition log" in one_line_error(capsys, "episodes", "export", tmp_path / "junk.sqlite",
                                                                 "--out", tmp_path / "y")
    assert "no transition log at" in one_line_error(capsys, "episodes", "plot", tmp_path / "none.sqlite")


# ---- config files ----------------------------------------------------------------------------------------------------


def test_settings_come_from_flags_then_environment_then_file(tmp_path, monkeypatch):
    from robot_app.cli import _subcommand, build_parser
    from robot_app.settings import given_on_command_line, resolve

    config = tmp_path / "learner.yaml"
    config.write_text("out: runs/from-file\nseed: 1\nhorizon: 2\nlisten: tcp://10.0.0.2:5555\n")
    monkeypatch.setenv("ROBOT_APP_LEARNER_SEED", "2")
    monkeypatch.setenv("ROBOT_APP_LEARNER_AUTO_DEPLOY", "true")
    argv = ["learner", "--config", str(config), "--horizon", "3"]
    settings = resolve("learner", _subcommand(build_parser(), "learner"),
                       given_on_command_line(build_parser(), argv), str(config))
    assert (settings.out, settings.seed, settings.horizon, settings.listen) == ("runs/from-file", 2, 3,
                                                                               "tcp://10.0.0.2:5555")
    assert settings.auto_deploy is True and settings.warmup == 1000  # the environment; a default
    config.write_text("out: x\nlisten: notanendpoint\nseeed: 4\n")
    with pytest.raises(ValueError, match=r"listen: 'notanendpoint' is not a ZeroMQ endpoint.*seeed: unknown key "
                                         r"\(did you mean 'seed'\?\)"):
        resolve("learner", _subcommand(build_parser(), "learner"), {}, str(config))


def test_a_bad_or_misspelt_variable_is_named(monkeypatch, capsys):
    monkeypatch.setenv("ROBOT_APP_DEMO_ROBOTS", "0")
    assert one_line_error(capsys, "demo").endswith("ROBOT_APP_DEMO_ROBOTS: must be at least 1, got 0")  # once
    monkeypatch.delenv("ROBOT_APP_DEMO_ROBOTS")
    monkeypatch.setenv("ROBOT_APP_AGENT_PORTT", "/dev/ttyUSB0")
    assert one_line_error(capsys, "agent", "--policy", "zero").endswith(
        "ROBOT_APP_AGENT_PORTT: no agent setting of that name (did you mean ROBOT_APP_AGENT_PORT?)")


def test_a_run_records_the_settings_it_resolved_and_that_file_runs_it_again(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "run.yaml"
    config.write_text(f"env: dmc:cartpole-swingup\nsteps: 1000\neval_every: 500\neval_episodes: 1\nseed: 5\n"
                      f"out: {tmp_path / 'a'}\n")
    assert cli(capsys, "train", "--config", config)[0] == 0
    recorded = tmp_path / "a" / "robot-app-train.yaml"
    assert "random_steps: 250" in recorded.read_text() and "horizon: 3" in recorded.read_text()  # defaults resolved
    assert cli(capsys, "train", "--config", recorded, "--out", tmp_path / "b")[0] == 0
    assert (tmp_path / "a" / "eval.jsonl").read_text() == (tmp_path / "b" / "eval.jsonl").read_text()
    # A fed-back file never overwrites the run it came from.
    assert "already holds a run" in one_line_error(capsys, "train", "--config", recorded)
    events = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    events.Reload()
    assert {"eval/return_mean", "train/critic_loss", "train/alpha", "train/updates_per_s"} <= set(
        events.Tags()["scalars"])
    evaluations = [json.loads(line) for line in (tmp_path / "a" / "eval.jsonl").read_text().splitlines()]
    assert [(e.step, e.value) for e in events.Scalars("eval/return_mean")] == [
        (row["env_step"], pytest.approx(row["return_mean"])) for row in evaluations]
