"""Atomic, pickle-free checkpoint files: torch.save on write, torch.load(weights_only=True) on read."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from robot_app.common.files import write_atomic


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not hold what it should."""


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    write_atomic(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of a foreign file's pickle protocol before it refuses it
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        # torch's own messages run to a page of hints; their first sentence says what broke
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        if "weights_only" in str(error):
            why = "it holds objects other than tensors and plain data, so it is not a checkpoint this program wrote"
        else:
            why = f"truncated or corrupt ({type(error).__name__}: {first})"
        raise CheckpointError(f"unreadable checkpoint {path} ({path.stat().st_size} bytes): {why}") from None
    missing = [key for key in required if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return payload
