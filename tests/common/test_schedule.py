"""Deadline scheduling on a fake clock: ticks stay on the start + k * period grid, and overruns skip, never burst."""

import pytest

from robot_app.common import schedule as schedule_module
from robot_app.common.schedule import DeadlineSchedule


class FakeClock:
    def __init__(self):
        self.now = 1_000_000_000

    def monotonic_ns(self):
        self.now += 1_000  # each read of the clock costs 1 µs, so the spin loop ends
        return self.now

    def sleep(self, seconds):
        self.now += round(seconds * 1e9) + 20_000  # the OS wakes us 20 µs late


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(schedule_module.time, "monotonic_ns", fake.monotonic_ns)
    monkeypatch.setattr(schedule_module.time, "sleep", fake.sleep)
    return fake


def test_ticks_land_on_the_deadline_grid_without_drift(clock):
    schedule = DeadlineSchedule(0.002, spin_s=100e-6)
    first = schedule.wait()
    starts = [schedule.wait() - first for _ in range(1000)]
    for k, start in enumerate(starts, 1):
        assert abs(start - k * 2_000_000) < 5_000  # off by a few clock reads at most, never cumulatively
    assert schedule.overruns == 0 and schedule.ticks == 1001
    assert schedule.jitter.quantiles_us(0.99)[0] < 5


def test_an_overrun_is_counted_and_missed_periods_are_skipped(clock):
    schedule = DeadlineSchedule(0.002)
    first = schedule.wait()
    clock.now += 5_500_000  # the tick's work took 2.75 periods: the deadline at 1 period is skipped, 2 is late
    late_start = schedule.wait()
    assert schedule.overruns == 1 and schedule.skipped == 1
    assert late_start - first >= 5_500_000
    on_grid = schedule.wait()  # back on the grid at 3 periods, not a burst of catch-up ticks
    assert abs(on_grid - first - 3 * 2_000_000) < 5_000
    assert schedule.work.quantiles_us(0.5)[0] > 0
