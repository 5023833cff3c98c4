"""CEM-MPC on the robot: a planning artifact plans inside its deadline, or pi's own action goes and is counted."""

import base64
import shutil

import numpy as np
import onnx
import pytest

from calibration.encoders import load_calibration
from robot_app.agent.loading import load_policy
from robot_app.agent.policy_runner import PolicyKind, SampledPolicy
from robot_app.agent.runtime import Agent
from robot_app.agent.transition_log import TransitionRecorder
from robot_app.agent.world_planner import PlanningPolicy, WorldModelPlanner
from robot_app.common.artifact import WORLD_METADATA_KEY, WORLD_POLICY_KEY, ArtifactError
from robot_app.common.signing import generate_signing_keys, load_signing_key, load_trusted_key, sign
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.spec import load_robot_spec
from robot_app.robot.task import make_task
from tests.agent.test_agent import assert_device_saw_only_safe_commands, virtual_robot

SPEC = load_robot_spec("furuta")
TASK = make_task(SPEC)
OBS = np.linspace(-0.5, 0.5, TASK.obs_dim, dtype=np.float32)


def planned(path, deadline_s: float, seed: int = 0) -> PlanningPolicy:
    policy = load_policy(str(path), SPEC, TASK.obs_layout, seed=seed, plan_deadline_s=deadline_s)
    assert isinstance(policy, PlanningPolicy) and policy.kind == PolicyKind.PLANNING
    return policy


def test_in_time_the_action_is_the_planners_in_native_units(furuta_planning_artifact):
    policy, planner = planned(furuta_planning_artifact, 5.0, seed=4), WorldModelPlanner(furuta_planning_artifact, 4)
    low, high = (np.array(bound) for bound in SPEC.command_limits)
    for _ in range(3):  # the warm start carries over on both
        expected = low + (planner.plan(OBS) + 1.0) / 2.0 * (high - low)
        np.testing.assert_allclose(policy(OBS), expected, rtol=1e-6, atol=1e-6)
        assert not policy.fell_back
    assert (policy.decisions, policy.fallbacks) == (3, 0)


def test_a_plan_past_its_deadline_gives_pis_own_action_and_is_counted(furuta_planning_artifact):
    slow = planned(furuta_planning_artifact, 1e-6)  # no plan can be ready in a microsecond
    pi = slow.fallback(OBS)
    for _ in range(4):
        np.testing.assert_array_equal(slow(OBS), pi)
        assert slow.fell_back
    assert (slow.decisions, slow.fallbacks) == (4, 4)
    assert slow.planner.previous_mean is None  # nothing planned: no warm start to shift


def test_the_agent_counts_fallbacks_in_its_status_line_transitions_and_summary_and_still_supervises(
        tmp_path, furuta_planning_artifact):
    policy = planned(furuta_planning_artifact, 1e-6)
    recorder = TransitionRecorder()
    with virtual_robot(tmp_path, "--lockstep") as robot:
        agent = Agent(SerialRobot(robot.port), SPEC, load_calibration("furuta"), policy, recorder, status_every_s=60)
        summary = agent.run(episodes=1)
        audit = robot.stop()
    assert summary.plan_fallbacks == summary.transitions == len(recorder.rows) > 0
    assert all(row.plan_fallback for row in recorder.rows)
    assert "plan_fallbacks=" in agent.status_line("run")
    assert_device_saw_only_safe_commands(audit)  # every action met the supervisor on the way to the wire


def test_a_tampered_planning_artifact_is_refused_by_signature(tmp_path, furuta_planning_artifact):
    public, secret = generate_signing_keys(tmp_path, "gate")
    path = tmp_path / "planner.onnx"
    shutil.copy(furuta_planning_artifact, path)
    (tmp_path / "planner.onnx.sig").write_text(sign(path.read_bytes(), load_signing_key(secret)))
    trusted = load_trusted_key(public)
    assert isinstance(load_policy(str(path), SPEC, TASK.obs_layout, trusted_key=trusted), PlanningPolicy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, somewhere in the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not verify"):
        load_policy(str(path), SPEC, TASK.obs_layout, trusted_key=trusted)


def test_a_planning_artifact_is_not_sampled_as_an_actor(furuta_planning_artifact):
    with pytest.raises(ArtifactError, match="not an actor to sample from"):
        SampledPolicy(planned(furuta_planning_artifact, 1.0))


@pytest.mark.parametrize("change, words", [
    (lambda props: props.pop(WORLD_POLICY_KEY), "without its fallback policy"),
    (lambda props: props.update({WORLD_POLICY_KEY: "not base64 at all!"}), "is not base64"),
    (lambda props: props.update({WORLD_POLICY_KEY: base64.b64encode(b"garbage").decode()}), "not a loadable ONNX"),
    (lambda props: props.update({WORLD_METADATA_KEY: "{"}), "bad 'robot_app.world_model' metadata"),
])
def test_a_malformed_planning_artifact_is_refused_by_name(tmp_path, furuta_planning_artifact, change, words):
    model = onnx.load(str(furuta_planning_artifact))
    props = {p.key: p.value for p in model.metadata_props}
    change(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match=words):
        load_policy(str(path), SPEC, TASK.obs_layout)
