"""Deadline scheduling for fixed-rate loops: next deadline = previous deadline + period, with jitter and overruns kept."""

from __future__ import annotations

import ctypes
import logging
import os
import time

import numpy as np

log = logging.getLogger(__name__)
_PR_SET_TIMERSLACK = 29
_MCL_CURRENT, _MCL_FUTURE = 1, 2


def tighten_timer_slack(slack_ns: int = 1000) -> bool:
    """Ask Linux to wake sleepers within slack_ns of their deadline (the default slack is 50 µs). False elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, slack_ns, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def request_realtime_priority(priority: int) -> None:
    """Run this process under SCHED_FIFO at `priority` (1-99) with its memory locked. Needs CAP_SYS_NICE/CAP_IPC_LOCK."""
    if not 1 <= priority <= 99:
        raise ValueError(f"realtime priority must be 1..99, got {priority}")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, AttributeError) as error:
        raise OSError(f"cannot switch to SCHED_FIFO priority {priority}: {error}; run with CAP_SYS_NICE "
                      "(e.g. a systemd unit with AmbientCapabilities=CAP_SYS_NICE) or drop --realtime-priority") from None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:  # no page faults in the loop; without the capability, go on
        log.warning("mlockall failed (errno %d); memory stays pageable", ctypes.get_errno())


def pin_to_cpus(cpus: set[int]) -> None:
    """Keep this process on these CPUs (an isolated core is the usual home of a control loop)."""
    available = os.sched_getaffinity(0)
    if not cpus or not cpus <= available:
        raise ValueError(f"cannot pin to CPUs {sorted(cpus)}; this process may use {sorted(available)}")
    os.sched_setaffinity(0, cpus)


class LatencyWindow:
    """The most recent `size` durations (ns) and the all-time maximum, for quantiles without unbounded memory."""

    def __init__(self, size: int = 1 << 17):
        self._values = np.zeros(size, dtype=np.int64)
        self.count = 0
        self.max_ns = 0

    def add(self, ns: int) -> None:
        self._values[self.count % len(self._values)] = ns
        self.count += 1
        self.max_ns = max(self.max_ns, ns)

    def quantiles_us(self, *quantiles: float) -> list[float]:
        recent = self._values[: min(self.count, len(self._values))]
        if not len(recent):
            return [0.0 for _ in quantiles]
        return [float(v) / 1e3 for v in np.quantile(recent, quantiles)]


class DeadlineSchedule:
    """Ticks at start + k * period. It sleeps to within `spin_s` of a deadline and spins the rest.

    A tick that starts after its deadline is late by that much (its jitter). If a tick's work ran past the next
    deadline, that is an overrun; whole periods missed are skipped, so the loop keeps its phase and never bursts.
    """

    def __init__(self, period_s: float, spin_s: float = 150e-6):
        if period_s <= 0:
            raise ValueError(f"period must be positive, got {period_s}")
        self.period_ns = round(period_s * 1e9)
        self.spin_ns = round(spin_s * 1e9)
        self._deadline: int | None = None
        self.jitter = LatencyWindow()  # how late each tick started
        self.work = LatencyWindow()  # how long each tick's work took, from its start to the next wait()
        self._tick_start: int | None = None
        self.overruns = 0
        self.skipped = 0

    def wait(self) -> int:
        """Block until the next deadline; return the tick's start time (monotonic ns)."""
        now = time.monotonic_ns()
        if self._tick_start is not None:
            self.work.add(now - self._tick_start)
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
        self.jitter.add(now - self._deadline)
        self._deadline += self.period_ns
        self._tick_start = now
        return now

    @property
    def ticks(self) -> int:
        return self.jitter.count
