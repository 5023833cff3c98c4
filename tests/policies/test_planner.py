"""The CEM/MPPI planner: its objective by hand, its reduction to pi, its warm start, and its determinism."""

import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from policies.planner import Planner, PlannerConfig, PlanningGraph
from policies.sac_svg import SACSVG, SACSVGConfig
from tests.conftest import TINY_AGENT


def agent(horizon: int = 2, obs_dim: int = 3, action_dim: int = 2) -> SACSVG:
    torch.manual_seed(0)
    return SACSVG(obs_dim, action_dim, SACSVGConfig(horizon=horizon, **TINY_AGENT))


class _Stub(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.forward = forward


def test_the_objective_matches_a_hand_computed_two_step_case_with_termination_weights():
    """x' = x + a, r = x, P(done) = 0.25, Q = x + 10, log pi = 0.3, alpha 0.5, gamma 0.9, from x0 = 1."""
    stub = types.SimpleNamespace(
        alpha=torch.tensor(0.5), config=types.SimpleNamespace(gamma=0.9), normalizer=None,
        dynamics=types.SimpleNamespace(initial_state=lambda batch, device: torch.zeros(batch, 1),
                                       step=lambda x, a, state: (x + a, state)),
        reward_model=_Stub(lambda x, a: x.clone()),
        done_model=_Stub(lambda x, a: torch.full_like(x, math.log(0.25 / 0.75))),
        actor=types.SimpleNamespace(sample=lambda x, noise: (torch.zeros_like(x), torch.full_like(x, 0.3))),
        critic=types.SimpleNamespace(min_q=lambda x, a: x + 10.0),
    )
    value = PlanningGraph(stub, PlannerConfig(samples=2, elites=1, policy_samples=0), horizon=2).sequence_values(
        torch.tensor([[1.0]]), torch.tensor([[[0.5]], [[1.0]]]), torch.zeros(1, 1))
    # r0 = 1, d0 = .25, x1 = 1.5; r1 = 1.5, d1 = .25, x2 = 2.5; V(x2) = 12.5 - 0.5 * 0.3
    expected = 1.0 + 0.9 * 0.75 * 1.5 + 0.9 ** 2 * 0.75 * 0.75 * (12.5 - 0.5 * 0.3)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_with_one_iteration_every_sample_from_pi_and_equal_weights_it_is_pi_in_expectation():
    sac = agent()
    obs = np.array([0.3, -0.2, 0.5], np.float32)
    config = PlannerConfig(samples=4096, elites=4096, iterations=1, policy_samples=4095, temperature=0.0)
    planned = Planner(sac, config, seed=1).plan(obs)
    with torch.no_grad():
        x = sac.normalizer(torch.as_tensor(obs)).expand(200_000, -1)
        expected = sac.actor.sample(x)[0].mean(0).numpy()
        spread = sac.actor.sample(x)[0].std(0).numpy()
    np.testing.assert_allclose(planned, expected, atol=float(4 * spread.max() / math.sqrt(4096)))


def test_the_warm_start_is_the_last_mean_shifted_one_step_and_reset_drops_it():
    planner = Planner(agent(horizon=3, action_dim=1), PlannerConfig(samples=16, elites=4, policy_samples=3))
    planner.previous_mean = torch.tensor([[0.1], [0.2], [0.3]])
    torch.testing.assert_close(planner.warm_start(), torch.tensor([[0.2], [0.3], [0.3]]))
    planner.plan(np.zeros(3, np.float32))
    after = planner.previous_mean.clone()
    torch.testing.assert_close(planner.warm_start()[:-1], after[1:])
    planner.reset()
    torch.testing.assert_close(planner.warm_start(), torch.zeros(3, 1))


def test_decisions_are_the_same_given_the_seed_and_stay_in_the_action_box():
    sac, obs = agent(), np.array([0.1, 0.4, -0.3], np.float32)
    config = PlannerConfig(samples=64, elites=8, iterations=3, policy_samples=8)
    runs = [[Planner(sac, config, seed=seed).plan(obs) for _ in range(3)] for seed in (5, 5, 6)]
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))
    assert not np.array_equal(np.array(runs[0]), np.array(runs[2]))
    assert np.all(np.abs(np.array(runs)) <= 1.0)
    best = Planner(sac, PlannerConfig(samples=64, elites=8, policy_samples=8, take="elite"), seed=5).plan(obs)
    assert best.shape == (2,) and np.all(np.abs(best) <= 1.0)


@pytest.mark.parametrize("bad, words", [
    ({"elites": 0}, "elites"), ({"elites": 300}, "elites"), ({"policy_samples": 256}, "policy_samples"),
    ({"iterations": 0}, "iterations"), ({"take": "best"}, "take"), ({"min_std": 3.0}, "min_std"),
])
def test_a_bad_setting_is_refused_by_name(bad, words):
    with pytest.raises(ValueError, match=words):
        PlannerConfig(**bad)


def test_an_agent_without_a_model_horizon_needs_one_given():
    with pytest.raises(ValueError, match="horizon is 0"):
        Planner(agent(horizon=0))
    assert Planner(agent(horizon=0), PlannerConfig(horizon=2)).horizon == 2
