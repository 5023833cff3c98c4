"""SAC-SVG(H): soft actor-critic whose actor objective expands the value H steps through a learned model (H=0 is SAC)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from policies.networks import RecurrentDynamics, SquashedGaussianActor, StepModel, TwinCritic
from policies.normalizer import RunningNormalizer
from policies.replay import Batch


@dataclasses.dataclass
class SACSVGConfig:
    horizon: int = 3  # H: model steps in the actor's value expansion; 0 is plain SAC
    hidden: tuple[int, ...] = (256, 256)  # actor and critic
    model_hidden: int = 128  # dynamics encoder, GRU and decoder width (128: affordable on a 2-core CPU)
    step_model_hidden: tuple[int, ...] = (128, 128)  # reward and termination heads
    model_sequence_length: int = 0  # 0 means max(H, 1)
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critic
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    model_lr: float = 1e-3
    init_alpha: float = 0.1
    target_entropy_init: float | None = None  # None means -|A|
    target_entropy_final: float | None = None  # None means -|A|
    target_entropy_decay: float = 1.0
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        self.step_model_hidden = tuple(self.step_model_hidden)
        for name in ("horizon", "model_sequence_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "model_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {self.tau}")

    @property
    def sequence_length(self) -> int:
        return self.model_sequence_length or max(self.horizon, 1)

    @property
    def uses_model(self) -> bool:
        return self.horizon > 0


def target_entropy(step: int, max_steps: int, init: float, final: float, decay: float) -> float:
    """t = (1 - step/max_steps) ** decay; target = (init - final) * t + final."""
    t = (1.0 - min(step, max_steps) / max(max_steps, 1)) ** decay
    return (init - final) * t + final


def soft_value_expansion(
    rewards: torch.Tensor,  # [H, B, 1] predicted r_t
    log_probs: torch.Tensor,  # [H+1, B, 1] log pi(a_t | x_t)
    done_probs: torch.Tensor,  # [H, B, 1] P(terminated at step t | not before)
    terminal_q: torch.Tensor,  # [B, 1] min Q(x_H, a_H)
    alpha: torch.Tensor | float,
    gamma: float,
) -> torch.Tensor:
    """sum_{t<H} g^t w_t (r_t - a logp_t) + g^H w_H (Q_H - a logp_H), with w_t = prod_{k<t} (1 - d_k) and w_0 = 1.

    w_t multiplies only the steps *before* t: a termination at step t ends the episode after r_t is collected. The
    product is written out step by step (as cumprod computes it), because ONNX, which the planner is exported to, has
    no cumulative product.
    """
    horizon = rewards.shape[0]
    survival = [torch.ones_like(terminal_q)]
    for not_done in 1.0 - done_probs:
        survival.append(survival[-1] * not_done)
    survival = torch.stack(survival)  # [H+1, B, 1]
    discount = gamma ** torch.arange(horizon + 1, device=terminal_q.device, dtype=terminal_q.dtype)
    step_values = torch.cat([rewards, terminal_q[None]], dim=0) - alpha * log_probs
    return (discount.view(-1, 1, 1) * survival * step_values).sum(dim=0)


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Let gradients flow *through* these modules without computing or accumulating any for their parameters."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class SACSVG(nn.Module):
    """All learned state of one agent, its optimisers, and the update. `update` never syncs host and device."""

    def __init__(self, obs_dim: int, action_dim: int, config: SACSVGConfig, device: torch.device | str = "cpu"):
        super().__init__()
        self.config, self.obs_dim, self.action_dim = config, obs_dim, action_dim
        c = config
        self.normalizer = RunningNormalizer(obs_dim)
        self.actor = SquashedGaussianActor(obs_dim, action_dim, c.hidden, c.log_std_min, c.log_std_max)
        self.critic = TwinCritic(obs_dim, action_dim, c.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.dynamics = RecurrentDynamics(obs_dim, action_dim, c.model_hidden)
        self.reward_model = StepModel(obs_dim, action_dim, c.step_model_hidden)
        self.done_model = StepModel(obs_dim, action_dim, c.step_model_hidden)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(c.init_alpha)))
        self.to(device)
        self.device = torch.device(device)

        def adam(params, lr):
            return torch.optim.Adam(params, lr=lr, fused=True)  # one kernel per step, on CPU and CUDA

        self.actor_optimizer = adam(self.actor.parameters(), c.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), c.critic_lr)
        self.alpha_optimizer = adam([self.log_alpha], c.alpha_lr)
        self.model_optimizer = adam(self.model_parameters(), c.model_lr)
        default_target = -float(action_dim)
        self.entropy_init = default_target if c.target_entropy_init is None else c.target_entropy_init
        self.entropy_final = default_target if c.target_entropy_final is None else c.target_entropy_final

    def model_parameters(self):
        for module in (self.dynamics, self.reward_model, self.done_model):
            yield from module.parameters()

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def target_entropy(self, step: int, max_steps: int) -> float:
        return target_entropy(step, max_steps, self.entropy_init, self.entropy_final, self.config.target_entropy_decay)

    # ----- acting -----
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        x = self.normalizer(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        action = self.actor.act_deterministic(x) if deterministic else self.actor.sample(x)[0]
        return action.cpu().numpy()

    # ----- losses, written out -----
    @torch.no_grad()
    def td_target(self, batch: Batch, alpha: torch.Tensor) -> torch.Tensor:
        """r + gamma (1 - terminated) (min Q'(s', a') - alpha log pi(a'|s')): bootstraps through time limits only."""
        next_obs = self.normalizer(batch.next_obs)
        next_action, next_log_prob = self.actor.sample(next_obs)
        next_value = self.critic_target.min_q(next_obs, next_action) - alpha * next_log_prob
        return batch.reward + self.config.gamma * (1.0 - batch.terminated) * next_value

    def critic_loss(self, batch: Batch, alpha: torch.Tensor) -> torch.Tensor:
        target = self.td_target(batch, alpha)
        q = self.critic(self.normalizer(batch.obs), batch.action)  # [2, B, 1]
        return (q - target).pow(2).mean(dim=(1, 2)).sum()

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-V_H(x_0) for normalised replay states x_0; also returns log pi(a_0|x_0) for the temperature loss."""
        rewards, done_probs, log_probs = [], [], []
        state = self.dynamics.initial_state(obs.shape[0], obs.device)
        x = obs
        with frozen(self.critic, self.dynamics, self.reward_model, self.done_model):
            for _ in range(self.config.horizon):
                action, log_prob = self.actor.sample(x)
                log_probs.append(log_prob)
                rewards.append(self.reward_model(x, action))
                done_probs.append(torch.sigmoid(self.done_model(x, action)))
                x, state = self.dynamics.step(x, action, state)
            action, log_prob = self.actor.sample(x)
            log_probs.append(log_prob)
            terminal_q = self.critic.min_q(x, action)
        empty = obs.new_zeros(0, obs.shape[0], 1)
        value = soft_value_expansion(
            torch.stack(rewards) if rewards else empty,
            torch.stack(log_probs),
            torch.stack(done_probs) if done_probs else empty,
            terminal_q,
            alpha,
            self.config.gamma,
        )
        return -value.mean(), log_probs[0]

    def alpha_loss(self, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
        """Expressed in alpha (CleanRL): alpha * (entropy - target), with the entropy estimate held fixed."""
        return (self.alpha * (-log_prob.detach() - target_entropy)).mean()

    def model_loss(self, sequences: Batch, done_pos_weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Multi-step open-loop MSE of the dynamics, plus reward MSE and class-weighted termination BCE."""
        obs = self.normalizer(sequences.obs)  # [T, B, obs]
        predicted = self.dynamics.rollout(obs[0], sequences.action)
        dynamics_loss = F.mse_loss(predicted, self.normalizer(sequences.next_obs))
        reward_loss = F.mse_loss(self.reward_model(obs, sequences.action), sequences.reward)
        done_loss = F.binary_cross_entropy_with_logits(
            self.done_model(obs, sequences.action), sequences.terminated, pos_weight=done_pos_weight
        )
        return {"dynamics_loss": dynamics_loss, "reward_loss": reward_loss, "done_loss": done_loss}

    # ----- one update -----
    def update(
        self, batch: Batch, sequences: Batch | None, step: int, max_steps: int, done_pos_weight: float = 1.0
    ) -> dict[str, torch.Tensor]:
        metrics: dict[str, torch.Tensor] = {}
        if self.config.uses_model:
            if sequences is None:
                raise ValueError("SAC-SVG(H>0) needs model sequences each update")
            model_losses = self.model_loss(sequences, torch.tensor(done_pos_weight, device=self.device))
            self.model_optimizer.zero_grad(set_to_none=True)
            sum(model_losses.values()).backward()
            self.model_optimizer.step()
            metrics.update(model_losses)

        alpha = self.alpha.detach()
        critic_loss = self.critic_loss(batch, alpha)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        actor_loss, log_prob = self.actor_loss(self.normalizer(batch.obs), alpha)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        entropy_target = self.target_entropy(step, max_steps)
        alpha_loss = self.alpha_loss(log_prob, entropy_target)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()

        with torch.no_grad():
            for target, online in zip(self.critic_target.parameters(), self.critic.parameters()):
                target.lerp_(online, self.config.tau)

        metrics.update(
            critic_loss=critic_loss.detach(),
            actor_loss=actor_loss.detach(),
            alpha_loss=alpha_loss.detach(),
            alpha=alpha,
            entropy=-log_prob.detach().mean(),
        )
        return metrics

    # ----- persistence -----
    def training_state(self) -> dict:
        return {
            "model": self.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "model_optimizer": self.model_optimizer.state_dict(),
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer", "model_optimizer"):
            getattr(self, name).load_state_dict(state[name])
