"""The policy registry: the state machine, deploy and rollback, and consistency after kill -9 during writes."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from robot_app.learner.registry import PolicyRegistry, RegistryError
from robot_app.robot.spec import load_robot_spec
from robot_app.robot.task import make_task
from tests.transport.test_transport import export_policy

LAYOUT = make_task(load_robot_spec("furuta")).obs_layout


def candidates(tmp_path, registry, n):
    versions = []
    for i in range(n):
        torch.manual_seed(i)  # different weights, so a different version
        versions.append(registry.add_candidate(export_policy(tmp_path / f"c{i}.onnx", LAYOUT), "learner").version)
    return versions


def validated(registry, version):
    registry.move(version, "validating", "gate", "started")
    return registry.move(version, "validated", "gate", "passed", report={"verdict": "pass"}, signature="ab" * 64)


def test_only_validated_policies_deploy_and_a_rollback_restores_the_previous_one(tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")
    a, b, c = candidates(tmp_path, registry, 3)
    assert registry.add_candidate(tmp_path / "c0.onnx", "learner").state == "candidate"  # the same weights: no-op
    with pytest.raises(RegistryError, match="is candidate: only a validated policy can be deployed"):
        registry.deploy(a, "operator")
    registry.move(c, "validating", "gate", "started")
    registry.move(c, "rejected", "gate", "2 limit violations", report={"verdict": "reject"})
    with pytest.raises(RegistryError, match="is rejected: only a validated policy"):
        registry.deploy(c, "operator")
    with pytest.raises(RegistryError, match="it can move to nothing"):
        registry.move(c, "validating", "gate", "again")
    assert validated(registry, a).report == {"verdict": "pass"}
    validated(registry, b)
    registry.deploy(a, "operator")
    registry.deploy(b, "operator")
    assert registry.get(a).state == "retired" and registry.deployed().version == b
    assert registry.rollback("operator").version == a
    assert registry.get(b).state == "retired" and [p.version for p in registry.list("deployed")] == [a]
    moves = [(h["from_state"], h["to_state"], h["actor"]) for h in registry.history(a)]
    assert moves == [(None, "candidate", "learner"), ("candidate", "validating", "gate"),
                     ("validating", "validated", "gate"), ("validated", "deployed", "operator"),
                     ("deployed", "retired", "operator"), ("retired", "deployed", "operator")]
    assert registry.history(a)[-1]["reason"] == f"rollback from {b}"
    with pytest.raises(RegistryError, match="no policy 'nope'"):
        registry.get("nope")
    registry.close()


def test_a_rollback_needs_a_previous_deployment(tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")
    (a,) = candidates(tmp_path, registry, 1)
    with pytest.raises(RegistryError, match="nothing is deployed"):
        registry.rollback("operator")
    validated(registry, a)
    registry.deploy(a, "operator")
    with pytest.raises(RegistryError, match="the only policy ever deployed"):
        registry.rollback("operator")
    registry.close()


def test_kill_9_during_writes_leaves_the_registry_consistent_for_readers(tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")
    a, b = candidates(tmp_path, registry, 2)
    validated(registry, a)
    validated(registry, b)
    registry.deploy(a, "operator")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from robot_app.learner.registry import PolicyRegistry
        registry = PolicyRegistry({str(tmp_path / "registry")!r})
        print("ready", flush=True)
        while True:  # deploy and roll back, as fast as it can
            registry.rollback("writer") if registry.deployed().version == {b!r} else registry.deploy({b!r}, "writer")
    """)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    reads = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # a concurrent reader (the dashboard) sees one deployed policy at every read
        assert len(registry.list("deployed")) == 1
        reads += 1
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    registry.close()
    registry = PolicyRegistry(tmp_path / "registry")
    assert registry.store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(registry.list("deployed")) == 1 and reads > 0
    for policy in registry.list():
        assert registry.history(policy.version)[-1]["to_state"] == policy.state  # state and history agree
    assert len(registry.history()) > 10  # the writer did get some moves in
    registry.close()


def test_a_validation_whose_process_is_gone_is_released_and_a_restarted_learner_does_not_gate_a_judged_policy(
        tmp_path):
    from robot_app.learner.service import GatedDeployment

    registry = PolicyRegistry(tmp_path / "registry")
    gone, mine, judged = candidates(tmp_path, registry, 3)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from robot_app.learner.registry import PolicyRegistry
        PolicyRegistry({str(tmp_path / "registry")!r}).start_validation({gone!r}, "learner:gate")
        """)], check=True)
    assert child.returncode == 0 and registry.get(gone).state == "validating"  # its validator died mid-gate
    registry.start_validation(mine, "gate")  # this process, alive: left alone
    registry.start_validation(judged, "gate")
    registry.move(judged, "rejected", "gate", "success rate 0.00 < 0.5")

    deployment = GatedDeployment(registry, server=None, robot="furuta")  # a learner starting on this registry
    assert registry.get(gone).state == "candidate" and registry.get(mine).state == "validating"
    assert "ended without a verdict" in registry.history(gone)[-1]["reason"]
    deployment.offer(Path(registry.get(judged).path))  # a restart exports the same weights again
    assert deployment.waiting is None
    deployment.offer(Path(registry.get(gone).path))
    assert deployment.waiting == gone
    registry.close()


def test_rollback_twice_swaps_back_and_deploy_brings_back_any_retired_version(tmp_path):
    registry = PolicyRegistry(tmp_path / "registry")
    a, b, c = candidates(tmp_path, registry, 3)
    for version in (a, b, c):
        validated(registry, version)
        registry.deploy(version, "operator")
    assert registry.rollback("operator").version == b
    assert registry.rollback("operator").version == c
    assert registry.deploy(a, "operator").state == "deployed"
    registry.close()
