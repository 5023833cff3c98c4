"""TensorBoard event files of a run's scalars (returns, losses, alpha, updates/s), beside its JSON lines."""

from __future__ import annotations

import math
from pathlib import Path


class ScalarLog:
    """Scalars by tag and step into `folder` (`tensorboard --logdir` it). A resumed run passes the step it resumes
    from, so what a crashed run wrote past its last checkpoint is dropped from the curves."""

    def __init__(self, folder: str | Path, resume_from_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=resume_from_step, flush_secs=30)

    def add(self, step: int, values: dict[str, float | None]) -> None:
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()
