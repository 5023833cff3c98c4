"""What the learner's planner and the robot's share: the noise a decision draws, in order, and the warm start."""

from __future__ import annotations

import numpy as np


def noise_shapes(samples: int, policy_samples: int, iterations: int, horizon: int,
                 action_dim: int) -> dict[str, tuple[int, ...]]:
    """The standard normal draws one decision takes, in the order it takes them: pi's rollouts (policy_samples of
    them; one more, pi's mean, draws none), the Gaussian's samples each iteration, and the terminal actions."""
    gaussian = samples - (policy_samples + 1 if policy_samples else 0)
    return {"policy_noise": (horizon, policy_samples, action_dim),
            "gaussian_noise": (iterations, horizon, gaussian, action_dim),
            "terminal_noise": (iterations, samples, action_dim)}


def warm_start(previous_mean, horizon: int, action_dim: int, xp=np):
    """The Gaussian's first mean [H, act]: the previous decision's final mean shifted one step (its last step
    repeated); zeros with none. xp: numpy, or torch."""
    if previous_mean is None:
        return xp.zeros((horizon, action_dim), dtype=xp.float32)
    return xp.concatenate([previous_mean[1:], previous_mean[-1:]])
