"""The planning artifact: the learner's planner and the robot's plan the same actions from the same inputs and noise."""

import numpy as np
import pytest
import torch

from policies.planner import Planner, PlannerConfig
from policies.world_model import export_world_model
from robot_app.agent.world_planner import WorldModelPlanner, read_planning_artifact
from robot_app.common.artifact import ArtifactError
from tests.policies.test_planner import agent

PARITY = 1e-4  # of the action's half-range, while no two sequences' values tie within float32 round-off


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sac = agent(horizon=2)
    with torch.no_grad():  # statistics of some spread, as after training
        sac.normalizer.mean.copy_(torch.tensor([0.2, -0.1, 0.4]))
        sac.normalizer.var.copy_(torch.tensor([0.5, 2.0, 1.0]))
    config = PlannerConfig(samples=64, elites=8, iterations=3, policy_samples=8)
    path = tmp_path_factory.mktemp("planning") / "planner.onnx"
    metadata = export_world_model(sac, path, env="dmc:test-task", obs_layout=[("state", 3)], action_layout=["a", "b"],
                                  action_low=[-1, -1], action_high=[1, 1], action_repeat=1, training_step=5,
                                  source_run="test", planner=config)
    return sac, config, path, metadata


def shared_noise(seed: int):
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


def test_the_robots_planner_plans_the_learners_actions_from_the_same_noise(exported):
    sac, config, path, metadata = exported
    learner, robot = Planner(sac, config, noise=shared_noise(3)), WorldModelPlanner(path, noise=shared_noise(3))
    rng = np.random.default_rng(0)
    for step in range(6):  # the warm start carries from decision to decision on both sides
        obs = rng.normal(size=3).astype(np.float32)
        np.testing.assert_allclose(robot.plan(obs), learner.plan(obs), atol=PARITY, err_msg=f"decision {step}")
    np.testing.assert_allclose(robot.previous_mean, learner.previous_mean.numpy(), atol=PARITY)
    assert metadata.kind == "planning" and metadata.planner["horizon"] == 2 and metadata.planner["samples"] == 64


def test_the_artifact_says_it_is_for_planning_and_an_actor_is_refused_as_one(exported):
    _, _, path, _ = exported
    _, metadata = read_planning_artifact(path)
    assert (metadata.kind, metadata.training_step, metadata.action_layout) == ("planning", 5, ["a", "b"])
    actor = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "furuta_balance.onnx"
    with pytest.raises(ArtifactError, match="no 'robot_app.world_model' metadata; is it a planning artifact"):
        read_planning_artifact(actor)


def test_a_seeded_robot_planner_repeats_itself_and_reset_drops_the_warm_start(exported):
    _, _, path, _ = exported
    obs = np.array([0.1, 0.2, 0.3], np.float32)
    first, second = WorldModelPlanner(path, seed=9), WorldModelPlanner(path, seed=9)
    np.testing.assert_array_equal([first.plan(obs) for _ in range(3)], [second.plan(obs) for _ in range(3)])
    first.reset()
    assert first.previous_mean is None and np.all(np.abs(first.plan(obs)) <= 1.0)
