"""The robot-app command end to end: a 2,000-step training smoke run, evaluate, export, and one-line errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_app.agent.policy_runner import OnnxPolicy
from sim.gate import DEFAULT_CONFIG


def robot_app(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "robot_app.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_train_evaluate_export_smoke(tmp_path):
    run = tmp_path / "smoke"
    result = robot_app("train", "--env", "dmc:cartpole-swingup", "--horizon", "3", "--steps", "2000",
                       "--random-steps", "1000", "--eval-every", "1000", "--eval-episodes", "2", "--seed", "0",
                       "--plan-eval", "--out", run)
    assert result.returncode == 0, result.stderr
    assert "evaluation return" in result.stdout
    assert "MUJOCO_GL" not in result.stderr  # absl's line from dm_control
    assert "training 2000/2000 env steps (100%)" in result.stderr  # progress off a terminal
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "config.json").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(row["critic_loss"] == row["critic_loss"] for row in metrics)  # present and not NaN
    assert "dynamics_loss" in metrics[-1]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["env_step"] for e in evals] == [1000, 2000]
    assert all(len(e["plan_returns"]) == 2 and e["plan_return_mean"] >= 0 for e in evals)  # beside the policy's

    result = robot_app("evaluate", run, "--episodes", "2")
    assert result.returncode == 0, result.stderr
    assert "dmc:cartpole-swingup: return" in result.stdout
    result = robot_app("evaluate", run, "--episodes", "1", "--plan", "--samples", "64", "--iterations", "2",
                       "--elites", "8")
    assert result.returncode == 0, result.stderr
    assert "dmc:cartpole-swingup (planned): return" in result.stdout

    onnx_path = tmp_path / "policy.onnx"
    result = robot_app("export", run, "--out", onnx_path)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if "torchvision" in line or "onnx_ir" in line
                or " INFO onnx" in line]  # third-party chatter
    meta = OnnxPolicy(onnx_path).metadata
    assert (meta.env, meta.training_step, meta.horizon, meta.source_run) == ("dmc:cartpole-swingup", 2000, 3, str(run))

    result = robot_app("evaluate", onnx_path, "--episodes", "1")
    assert result.returncode == 0, result.stderr
    result = robot_app("evaluate", onnx_path, "--plan")
    assert result.returncode == 2 and "--plan needs the learned model" in result.stderr

    planning = tmp_path / "planner.onnx"
    result = robot_app("export", run, "--out", planning, "--planning", "--samples", "32", "--iterations", "2",
                       "--elites", "4")
    assert result.returncode == 0, result.stderr
    assert "'samples': 32" in result.stdout and "'horizon': 3" in result.stdout
    from robot_app.agent.world_planner import WorldModelPlanner

    planner = WorldModelPlanner(planning)
    assert planner.plan(np.zeros(5, np.float32)).shape == (1,)  # cartpole: 5 observations, 1 action
    result = robot_app("evaluate", planning, "--episodes", "1")
    assert result.returncode == 0, result.stderr
    assert "dmc:cartpole-swingup (planned): return" in result.stdout  # a planning artifact is evaluated planned
    result = robot_app("export", run, "--out", tmp_path / "x.onnx", "--samples", "32")
    assert result.returncode == 2 and "--samples set the planner: add --planning" in result.stderr

    result = robot_app("plot", run)
    assert result.returncode == 0, result.stderr
    assert [Path(line).name for line in result.stdout.split()] == ["evaluation.png", "progress.png", "losses.png"]
    assert all((run / "plots" / name).stat().st_size > 0 for name in ("evaluation.png", "progress.png", "losses.png"))


def test_plot_draws_a_learners_own_folder(tmp_path):
    raw = Path(__file__).parents[2] / "bench" / "results" / "make_run_issue18_progress.jsonl"
    (tmp_path / "progress.jsonl").write_text("".join(raw.read_text().splitlines(keepends=True)[:40]))
    result = robot_app("plot", tmp_path)  # a learner's --out, not a demo folder around it
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.split()[0]) == tmp_path / "plots" / "learning.png"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--env", "dmc:nope-task", "--out", "{tmp}/r"], "unknown dm_control task 'dmc:nope-task'"),
        (["train", "--env", "dmc:cartpole-swingup", "--steps", "-5", "--out", "{tmp}/r"],
         "argument --steps: must be at least 1, got -5"),
        (["train", "--env", "dmc:cartpole-swingup", "--steps", "ten", "--out", "{tmp}/r"], "invalid int value"),
        (["train", "--out", "{tmp}/r"], "--env is required"),
        (["evaluate", "{tmp}/missing"], "no checkpoint"),
        (["export", "{tmp}/garbage.pt", "--out", "{tmp}/p.onnx"], "unreadable checkpoint"),
        (["evaluate", "{tmp}/garbage.onnx"], "not a loadable ONNX model"),
        (["agent", "--port", "{tmp}/no-such-port", "--policy", "zero", "--log", "{tmp}/t.sqlite"], "no serial port at"),
        (["agent", "--port", "/dev/null", "--policy", "{tmp}/garbage.onnx"], "not a loadable ONNX model"),
        (["agent", "--port", "/dev/null", "--robot", "quadruped", "--policy", "zero"], "unknown robot 'quadruped'"),
        (["virtual-robot", "--rate", "-50"], "argument --rate: must be a number above 0, got -50"),
        (["agent", "--port", "/dev/null", "--policy", "zero", "--rate", "nan"], "must be a number above 0, got nan"),
        (["plot", "{tmp}/nowhere"], "no such folder"),
        (["agent", "--port", "/dev/null", "--policy", "zero", "--cpus", "99"], "cannot pin to CPUs [99]"),
        (["agent", "--port", "/dev/null", "--policy", "zero", "--robot-id", "r", "--learner", "tcp://127.0.0.1:9",
          "--insecure-local-dev"], "needs --trusted-key"),
        (["policies", "deploy", "nope", "--registry", "{tmp}/registry"], "no policy registry at"),
        (["policies", "add", "{tmp}/garbage.onnx", "--registry", "{tmp}/registry"], "not a loadable ONNX model"),
        (["learner", "--out", "{tmp}/l", "--auto-deploy", "--insecure-local-dev"], "need --registry"),
        (["learner", "--out", "{tmp}/l", "--explore-below-bar", "--insecure-local-dev"], "need --registry"),
        (["learner", "--out", "{tmp}/l", "--torch-threads", "0", "--insecure-local-dev"], "at least 1, got 0"),
        (["virtual-robot", "--randomise"], "--randomise needs --lockstep"),
        (["plot", "{tmp}"], "holds no curves"),
        (["plot", "{tmp}/broken"], "broken/eval.jsonl:2: not a JSON row"),
        (["calibrate", "--port", "{tmp}/no-such-port", "--step", "travel"], "needs the encoder directions confirmed"),
        (["calibrate", "--port", "{tmp}/no-such-port", "--calibration", "{tmp}/nope.yaml"], "nope.yaml"),
        (["excite", "--port", "/dev/null", "--calibration", "furuta", "--out", "{tmp}/x.sqlite"],
         "needs the encoder directions confirmed"),
        (["excite", "--port", "/dev/null", "--calibration", "furuta", "--out", "{tmp}/x.sqlite", "--swing-seconds",
          "-1"], "argument --swing-seconds: must be a number of 0 or more, got -1"),
        (["virtual-robot", "--truth", "{{hard_stops: [1, 2]}}"], "low < 0 < high"),
        (["virtual-robot", "--physics", "{tmp}/nope.yaml"], "nope.yaml"),
        (["virtual-robot", "--widen", "2"], "--widen widens a fitted overlay's intervals: it needs --physics"),
        (["validate", "{tmp}/garbage.onnx", "--physics", "{tmp}/garbage.pt"], "garbage.pt"),
        (["policies", "list", "--physics", "{tmp}/x.yaml"], "--physics is for policies validate, not policies list"),
        (["sysid", "{tmp}/nope.sqlite", "--out", "{tmp}/f.yaml"], "not an excitation log"),
    ],
)
def test_bad_input_gets_a_one_line_error_and_nonzero_exit(tmp_path, args, message):
    (tmp_path / "garbage.pt").write_bytes(b"junk")
    (tmp_path / "garbage.onnx").write_bytes(b"junk")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "eval.jsonl").write_text('{"env_step": 1}\n{"env_st')  # cut off mid-row
    result = robot_app(*[a.format(tmp=tmp_path) for a in args], timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_a_policy_goes_from_candidate_through_the_gate_to_deployed(tmp_path):
    fixture = Path(__file__).parents[1] / "fixtures" / "furuta_balance.onnx"
    registry = ["--registry", tmp_path / "registry"]
    assert robot_app("keys", "gate", "--signing", "--dir", tmp_path / "keys").returncode == 0
    added = robot_app("policies", "add", fixture, *registry)
    assert added.returncode == 0, added.stderr
    version = added.stdout.split()[0]
    refused = robot_app("policies", "deploy", version, *registry)
    assert refused.returncode == 2 and "only a validated policy can be deployed" in refused.stderr
    # Seed 7, as tests/sim/test_gate.py, whose first two episodes the fixture balances (it does half of seed 0's 16).
    config = tmp_path / "gate.yaml"
    config.write_text(DEFAULT_CONFIG.read_text().replace("\nseed: 0\n", "\nseed: 7\n"))
    validated = robot_app("policies", "validate", version, "--episodes", "2", "--signing-key",
                          tmp_path / "keys" / "gate.sign_key", "--gate-config", config, *registry)
    assert validated.returncode == 0, validated.stderr
    assert f"{version}: PASSED" in validated.stdout
    # The verdict shows the bars it was judged by, and what a continuous joint's position means.
    assert "task (full gate bars):" in validated.stdout
    assert re.search(r"success \d\.\d\d \(bar 0\.5\)", validated.stdout)
    assert re.search(r"pendulum: max \|position\| [\d.]+ rad \([\d.]+ turns\) \(limit none: continuous\)",
                     validated.stdout)
    assert re.search(r"interventions (none|[a-z_]+ \d+)", validated.stdout) and "{" not in validated.stdout
    assert robot_app("policies", "deploy", version, *registry).returncode == 0
    listing = robot_app("policies", "list", *registry).stdout.splitlines()
    assert listing[0].split() == ["version", "state", "step", "return", "success", "updated", "(UTC)", "source"]
    assert listing[1].split()[:2] == [version, "deployed"] and re.fullmatch(r"\d\.\d\d", listing[1].split()[4])
    rows = json.loads(robot_app("policies", "list", "--json", *registry).stdout)
    assert [(r["version"], r["state"]) for r in rows] == [(version, "deployed")] and rows[0]["success_rate"] >= 0.5
    shown = robot_app("policies", "show", version, *registry).stdout
    assert "validating -> validated" in shown and "validated -> deployed" in shown and "report.md" in shown
    assert re.search(r"^state +deployed$", shown, re.M) and "{" not in shown  # for people, not JSON
    record = json.loads(robot_app("policies", "show", version, "--json", *registry).stdout)
    assert [move["to_state"] for move in record["history"]] == ["candidate", "validating", "validated", "deployed"]
    report = Path(record["report"])
    markdown = (report / "report.md").read_text()
    assert "![returns](returns.png)" in markdown and "![traces](traces.png)" in markdown
    assert "| pendulum |" in markdown and "none: continuous" in markdown and "(at least 0.5" in markdown
    assert (report / "returns.png").stat().st_size > 0 and (report / "traces.png").stat().st_size > 0

    standalone = robot_app("validate", tmp_path / "missing.onnx", "--episodes", "1")
    assert standalone.returncode == 2 and "missing.onnx" in standalone.stderr
    assert not (tmp_path / "missing.validation").exists()
