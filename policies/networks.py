"""The networks of SAC-SVG(H): squashed-Gaussian actor, twin critic, recurrent dynamics, reward and termination models."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class SquashedGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))), with the exact tanh Jacobian in its log-prob and a bounded log-std."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], log_std_min=-5.0, log_std_max=2.0):
        super().__init__()
        self.trunk = mlp(obs_dim, hidden, 2 * action_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_log_std = self.trunk(obs).chunk(2, dim=-1)
        # A smooth bound: tanh maps to (-1, 1), then onto [log_std_min, log_std_max].
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_log_std) + 1)
        return mean, log_std

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in (-1, 1) and its log-prob, shape [..., 1]. noise: the standard normal draw, for
        a caller with a generator of its own (the planner); default a fresh one."""
        mean, log_std = self.distribution_params(obs)
        noise = torch.randn_like(mean) if noise is None else noise
        pre_tanh = mean + log_std.exp() * noise
        action = torch.tanh(pre_tanh)
        gaussian_log_prob = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), exact and stable for any u.
        log_det_jacobian = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return action, (gaussian_log_prob - log_det_jacobian).sum(-1, keepdim=True)

    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self.distribution_params(obs)
        return torch.tanh(mean)


class EnsembleLinear(nn.Module):
    """E independent linear layers evaluated in one batched matmul: [E, B, in] -> [E, B, out]."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, member by member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    """Two Q networks evaluated together; returns [2, B, 1]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], ensemble: int = 2):
        super().__init__()
        dims = (obs_dim + action_dim, *hidden, 1)
        self.layers = nn.ModuleList(EnsembleLinear(ensemble, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.ensemble = ensemble

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1).expand(self.ensemble, *obs.shape[:-1], -1)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.forward(obs, action).min(dim=0).values


class RecurrentDynamics(nn.Module):
    """Deterministic recurrent model: h' = GRU(enc(x, a), h), x' = x + dec(h'). Works in normalised observation space."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int):
        super().__init__()
        self.encoder = mlp(obs_dim + action_dim, (hidden,), hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.decoder = mlp(hidden, (hidden,), obs_dim)
        self.hidden_size = hidden

    def initial_state(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_size, device=device)

    def step(self, obs: torch.Tensor, action: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.cell(F.relu(self.encoder(torch.cat([obs, action], dim=-1))), state)
        return obs + self.decoder(state), state

    def rollout(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Open-loop predictions x_1..x_T from x_0 [B, obs] and actions [T, B, act]; returns [T, B, obs]."""
        state = self.initial_state(obs.shape[0], obs.device)
        predictions = []
        for action in actions:
            obs, state = self.step(obs, action, state)
            predictions.append(obs)
        return torch.stack(predictions)


class StepModel(nn.Module):
    """An MLP head on (obs, action), used for the reward r(x, a) and the termination logit of d(x, a)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))
