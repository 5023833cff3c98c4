"""What both trainers share: one SAC-SVG(H) update sampled from replay, the device, and the divergence check."""

from __future__ import annotations

import numpy as np
import torch

from policies.replay import ReplayBuffer
from policies.sac_svg import SACSVG


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sample_and_update(agent: SACSVG, replay: ReplayBuffer, rng: np.random.Generator, update: int,
                      total_updates: int) -> dict[str, torch.Tensor]:
    """One SAC-SVG(H) update from replay: a batch of steps, and of sequences when the model is in use."""
    c = agent.config
    batch = replay.sample(c.batch_size, rng)
    sequences = replay.sample_sequences(c.batch_size, c.sequence_length, rng) if c.uses_model else None
    return agent.update(batch, sequences, update, total_updates, replay.termination_class_weight())


def non_finite(metrics: dict[str, torch.Tensor]) -> list[str]:
    """The names of the update metrics that are NaN or infinite (one host-device sync)."""
    return [name for name, value in metrics.items() if not torch.isfinite(value).all()]
