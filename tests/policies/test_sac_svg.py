"""SAC-SVG(H) losses: value expansion weights, H=0 equals SAC, temperature, gradient routing, TD targets, dynamics fit."""

import numpy as np
import pytest
import torch

from policies.networks import RecurrentDynamics
from policies.replay import Batch
from policies.sac_svg import SACSVG, SACSVGConfig, soft_value_expansion, target_entropy


def small_agent(horizon: int, **overrides) -> SACSVG:
    torch.manual_seed(0)
    config = SACSVGConfig(horizon=horizon, hidden=(32, 32), model_hidden=16, step_model_hidden=(16,), **overrides)
    return SACSVG(obs_dim=3, action_dim=2, config=config)


def random_batch(batch=16, obs_dim=3, action_dim=2, terminated=0.0) -> Batch:
    g = torch.Generator().manual_seed(5)
    return Batch(
        obs=torch.randn(batch, obs_dim, generator=g),
        action=torch.rand(batch, action_dim, generator=g) * 2 - 1,
        reward=torch.randn(batch, 1, generator=g),
        next_obs=torch.randn(batch, obs_dim, generator=g),
        terminated=torch.full((batch, 1), terminated),
    )


def test_value_expansion_weights_match_a_hand_computed_three_step_case():
    r = [1.0, 2.0, 3.0]
    logp = [0.1, 0.2, 0.3, 0.4]
    d = [0.5, 0.25, 0.1]
    q, alpha, g = 10.0, 0.5, 0.9
    # w_0 = 1, w_1 = 1 - d0, w_2 = (1 - d0)(1 - d1), w_3 = (1 - d0)(1 - d1)(1 - d2): only *earlier* steps count.
    w = [1.0, 0.5, 0.5 * 0.75, 0.5 * 0.75 * 0.9]
    expected = (
        w[0] * (r[0] - alpha * logp[0])
        + g * w[1] * (r[1] - alpha * logp[1])
        + g**2 * w[2] * (r[2] - alpha * logp[2])
        + g**3 * w[3] * (q - alpha * logp[3])
    )
    got = soft_value_expansion(
        torch.tensor(r).view(3, 1, 1), torch.tensor(logp).view(4, 1, 1), torch.tensor(d).view(3, 1, 1),
        torch.tensor([[q]]), alpha, g,
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_horizon_zero_actor_loss_is_exactly_the_sac_actor_loss():
    agent = small_agent(horizon=0)
    obs, alpha = torch.randn(64, 3), torch.tensor(0.3)
    torch.manual_seed(11)
    loss, _ = agent.actor_loss(obs, alpha)
    torch.manual_seed(11)
    action, log_prob = agent.actor.sample(obs)
    sac_loss = (alpha * log_prob - agent.critic.min_q(obs, action)).mean()
    torch.testing.assert_close(loss, sac_loss)


def test_target_entropy_schedule_values():
    args = dict(max_steps=100, init=-1.0, final=-3.0, decay=2.0)
    assert target_entropy(0, **args) == pytest.approx(-1.0)
    assert target_entropy(50, **args) == pytest.approx((-1.0 - -3.0) * 0.5**2 + -3.0)
    assert target_entropy(100, **args) == pytest.approx(-3.0)
    assert target_entropy(1000, **args) == pytest.approx(-3.0)  # clamps past the end
    agent = small_agent(horizon=0)
    assert agent.target_entropy(0, 10) == agent.target_entropy(10, 10) == -2.0  # default: init = final = -|A|


@pytest.mark.parametrize("entropy_gap, direction", [(+5.0, -1), (-5.0, +1)])
def test_temperature_moves_alpha_the_right_way(entropy_gap, direction):
    agent = small_agent(horizon=0)
    log_prob = torch.zeros(32, 1)  # entropy estimate 0
    before = agent.alpha.item()
    loss = agent.alpha_loss(log_prob, target_entropy=-entropy_gap)  # entropy above target -> alpha falls
    agent.alpha_optimizer.zero_grad()
    loss.backward()
    agent.alpha_optimizer.step()
    assert np.sign(agent.alpha.item() - before) == direction


def test_actor_loss_gives_gradients_to_the_actor_only():
    agent = small_agent(horizon=3)
    loss, _ = agent.actor_loss(agent.normalizer(torch.randn(16, 3)), agent.alpha.detach())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    others = [agent.critic, agent.critic_target, agent.dynamics, agent.reward_model, agent.done_model]
    assert all(p.grad is None for m in others for p in m.parameters())
    assert agent.log_alpha.grad is None
    assert all(p.requires_grad for m in (agent.critic, agent.dynamics) for p in m.parameters())  # unfrozen again


def test_gradients_flow_through_the_model_into_the_actor():
    agent = small_agent(horizon=2)
    obs = agent.normalizer(torch.randn(16, 3))
    torch.manual_seed(0)
    loss_a, _ = agent.actor_loss(obs, agent.alpha.detach())
    with torch.no_grad():  # change only the dynamics: the actor loss must see it
        for p in agent.dynamics.decoder.parameters():
            p.add_(0.5)
    torch.manual_seed(0)
    loss_b, _ = agent.actor_loss(obs, agent.alpha.detach())
    assert not torch.allclose(loss_a, loss_b)


def test_td_target_bootstraps_through_time_limits_but_not_terminations():
    agent = small_agent(horizon=0)
    alpha = torch.tensor(0.2)
    terminal = random_batch(terminated=1.0)
    torch.testing.assert_close(agent.td_target(terminal, alpha), terminal.reward)
    truncated = random_batch(terminated=0.0)  # a time-limit end is stored as not terminated
    torch.manual_seed(3)
    got = agent.td_target(truncated, alpha)
    torch.manual_seed(3)
    next_obs = agent.normalizer(truncated.next_obs)
    a, logp = agent.actor.sample(next_obs)
    expected = truncated.reward + agent.config.gamma * (agent.critic_target.min_q(next_obs, a) - alpha * logp)
    torch.testing.assert_close(got, expected)


def test_update_moves_the_target_critic_by_polyak_averaging():
    agent = small_agent(horizon=2)
    before_target = [p.clone() for p in agent.critic_target.parameters()]
    sequences = Batch(*(torch.stack([getattr(random_batch(), f)] * 2) for f in ("obs", "action", "reward", "next_obs", "terminated")))
    metrics = agent.update(random_batch(), sequences, step=0, max_steps=10)
    assert all(torch.isfinite(v) for v in metrics.values())
    tau = agent.config.tau
    for old, new, online in zip(before_target, agent.critic_target.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(new, old + tau * (online - old))


def test_recurrent_dynamics_fits_a_linear_system_over_three_steps():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    A = torch.tensor([[0.9, 0.2], [-0.2, 0.9]])
    B = torch.tensor([[0.0], [0.5]])

    def rollouts(n):
        x0 = torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32))
        actions = torch.from_numpy(rng.uniform(-1, 1, size=(3, n, 1)).astype(np.float32))
        xs, x = [], x0
        for u in actions:
            x = x @ A.T + u @ B.T
            xs.append(x)
        return x0, actions, torch.stack(xs)

    model = RecurrentDynamics(obs_dim=2, action_dim=1, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1500):
        x0, actions, targets = rollouts(128)
        loss = (model.rollout(x0, actions) - targets).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x0, actions, targets = rollouts(1000)
    with torch.no_grad():
        error = (model.rollout(x0, actions) - targets).pow(2).mean().item()
    assert error < 0.01 * targets.var().item(), f"3-step MSE {error:.4g} vs target variance {targets.var().item():.3g}"


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="horizon"):
        SACSVGConfig(horizon=-1)
    with pytest.raises(ValueError, match="gamma"):
        SACSVGConfig(gamma=1.5)
