"""The actor's distribution, the twin critic and the normaliser."""

import numpy as np
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from policies.networks import SquashedGaussianActor, TwinCritic
from policies.normalizer import RunningNormalizer


def test_log_prob_matches_torch_tanh_transformed_normal():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(obs_dim=4, action_dim=3, hidden=(32,))
    obs = torch.randn(512, 4)
    torch.manual_seed(1)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor.distribution_params(obs)
    torch.manual_seed(1)
    pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform(cache_size=1)])
    reference_action = reference.transforms[0](pre_tanh)  # caches pre_tanh, so log_prob needs no atanh
    torch.testing.assert_close(action, reference_action)
    torch.testing.assert_close(log_prob, reference.log_prob(reference_action).sum(-1, keepdim=True), atol=1e-4, rtol=1e-5)


def test_log_std_is_bounded_and_evaluation_is_tanh_of_mean():
    actor = SquashedGaussianActor(obs_dim=2, action_dim=2, hidden=(8,), log_std_min=-5.0, log_std_max=2.0)
    obs = torch.tensor([[1e6, -1e6], [-1e6, 1e6], [0.0, 0.0]])
    mean, log_std = actor.distribution_params(obs)
    assert torch.all(log_std >= -5.0) and torch.all(log_std <= 2.0)
    torch.testing.assert_close(actor.act_deterministic(obs), torch.tanh(mean))


def test_twin_critic_members_are_independent_networks():
    torch.manual_seed(0)
    critic = TwinCritic(obs_dim=3, action_dim=1, hidden=(16, 16))
    q = critic(torch.randn(5, 3), torch.randn(5, 1))
    assert q.shape == (2, 5, 1)
    assert not torch.allclose(q[0], q[1])
    torch.testing.assert_close(critic.min_q(torch.zeros(5, 3), torch.zeros(5, 1)), critic(torch.zeros(5, 3), torch.zeros(5, 1)).min(0).values)


def test_running_normalizer_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(loc=[3.0, -2.0], scale=[0.5, 4.0], size=(1000, 2)).astype(np.float32)
    norm = RunningNormalizer(2)
    for chunk in np.array_split(data, [1, 2, 10, 300, 301]):
        norm.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-3)
    normalised = norm(torch.from_numpy(data)).numpy()
    np.testing.assert_allclose(normalised.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(normalised.std(0), 1.0, atol=1e-3)
