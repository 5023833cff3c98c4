"""CEM/MPPI planning over the learned model at action time: sequences scored by the actor's own H-step soft value."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from policies.sac_svg import SACSVG, soft_value_expansion


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


class Planner:
    """Plans one action per call, of fixed tensor shapes: N sequences of H actions in [-1, 1], scored by

        sum_{t<H} g^t w_t r(x_t, a_t) + g^H w_H V(x_H),  V(x) = min Q(x, a) - alpha log pi(a|x), a ~ pi(x),
        w_t = prod_{k<t} (1 - d(x_k, a_k)),

    through `soft_value_expansion`, the actor's own objective with no entropy term on the planned steps.

    Hidden state: every sequence starts at the current observation from the dynamics' zero state. That is the state
    the model has at any step it is asked about: it is trained from zero at the start of every replay window, and the
    actor's value expansion starts there too, so no state is carried between decisions.

    Warm start: the previous decision's final mean, shifted one step (its last step repeated); reset() drops it at an
    episode's start. Given a seed, the decisions are the same every run.
    """

    def __init__(self, agent: SACSVG, config: PlannerConfig = PlannerConfig(), seed: int = 0):
        self.agent, self.config = agent, config
        self.horizon = config.horizon or agent.config.horizon
        if self.horizon < 1:
            raise ValueError("planning needs a model: the agent's horizon is 0 (SAC); give PlannerConfig.horizon")
        self.generator = torch.Generator(device=agent.device).manual_seed(seed)
        self.previous_mean: torch.Tensor | None = None  # [H, action_dim]

    def reset(self) -> None:
        self.previous_mean = None

    def warm_start(self) -> torch.Tensor:
        """The Gaussian's first mean [H, act]: the previous decision's, shifted one step; zeros after a reset."""
        mean = torch.zeros(self.horizon, self.agent.action_dim, device=self.agent.device)
        if self.previous_mean is not None:
            mean[:-1], mean[-1] = self.previous_mean[1:], self.previous_mean[-1]
        return mean

    def _normal(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.agent.device)

    def sequence_values(self, x0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The objective of each sequence: x0 [N, obs] normalised, actions [H, N, act] -> [N]."""
        agent = self.agent
        rewards, done_probs = [], []
        x, state = x0, agent.dynamics.initial_state(x0.shape[0], x0.device)
        for action in actions:
            rewards.append(agent.reward_model(x, action))
            done_probs.append(torch.sigmoid(agent.done_model(x, action)))
            x, state = agent.dynamics.step(x, action, state)
        terminal_action, terminal_log_prob = agent.actor.sample(x, self._normal(x.shape[0], agent.action_dim))
        log_probs = torch.cat([torch.zeros(len(actions), *terminal_log_prob.shape, device=x.device),
                               terminal_log_prob[None]])  # entropy counts at the value's state only
        value = soft_value_expansion(torch.stack(rewards), log_probs, torch.stack(done_probs),
                                     agent.critic.min_q(x, terminal_action), agent.alpha, agent.config.gamma)
        return value.squeeze(-1)

    def policy_sequences(self, x0: torch.Tensor, count: int) -> torch.Tensor:
        """pi's rollouts through the model from x0 [obs]: count sampled ones, then one of pi's mean: [H, count+1, act]."""
        agent = self.agent
        x = x0.expand(count + 1, -1)
        state = agent.dynamics.initial_state(count + 1, x0.device)
        actions = []
        for _ in range(self.horizon):
            sampled, _ = agent.actor.sample(x[:count], self._normal(count, agent.action_dim))
            action = torch.cat([sampled, agent.actor.act_deterministic(x[count:])])
            actions.append(action)
            x, state = agent.dynamics.step(x, action, state)
        return torch.stack(actions)

    @torch.no_grad()
    def plan(self, obs: np.ndarray) -> np.ndarray:
        """The action for a raw observation, in [-1, 1]."""
        c, agent = self.config, self.agent
        x0 = agent.normalizer(torch.as_tensor(obs, dtype=torch.float32, device=agent.device)).reshape(1, -1)
        fixed = self.policy_sequences(x0[0], c.policy_samples) if c.policy_samples else None
        mean = self.warm_start()
        std = torch.full_like(mean, c.max_std)
        gaussian = c.samples - (c.policy_samples + 1 if fixed is not None else 0)
        x = x0.expand(c.samples, -1)
        for _ in range(c.iterations):
            drawn = (mean[:, None] + std[:, None] * self._normal(self.horizon, gaussian, agent.action_dim)).clamp(-1, 1)
            actions = drawn if fixed is None else torch.cat([fixed, drawn], dim=1)
            values = self.sequence_values(x, actions)
            elite_values, elite = values.topk(c.elites)
            weights = torch.softmax(c.temperature * (elite_values - elite_values.max()), dim=0)[None, :, None]
            elite_actions = actions[:, elite]  # [H, K, act]
            mean = (weights * elite_actions).sum(dim=1)
            std = ((weights * (elite_actions - mean[:, None]).pow(2)).sum(dim=1)).sqrt().clamp(c.min_std, c.max_std)
        self.previous_mean = mean
        first = mean[0] if c.take == "mean" else elite_actions[0, 0]
        return first.cpu().numpy()
