"""Whole files: written so that a reader, a kill -9 or a power cut finds the old file or the whole new one, never a
part; YAML and JSON read into typed models, with one-line errors that name the file, the line or field, and the value."""

from __future__ import annotations

import contextlib
import difflib
import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

STALE_TEMPORARY_S = 3600.0  # a temporary file untouched this long was left by a writer that died (kill -9, power cut)


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Write `data` (bytes, or a function that writes into the open file) to `path` atomically and durably, with
    permissions `mode` (0o600 for a secret).

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
        os.chmod(tmp, mode)  # mkstemp makes it 0600; an artifact is read by other processes and users
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
    """A YAML file that must hold a mapping; a one-line ValueError naming `what`, the path and the line otherwise."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_SAFE_LOADER)
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ValueError(f"{what} {path}{where}: not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} is not a YAML mapping (it holds {type(data).__name__})")
    return data


def load_yaml_model(model: type[Model], path: str | os.PathLike, what: str, **overrides) -> Model:
    """A YAML mapping validated into `model`, with `overrides` (those not None) over the file's keys."""
    data = read_yaml_mapping(Path(path), what)
    return validate_model(model, data | {k: v for k, v in overrides.items() if v is not None}, f"{what} {path}")


def load_json_model(model: type[Model], path: str | os.PathLike, what: str) -> Model:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    return validate_model(model, data, f"{what} {path}")


def validate_model(model: type[Model], data, source: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"{source}: {describe_validation(error)}") from None


def describe_validation(error: ValidationError, known=(), names: dict[str, str] | None = None) -> str:
    """Every error of a pydantic validation on one line: the field's path, what is wrong, and the value given. A
    misspelt key is matched to a missing one beside it, or to a `known` name. `names`: a top-level field's name as
    the user wrote it (a flag, a variable)."""
    errors = error.errors()
    missing = {e["loc"]: e for e in errors if e["type"] == "missing"}
    parts = []
    for e in errors:
        loc = [str(part) for part in e["loc"]]
        where = ".".join([(names or {}).get(loc[0], loc[0]), *loc[1:]]) if loc else "value"
        if e["type"] == "missing":
            parts.append(f"{where}: missing")
        elif e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(e["loc"][-1]), [str(loc[-1]) for loc in missing
                                                                  if loc[:-1] == e["loc"][:-1]] + list(known), n=1)
            parts.append(f"{where}: unknown key" + (f" (did you mean {near[0]!r}?)" if near else ""))
        elif isinstance(e.get("input"), dict):  # a model's own check: its message says what is wrong
            parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            message = e["msg"].removeprefix("Value error, ")
            got = "" if message.endswith(f"got {e.get('input')}") else f" (got {_short(e.get('input'))})"
            parts.append(f"{where}: {message}{got}")
    return "; ".join(parts)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
