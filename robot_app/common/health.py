"""Liveness for container healthchecks: a loop's heartbeat file, and the probe that reads it or an HTTP endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path


class Heartbeat:
    """A file a running loop touches (at its status lines); `robot-app health FILE` reads its age. None: no file."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def beat(self) -> None:
        if self.path is not None:
            self.path.touch()


class Unhealthy(Exception):
    pass


def probe(target: str, max_age_s: float, timeout_s: float) -> str:
    """What shows `target` alive: an http(s):// URL that answers 2xx within timeout_s, or a heartbeat file touched
    within max_age_s. Raises Unhealthy saying why not."""
    if target.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(target, timeout=timeout_s) as answer:
                return f"{target} answered {answer.status}"
        except urllib.error.HTTPError as error:
            raise Unhealthy(f"{target} answered {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise Unhealthy(f"{target}: {getattr(error, 'reason', error)}") from None
    try:
        age = time.time() - Path(target).stat().st_mtime
    except FileNotFoundError:
        raise Unhealthy(f"no heartbeat file {target} (not started yet?)") from None
    if age > max_age_s:
        raise Unhealthy(f"{target} last beat {age:.0f} s ago, over {max_age_s:g} s: the loop is stuck or stopped")
    return f"{target} beat {age:.1f} s ago"
