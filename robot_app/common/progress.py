"""Progress of long work: a tqdm bar on a terminal, with log lines printed above it; elsewhere a log line every so often."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

EVERY_S = float(os.environ.get("ROBOT_APP_PROGRESS_EVERY_S", "30"))  # off a terminal: seconds between progress lines


class Progress:
    """Counts work done towards `total`. On a terminal it draws a tqdm bar and routes logging through tqdm.write while
    the bar is up, so log lines never overprint it; off one (a log file, CI, a container) it logs a line with the
    count, the rate and the ETA every `every_s` seconds, and a last one at the end."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, every_s: float | None = None,
                 log: logging.Logger | None = None, terminal: bool | None = None, clock=time.monotonic,
                 show: bool = True):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every_s = EVERY_S if every_s is None else every_s
        self.log = log or logging.getLogger(desc)
        self.clock = clock
        self.postfix: dict[str, str] = {}
        self._started = self._logged = clock()
        self._logged_n = initial
        self._initial = initial
        self._bar = None
        self._closed = not show  # a Progress not shown only counts
        self._redirect = contextlib.ExitStack()
        if show and (sys.stderr.isatty() if terminal is None else terminal):
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
            self._redirect.enter_context(logging_redirect_tqdm())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self._closed and self.clock() - self._logged >= self.every_s:
            self._log_line()

    def set_postfix(self, **values) -> None:
        self.postfix.update({k: str(v) for k, v in values.items()})
        if self._bar is not None:
            self._bar.set_postfix(self.postfix)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._redirect.close()
        elif self.n != self._logged_n:
            self._log_line()

    def _log_line(self) -> None:
        now = self.clock()
        self._logged, self._logged_n = now, self.n
        done, seconds = self.n - self._initial, now - self._started
        eta = ""
        if done > 0 and self.n < self.total:
            eta = f", ETA {(self.total - self.n) * seconds / done / 60:.1f} min"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        self.log.info("%s %d/%d %ss (%.0f%%), %.1f %s/s%s%s", self.desc, self.n, self.total, self.unit,
                      100 * self.n / max(self.total, 1), done / max(seconds, 1e-9), self.unit, eta, extra)
