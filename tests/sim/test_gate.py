"""The sim-validation gate: a trained policy passes, bad ones are rejected for the right reasons, reports reproduce,
and a registry candidate comes out validated and signed (or rejected) with its report."""

import concurrent.futures
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from robot_app.agent.loading import load_policy
from robot_app.common.artifact import ArtifactError
from robot_app.common.reports import GateReport, GateSummary
from robot_app.common.signing import generate_signing_keys, load_signing_key, load_trusted_key
from robot_app.learner.registry import PolicyRegistry, RegistryError
from robot_app.robot.spec import load_robot_spec
from robot_app.robot.task import make_task
from sim.gate import core_pool, gate_candidate, load_gate_config, validate, write_report
from tests.transport.test_transport import export_policy

FIXTURES = Path(__file__).parents[1] / "fixtures"
TRAINED = FIXTURES / "furuta_swingup.onnx"  # robot-app train --env furuta:swingup, exported: swings, never balances
BALANCING = FIXTURES / "furuta_balance.onnx"  # the same on furuta:swingup-randomised, 28k steps (sim/gate.yaml)
SPEC = load_robot_spec("furuta")
LAYOUT = make_task(SPEC).obs_layout


def config(episodes=2):
    """Few episodes, so the exploring task bars (two episodes show no success rate); and no verdict on wall-clock
    timing (tick overruns), which a loaded test machine could trip."""
    return load_gate_config(episodes=episodes, workers=2, seed=7, max_tick_overrun_rate=1.0).for_exploring()


def timeless(report):
    """The report without wall-clock figures, which no seed fixes."""
    episodes = [e.model_dump(exclude={"seconds", "policy_p50_us", "policy_p99_us", "tick_overruns"})
                for e in report.episodes]
    metrics = report.metrics.model_dump(exclude={"policy_p50_us_median", "policy_p99_us_max", "tick_overruns"})
    return episodes, metrics, report.reasons


def test_a_trained_policy_passes_and_its_report_reproduces(tmp_path):
    first = validate(TRAINED, config=config(4))
    assert first.passed, first.reasons
    assert first.metrics.wire_violations == first.metrics.joint_violations == 0
    assert len({json.dumps(e.draws) for e in first.episodes}) == 4  # every episode its own robot
    folder = write_report(first, tmp_path / "report")
    assert {p.name for p in folder.iterdir()} == {"report.json", "report.md", "returns.png", "traces.png"}
    assert "PASSED" in (folder / "report.md").read_text()
    stored = GateReport.model_validate_json((folder / "report.json").read_text())  # the file reads back, typed
    untraced = [e.model_copy(update={"trace": None}) for e in first.episodes]
    assert stored == first.model_copy(update={"episodes": untraced})
    assert timeless(validate(TRAINED, config=config(4))) == timeless(first)


def test_a_planning_artifact_is_validated_in_planned_episodes_and_its_fallback_rate_is_judged(
        tmp_path, furuta_planning_artifact):
    report = validate(furuta_planning_artifact, config=config(2))
    assert report.kind == "planning" and report.metrics is not None
    m = report.metrics
    assert m.policy_p50_us_median > 0 and m.policy_p99_us_max >= m.policy_p50_us_median
    steps = sum(e.steps for e in report.episodes)
    assert m.plan_fallback_rate == sum(e.plan_fallbacks for e in report.episodes) / steps
    folder = write_report(report, tmp_path / "report")
    assert "Planned episodes (CEM-MPC" in (folder / "report.md").read_text()
    # The same episodes, had the planner run out of time on a tenth of their steps: over the bar of sim/gate.yaml.
    from sim.gate import judge

    late = [e.model_copy(update={"plan_fallbacks": e.steps // 10}) for e in report.episodes]
    _, reasons = judge(late, load_gate_config())
    assert any("the planner ran out of time on 0.1" in reason for reason in reasons), reasons


def test_the_full_gate_passes_a_balancing_policy_and_rejects_a_swinging_one_on_success():
    full = load_gate_config(workers=2, max_tick_overrun_rate=1.0)  # sim/gate.yaml's own episodes and bars
    balancing = validate(BALANCING, config=full)
    assert balancing.passed, balancing.reasons
    assert balancing.metrics.success_rate >= full.min_success_rate >= 0.5
    swinging = validate(TRAINED, config=full)
    assert not swinging.passed
    assert any(reason.startswith("success rate 0.00 <") for reason in swinging.reasons), swinging.reasons


def test_the_exploring_bars_keep_every_safety_check_and_relax_only_the_task():
    full = load_gate_config()
    exploring = full.for_exploring()
    assert exploring.min_success_rate < full.min_success_rate and exploring.min_return_mean < full.min_return_mean
    task = {"min_return_mean", "min_return_p10", "min_success_rate"}
    assert {k: v for k, v in exploring.model_dump().items() if k not in task} == {
        k: v for k, v in full.model_dump().items() if k not in task}


def _untrained(path):
    torch.manual_seed(0)  # torch seeds itself at random per process, and a rare random policy pumps well enough to pass
    export_policy(path, LAYOUT)


def _saturated(path):
    torch.manual_seed(0)
    export_policy(path, LAYOUT)
    model = onnx.load(path)
    for init in model.graph.initializer:  # every weight x1000: tanh saturates, the command pushes into a stop
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1000.0, init.name))
    onnx.save(model, path)


def _bang_bang(path):
    """A relay on the arm's speed, -5 V * sign(obs[4] - 0.5): it chatters between the limits about 0.5 rad/s."""
    from policies.networks import SquashedGaussianActor

    actor = SquashedGaussianActor(6, 1, (8,))
    first, _, last = actor.trunk
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.zero_()
        first.weight[0, 4], first.weight[1, 4], first.bias[0], first.bias[1] = 1000.0, -1000.0, -500.0, 500.0
        last.weight[0, 0], last.weight[0, 1] = -1000.0, 1000.0  # tanh(1000 (relu(-x) - relu(x))) = -sign(x)
    export_policy(path, LAYOUT, actor)


def _nan(path):
    torch.manual_seed(0)
    export_policy(path, LAYOUT)
    model = onnx.load(path)
    for init in model.graph.initializer:  # NaN weights: every action comes out NaN
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), init.name))
    onnx.save(model, path)


