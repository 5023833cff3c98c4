"""Liveness for container healthchecks: a loop's heartbeat file, and the probe that reads it or an HTTP endpoint."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class Heartbeat:
    """A file a running loop touches (at its status lines); `robot-app health FILE` reads its age. None: no file."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._failing = False

    def beat(self) -> None:
        """Touch the file. One that cannot be written is logged, once, and never stops the loop: its age shows it."""
        if self.path is None:
            return
        try:
            self.path.touch()
            self._failing = False
        except OSError as error:
            if not self._failing:
                log.warning("cannot touch the heartbeat file %s: %s", self.path, error)
            self._failing = True


class Unhealthy(Exception):
    pass


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a probe never goes through an HTTP_PROXY


def probe(target: str, max_age_s: float, timeout_s: float) -> str:
    """What shows `target` alive: an http(s):// URL that answers 2xx within timeout_s, or a heartbeat file touched
    within max_age_s. Raises Unhealthy saying why not."""
    if target.startswith(("http://", "https://")):
        try:
            with _DIRECT.open(target, timeout=timeout_s) as answer:
                return f"{target} answered {answer.status}"
        except urllib.error.HTTPError as error:
            raise Unhealthy(f"{target} answered {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise Unhealthy(f"{target}: {getattr(error, 'reason', error)}") from None
    try:
        age = time.time() - Path(target).stat().st_mtime
    except FileNotFoundError:
        raise Unhealthy(f"no heartbeat file {target} (not started yet?)") from None
    except OSError as error:
        raise Unhealthy(f"{target}: {error.strerror or error}") from None
    if age > max_age_s:
        raise Unhealthy(f"{target} last beat {age:.0f} s ago, over {max_age_s:g} s: the loop is stuck or stopped")
    return f"{target} beat {age:.1f} s ago"
