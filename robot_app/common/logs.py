"""Logging and printing helpers shared by the robot and the learner side."""

from __future__ import annotations

import time
from typing import Mapping


def utc_now() -> str:
    """The time for records people read (the registry's history, the audit log, tokens): UTC, ISO 8601, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def first_and_doubling(count: int) -> bool:
    """True on the 1st, 2nd, 4th, 8th ... occurrence: how a repeating event is logged without flooding the log."""
    return count > 0 and count & (count - 1) == 0


def format_counts(counts: Mapping[str, int], compact: bool = False) -> str:
    """{'speed': 3, 'position': 1} as 'speed 3, position 1' for people, or as 'speed:3,position:1' (`compact`, for a
    key=value status line); an empty one as 'none'."""
    pair, between = (":", ",") if compact else (" ", ", ")
    return between.join(f"{name}{pair}{count}" for name, count in counts.items()) or "none"


def shown(value: float | None, spec: str = "") -> str:
    """A figure for people: formatted, or '-' where there is none yet."""
    return "-" if value is None else format(value, spec)