@pytest.mark.parametrize("make, reason", [
    (_untrained, "mean return"),
    (_saturated, "supervisor interventions per step"),
    (_bang_bang, "rough commands"),
    (_nan, "latched a safe stop: {'non_finite_action'"),
    (lambda path: export_policy(path, [("joint_angles", 7)]), "artifact: .* observation layout"),
])
def test_bad_policies_are_rejected_with_the_right_reasons(tmp_path, make, reason):
    path = tmp_path / "policy.onnx"
    make(path)
    report = validate(path, config=config())
    assert not report.passed
    matches = [r for r in report.reasons if re.search(reason, r)]
    assert matches, report.reasons


def test_a_registry_candidate_is_validated_signed_and_the_agent_refuses_it_altered(tmp_path):
    public, secret = generate_signing_keys(tmp_path / "keys", "gate")
    registry = PolicyRegistry(tmp_path / "registry")
    good = registry.add_candidate(TRAINED, "learner").version
    torch.manual_seed(3)
    bad = registry.add_candidate(export_policy(tmp_path / "untrained.onnx", LAYOUT), "learner").version
    assert gate_candidate(registry, good, load_signing_key(secret), config()).passed
    assert not gate_candidate(registry, bad, load_signing_key(secret), config()).passed
    record = registry.get(good)
    assert record.state == "validated" and record.report["passed"] and record.signature
    assert registry.get(bad).state == "rejected" and "mean return" in registry.history(bad)[-1]["reason"]
    with pytest.raises(RegistryError, match="is rejected"):
        registry.deploy(bad, "operator")
    trusted = load_trusted_key(public)
    assert load_policy(record.path, SPEC, LAYOUT, trusted_key=trusted).version == good  # signed: loads
    data = bytearray(Path(record.path).read_bytes())
    data[-1] ^= 1
    Path(record.path).write_bytes(bytes(data))  # one bit changed on disk after signing
    with pytest.raises(ArtifactError, match="does not verify"):
        load_policy(record.path, SPEC, LAYOUT, trusted_key=trusted)
    registry.close()


def test_the_learner_offers_robots_only_what_the_gate_signed_and_the_registry_deployed(tmp_path):
    from robot_app.common.signing import verify
    from robot_app.learner.service import GatedDeployment

    class Server:  # stands in for IngestServer.publish
        published = []

        def publish(self, path, signature):
            self.published.append((Path(path).read_bytes(), signature))

    _, secret = generate_signing_keys(tmp_path / "keys", "gate")
    registry, server = PolicyRegistry(tmp_path / "registry"), Server()
    deployment = GatedDeployment(registry, server, "furuta", load_signing_key(secret), config(), auto_deploy=False,
                                 check_every_s=0.0)
    deployment.offer(TRAINED)
    deployment.poll()  # starts the gate on it
    deployment.gate.join(timeout=120)
    deployment.poll()
    (version,) = [policy.version for policy in registry.list("validated")]
    assert server.published == []  # validated, but nobody deployed it: nothing is offered
    registry.deploy(version, "operator")  # what `robot-app policies deploy` does
    deployment.poll()
    (data, signature), = server.published
    verify(data, signature, load_trusted_key(tmp_path / "keys" / "gate.sign_pub"), "offered")
    assert deployment.summary() == GateSummary(states={"deployed": 1}, deployed=version)
    registry.close()


def test_a_worker_that_dies_breaks_the_pool_instead_of_hanging_the_gate():
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        with core_pool(1) as pool:
            pool.submit(os._exit, 9).result(timeout=60)  # as a segfault or the OOM killer would end it
