"""Whole files: written so that a reader, a kill -9 or a power cut finds the old file or the whole new one, never a
part; YAML mappings read with a clear error."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

import yaml

STALE_TEMPORARY_S = 3600.0  # a temporary file untouched this long was left by a writer that died (kill -9, power cut)


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function that writes into the open file) to `path` atomically and durably.

    The new content goes to a temporary file of its own beside `path` (so two writers of one path never share it), is
    fsynced, and replaces `path` in one rename. If writing fails, the temporary file is removed and `path` is untouched.
    Temporary files of `path` that writers killed mid-write left behind are removed once they are an hour old.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the artifact is read by other processes and users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut only once its directory is on disk
    finally:
        os.close(directory)


def _remove_stale_temporaries(path: Path) -> None:
    """By age, not by process id: a writer in another container of a shared volume has a pid this one cannot see.
    A live writer's file is fresh, since its writes touch it."""
    cutoff = time.time() - STALE_TEMPORARY_S
    for name in glob.glob(glob.escape(str(path)) + ".*.tmp"):
        with contextlib.suppress(FileNotFoundError):  # another writer may sweep it first
            if os.stat(name).st_mtime < cutoff:
                os.unlink(name)


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping; a clear ValueError naming `what` and the path otherwise."""
    try:
        data = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} is not a YAML mapping")
    return data
