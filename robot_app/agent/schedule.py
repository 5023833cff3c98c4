"""Deadline scheduling for fixed-rate loops: next deadline = previous deadline + period, with jitter and overruns kept."""

from __future__ import annotations

import ctypes
import time

import numpy as np

_PR_SET_TIMERSLACK = 29


def tighten_timer_slack(slack_ns: int = 1000) -> bool:
    """Ask Linux to wake sleepers within slack_ns of their deadline (the default slack is 50 µs). False elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, slack_ns, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class DeadlineSchedule:
    """Ticks at start + k * period. It sleeps to within `spin_s` of a deadline and spins the rest.

    A tick that starts after its deadline is late by that much (its jitter). If a tick's work ran past the next
    deadline, that is an overrun; whole periods missed are skipped, so the loop keeps its phase and never bursts.
    """

    def __init__(self, period_s: float, spin_s: float = 150e-6, window: int = 1 << 17):
        if period_s <= 0:
            raise ValueError(f"period must be positive, got {period_s}")
        self.period_ns = round(period_s * 1e9)
        self.spin_ns = round(spin_s * 1e9)
        self._deadline: int | None = None
        self._jitter = np.zeros(window, dtype=np.int64)  # the most recent `window` ticks' lateness, in ns
        self._work = np.zeros(window, dtype=np.int64)  # and how long each tick's work took, in ns
        self._tick_start: int | None = None
        self.ticks = 0
        self.overruns = 0
        self.skipped = 0
        self.max_jitter_ns = 0

    def wait(self) -> int:
        """Block until the next deadline; return the tick's start time (monotonic ns)."""
        now = time.monotonic_ns()
        if self._tick_start is not None:
            self._work[(self.ticks - 1) % len(self._work)] = now - self._tick_start
        if self._deadline is None:
            self._deadline = now
        elif now > self._deadline:
            self.overruns += 1
            missed = (now - self._deadline) // self.period_ns
            self.skipped += missed
            self._deadline += missed * self.period_ns
        remaining = self._deadline - now
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        while (now := time.monotonic_ns()) < self._deadline:
            pass
        late = now - self._deadline
        self._jitter[self.ticks % len(self._jitter)] = late
        self.max_jitter_ns = max(self.max_jitter_ns, late)
        self.ticks += 1
        self._deadline += self.period_ns
        self._tick_start = now
        return now

    def jitter_us(self, *quantiles: float) -> list[float]:
        """Quantiles (0..1) of tick lateness over the recent window, in microseconds."""
        return self._quantiles_us(self._jitter[: min(self.ticks, len(self._jitter))], quantiles)

    def work_us(self, *quantiles: float) -> list[float]:
        """Quantiles (0..1) of the time each tick's work took, in microseconds."""
        return self._quantiles_us(self._work[: min(max(self.ticks - 1, 0), len(self._work))], quantiles)

    @staticmethod
    def _quantiles_us(recent: np.ndarray, quantiles) -> list[float]:
        if not len(recent):
            return [0.0 for _ in quantiles]
        return [float(v) / 1e3 for v in np.quantile(recent, quantiles)]
