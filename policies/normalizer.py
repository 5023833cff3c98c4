"""Running mean/std observation normalisation, one module applied identically in training, acting and export."""

from __future__ import annotations

import torch
from torch import nn


class RunningNormalizer(nn.Module):
    """Tracks mean and variance with Chan's parallel update; normalises to zero mean, unit std, clipped."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        batch = batch.reshape(-1, self.mean.shape[0]).to(self.mean)
        n = batch.shape[0]
        batch_mean, batch_var = batch.mean(0), batch.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total).to(self.mean)
        m2 = self.var * self.count.to(self.var) + batch_var * n + delta.pow(2) * (self.count * n / total).to(self.var)
        self.var.copy_(m2 / total.to(self.var))
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)
