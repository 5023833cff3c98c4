"""Actions in [-1, 1], as the learner's actor gives them, and in the robot's native units (volts): one affine map."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


class ActionScaler:
    """native = unit * half_range + centre, element by element, for actions bounded by [low, high].

    `as_array` makes `centre` and `half_range`: numpy arrays by default, torch tensors inside an exported policy's
    graph. The map is the same arithmetic on either."""

    def __init__(self, low: Sequence[float], high: Sequence[float], as_array: Callable[[np.ndarray], Any] = np.asarray):
        if len(low) != len(high) or not len(low):
            raise ValueError(f"action bounds {list(low)} and {list(high)} must be one pair per action dimension")
        if not all(math.isfinite(a) and math.isfinite(b) and a < b for a, b in zip(low, high)):
            raise ValueError(f"action bounds {list(low)} .. {list(high)} must be finite with low < high")
        self.low, self.high = tuple(float(v) for v in low), tuple(float(v) for v in high)
        lows, highs = np.array(self.low), np.array(self.high)
        self.centre, self.half_range = as_array((highs + lows) / 2), as_array((highs - lows) / 2)

    def to_native(self, unit):
        """`unit` in [-1, 1] (a caller clips what may lie outside) in native units."""
        return unit * self.half_range + self.centre

    def to_unit(self, native):
        return (native - self.centre) / self.half_range

    def __repr__(self) -> str:
        return f"ActionScaler(low={list(self.low)}, high={list(self.high)})"
