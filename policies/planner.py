"""CEM/MPPI planning over the learned model at action time: sequences scored by the actor's own H-step soft value."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from policies.sac_svg import SACSVG, soft_value_expansion
from robot_app.common.planning import noise_shapes, warm_start


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """horizon: None is the agent's SVG horizon. policy_samples of the samples are pi's rollouts through the model (one
    more is pi's mean); the rest come from the Gaussian. take: the first action of the final "mean", or of the best
    "elite" sequence."""

    horizon: int | None = None
    samples: int = 256
    elites: int = 32
    iterations: int = 4
    policy_samples: int = 24
    temperature: float = 0.5  # softmax weights exp(temperature * (value - best)); 0 weighs the elites alike
    min_std: float = 0.05
    max_std: float = 2.0
    take: str = "mean"

    def __post_init__(self):
        if not 0 < self.elites <= self.samples:
            raise ValueError(f"elites must be in 1..samples ({self.samples}), got {self.elites}")
        if not 0 <= self.policy_samples < self.samples:
            raise ValueError(f"policy_samples must be in 0..samples-1, got {self.policy_samples}")
        if self.iterations < 1 or (self.horizon is not None and self.horizon < 1):
            raise ValueError("iterations and horizon must be at least 1")
        if self.take not in ("mean", "elite"):
            raise ValueError(f"take must be 'mean' or 'elite', got {self.take!r}")
        if not 0 < self.min_std <= self.max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")

    def noise_shapes(self, horizon: int, action_dim: int) -> dict[str, tuple[int, ...]]:
        return noise_shapes(self.samples, self.policy_samples, self.iterations, horizon, action_dim)


class PlanningGraph(nn.Module):
    """One decision as a pure function of fixed shapes, so the robot runs this very graph (exported to ONNX):

        (raw observation, warm-start mean [H, act], the decision's noise) -> (first action in [-1, 1], final mean)

    N sequences of H actions in [-1, 1] are scored by

        sum_{t<H} g^t w_t r(x_t, a_t) + g^H w_H V(x_H),  V(x) = min Q(x, a) - alpha log pi(a|x), a ~ pi(x),
        w_t = prod_{k<t} (1 - d(x_k, a_k)),

    through `soft_value_expansion`, the actor's own objective with no entropy term on the planned steps.

    Hidden state: every sequence starts at the current observation from the dynamics' zero state. That is the state
    the model has at any step it is asked about: it is trained from zero at the start of every replay window, and the
    actor's value expansion starts there too, so no state is carried between decisions.
    """

    def __init__(self, agent: SACSVG, config: PlannerConfig, horizon: int):
        super().__init__()
        self.config, self.horizon, self.gamma = config, horizon, agent.config.gamma
        self.normalizer, self.actor, self.critic = agent.normalizer, agent.actor, agent.critic
        self.dynamics, self.reward_model, self.done_model = agent.dynamics, agent.reward_model, agent.done_model
        self.register_buffer("alpha", agent.alpha.detach().clone())  # the temperature when the planner was made

    def sequence_values(self, x0: torch.Tensor, actions: torch.Tensor, terminal_noise: torch.Tensor) -> torch.Tensor:
        """The objective of each sequence: x0 [N, obs] normalised, actions [H, N, act] -> [N]."""
        rewards, done_probs = [], []
        x, state = x0, self.dynamics.initial_state(x0.shape[0], x0.device)
        for action in actions:
            rewards.append(self.reward_model(x, action))
            done_probs.append(torch.sigmoid(self.done_model(x, action)))
            x, state = self.dynamics.step(x, action, state)
        terminal_action, terminal_log_prob = self.actor.sample(x, terminal_noise)
        log_probs = torch.cat([torch.zeros_like(terminal_log_prob).expand(len(actions), -1, -1),
                               terminal_log_prob[None]])  # entropy counts at the value's state only
        value = soft_value_expansion(torch.stack(rewards), log_probs, torch.stack(done_probs),
                                     self.critic.min_q(x, terminal_action), self.alpha, self.gamma)
        return value.squeeze(-1)

    def policy_sequences(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """pi's rollouts through the model from x0 [1, obs], one per noise column [H, P, act], then one of pi's mean:
        [H, P+1, act]."""
        count = noise.shape[1]
        x = x0.expand(count + 1, -1)
        state = self.dynamics.initial_state(count + 1, x0.device)
        actions = []
        for step_noise in noise:
            sampled, _ = self.actor.sample(x[:count], step_noise)
            action = torch.cat([sampled, self.actor.act_deterministic(x[count:])])
            actions.append(action)
            x, state = self.dynamics.step(x, action, state)
        return torch.stack(actions)

    def forward(self, obs: torch.Tensor, warm_mean: torch.Tensor, policy_noise: torch.Tensor,
                gaussian_noise: torch.Tensor, terminal_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x0 = self.normalizer(obs.reshape(1, -1))
        fixed = self.policy_sequences(x0, policy_noise) if c.policy_samples else None
        mean, std = warm_mean, torch.full_like(warm_mean, c.max_std)
        x = x0.expand(c.samples, -1)
        for iteration in range(c.iterations):
            drawn = (mean[:, None] + std[:, None] * gaussian_noise[iteration]).clamp(-1.0, 1.0)
            actions = drawn if fixed is None else torch.cat([fixed, drawn], dim=1)
            elite_values, elite = self.sequence_values(x, actions, terminal_noise[iteration]).topk(c.elites)
            weights = torch.softmax(c.temperature * (elite_values - elite_values.max()), dim=0)[None, :, None]
            elite_actions = actions[:, elite]  # [H, K, act], the best first
            mean = (weights * elite_actions).sum(dim=1)
            std = (weights * (elite_actions - mean[:, None]).pow(2)).sum(dim=1).sqrt().clamp(c.min_std, c.max_std)
        return (mean[0] if c.take == "mean" else elite_actions[0, 0]), mean


class Planner:
    """The learner's planner: a PlanningGraph over the live agent, its warm start, and its noise. Given a seed (or a
    noise function), the decisions are the same every run; reset() drops the warm start at an episode's start."""

    def __init__(self, agent: SACSVG, config: PlannerConfig = PlannerConfig(), seed: int = 0, noise=None):
        """noise: shape -> standard normal draws (numpy), asked in `PlannerConfig.noise_shapes` order (default: a
        generator of the planner's own). The robot's planner, given the same function, plans the same action."""
        horizon = config.horizon or agent.config.horizon
        if horizon < 1:
            raise ValueError("planning needs a model: the agent's horizon is 0 (SAC); give PlannerConfig.horizon")
        self.agent, self.config, self.horizon = agent, config, horizon
        self.graph = PlanningGraph(agent, config, horizon)
        self.generator = torch.Generator(device=agent.device).manual_seed(seed)
        self.noise = noise
        self.previous_mean: torch.Tensor | None = None

    def reset(self) -> None:
        self.previous_mean = None

    def warm_start(self) -> torch.Tensor:
        return warm_start(self.previous_mean, self.horizon, self.agent.action_dim, torch).to(self.agent.device)

    def _normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.noise is not None:
            return torch.as_tensor(self.noise(shape), dtype=torch.float32, device=self.agent.device)
        return torch.randn(shape, generator=self.generator, device=self.agent.device)

    @torch.no_grad()
    def plan(self, obs: np.ndarray) -> np.ndarray:
        """The action for a raw observation, in [-1, 1]."""
        shapes = self.config.noise_shapes(self.horizon, self.agent.action_dim)
        noise = [self._normal(shape) for shape in shapes.values()]
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.agent.device)
        action, self.previous_mean = self.graph(obs, self.warm_start(), *noise)
        return action.cpu().numpy()
