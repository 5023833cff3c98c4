"""Transition chunks: consecutive transitions column by column, packed in msgpack with raw numpy buffers. The format the
robot's outbox stores, the link sends and the learner's store keeps; strict decoding raises MessageError."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np

MAX_BATCH = 4096
# What no robot can send: seqs count from 1 and never reach 2^48 (a row a millisecond for 8,900 years); episodes stay
# under 2^32 (the learner's replay numbers episodes per robot in that range), and steps under 2^31.
MAX_SEQ, MAX_EPISODE, MAX_STEP = 1 << 48, 1 << 32, 1 << 31
ARRAY_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|b1", "|u1"})


class MessageError(ValueError):
    """A message that must be dropped. `reason` is a stable counter key: oversized, decode, version, kind, field."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def pack_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    if array.dtype.str not in ARRAY_DTYPES:
        raise ValueError(f"dtype {array.dtype.str} is not one the schema carries ({sorted(ARRAY_DTYPES)})")
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


_DTYPES = {name: np.dtype(name) for name in ARRAY_DTYPES}
_ARRAY_KEYS = frozenset({"dtype", "shape", "data"})


def unpack_array(packed: Any, name: str) -> np.ndarray:
    if not isinstance(packed, dict) or packed.keys() != _ARRAY_KEYS:
        raise MessageError("field", f"{name} is not an array record")
    dtype, shape, data = packed["dtype"], packed["shape"], packed["data"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise MessageError("field", f"{name} has dtype {dtype!r:.40}, allowed {sorted(ARRAY_DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= 4 and all(type(d) is int and 0 <= d < 1 << 31 for d in shape)):
        raise MessageError("field", f"{name} has shape {shape!r:.60}")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * _DTYPES[dtype].itemsize:
        raise MessageError("field", f"{name}: {len(data) if isinstance(data, bytes) else type(data).__name__} bytes "
                                    f"do not fill shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)


def get_field(body: dict, name: str, kind: type | tuple[type, ...]):
    if name not in body:
        raise MessageError("field", f"missing field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError("field", f"{name} is {type(value).__name__} {value!r:.40}, expected {kind}")
    return value


# The columns of a transition chunk: dtype and number of dimensions. Row i of every column is one transition.
# A change here is a new wire schema and a new outbox file format: bump transport.messages.SCHEMA_VERSION and
# agent.transition_log.SCHEMA_VERSION with it.
COLUMNS = {
    "seq": ("<i8", 1), "episode": ("<i8", 1), "step": ("<i8", 1),
    "obs": ("<f4", 2), "action": ("<f4", 2), "reward": ("<f4", 1), "next_obs": ("<f4", 2),
    "terminated": ("|b1", 1), "truncated": ("|b1", 1), "policy_action": ("<f4", 2),
    "policy": ("<i4", 1),  # index into the chunk's policy_versions
    "interventions": ("<i8", 1),  # bit i set: intervention_names[i] acted on this row's command
    "obs_time_ns": ("<i8", 1), "command_time_ns": ("<i8", 1), "next_obs_time_ns": ("<i8", 1),
    "device_time_us": ("<i8", 1),
    "sample_seed": ("<i8", 1),  # the seed of the draw that sampled this row's action; -1: the policy records none
    "plan_fallback": ("|b1", 1),  # a planner ran out of time on this row, so pi's own action was sent
}
MAX_INTERVENTION_NAMES = 63


def unpack_map(data: bytes, what: str) -> dict:
    try:
        unpacked = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises several unrelated types for garbage
        raise MessageError("decode", f"{what} is not msgpack: {type(error).__name__}: {error}") from None
    if not isinstance(unpacked, dict):
        raise MessageError("decode", f"{what} is not a map")
    return unpacked


def _names(body: dict, field: str, limit: int) -> list[str]:
    names = get_field(body, field, list)
    if len(names) > limit or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise MessageError("field", f"{field} must be at most {limit} distinct strings")
    return names


@dataclasses.dataclass(frozen=True)
class TransitionChunk:
    """Consecutive transitions of one robot, column by column, numbered by `seq` without gaps.

    The unit of the whole path: the agent's outbox stores it packed, the wire carries those bytes, and the learner's
    store keeps them as they came. A chunk is a handful of buffers, not N records: even the strings (policy versions,
    intervention reasons) are small per-chunk vocabularies that integer columns point into."""

    columns: dict[str, np.ndarray]
    policy_versions: list[str]
    intervention_names: list[str]

    def __len__(self) -> int:
        return len(self.columns["seq"])

    @property
    def first_seq(self) -> int:
        return int(self.columns["seq"][0])

    @property
    def last_seq(self) -> int:
        return int(self.columns["seq"][-1])

    def row_policy_versions(self) -> list[str]:
        return [self.policy_versions[i] for i in self.columns["policy"].tolist()]

    def row_interventions(self) -> list[list[str]]:
        return [[name for bit, name in enumerate(self.intervention_names) if mask >> bit & 1]
                for mask in self.columns["interventions"].tolist()]

    @classmethod
    def from_transitions(cls, first_seq: int, transitions: list) -> "TransitionChunk":
        """Number `transitions` (objects with the COLUMNS' attributes) from first_seq on."""
        if not 0 < len(transitions) <= MAX_BATCH:
            raise ValueError(f"a chunk holds 1 to {MAX_BATCH} transitions, not {len(transitions)}")
        versions = list(dict.fromkeys(t.policy_version for t in transitions))
        names = list(dict.fromkeys(name for t in transitions for name in t.interventions))
        if len(names) > MAX_INTERVENTION_NAMES:
            raise ValueError(f"more than {MAX_INTERVENTION_NAMES} intervention reasons in one chunk")
        columns = {"seq": np.arange(first_seq, first_seq + len(transitions), dtype="<i8"),
                   "policy": np.array([versions.index(t.policy_version) for t in transitions], "<i4"),
                   "interventions": np.array([sum(1 << names.index(n) for n in set(t.interventions))
                                              for t in transitions], "<i8")}
        for name, (dtype, _) in COLUMNS.items():
            if name not in columns:
                columns[name] = np.array([getattr(t, name) for t in transitions], dtype=dtype)
        return cls(columns, versions, names)

    @classmethod
    def concat(cls, chunks: list["TransitionChunk"]) -> "TransitionChunk":
        """Consecutive chunks as one (the link merges small ones into one message)."""
        if any(a.last_seq + 1 != b.first_seq for a, b in zip(chunks, chunks[1:])):
            raise ValueError("only consecutive chunks can be joined")
        versions = list(dict.fromkeys(v for c in chunks for v in c.policy_versions))
        names = list(dict.fromkeys(n for c in chunks for n in c.intervention_names))
        policy, interventions = [], []
        for c in chunks:
            policy.append(np.array([versions.index(v) for v in c.policy_versions], "<i4")[c.columns["policy"]])
            masks = np.zeros(len(c), "<i8")
            for bit, name in enumerate(c.intervention_names):
                masks |= (c.columns["interventions"] >> bit & 1) << names.index(name)
            interventions.append(masks)
        columns = {name: np.concatenate([c.columns[name] for c in chunks]) for name in COLUMNS}
        columns["policy"], columns["interventions"] = np.concatenate(policy), np.concatenate(interventions)
        return cls(columns, versions, names)

    def from_seq(self, seq: int) -> "TransitionChunk":
        """The rows from `seq` on (the learner keeps only the part of a re-sent chunk that it lacks)."""
        start = seq - self.first_seq
        return TransitionChunk({name: column[start:] for name, column in self.columns.items()},
                               self.policy_versions, self.intervention_names)

    def pack(self) -> bytes:
        return msgpack.packb({"columns": {k: pack_array(v) for k, v in self.columns.items()},
                              "policy_versions": self.policy_versions, "intervention_names": self.intervention_names},
                             use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes, check: bool = True) -> "TransitionChunk":
        """check=False only for bytes this process wrote itself (the link merging its own outbox's chunks): the
        learner checks everything it receives."""
        body = unpack_map(data, "chunk")
        if not check:
            return cls({name: np.frombuffer(a["data"], _DTYPES[a["dtype"]]).reshape(a["shape"])
                        for name, a in body["columns"].items()}, body["policy_versions"], body["intervention_names"])
        packed = get_field(body, "columns", dict)
        if set(packed) != set(COLUMNS):
            raise MessageError("field", f"columns {sorted(packed)} differ from the schema's {sorted(COLUMNS)}")
        columns = {name: unpack_array(packed[name], name) for name in COLUMNS}
        rows = len(columns["seq"])
        if not 0 < rows <= MAX_BATCH:
            raise MessageError("field", f"chunk of {rows} rows; 1 to MAX_BATCH={MAX_BATCH} allowed")
        for name, (dtype, ndim) in COLUMNS.items():
            column = columns[name]
            if column.dtype.str != dtype or column.ndim != ndim or len(column) != rows:
                raise MessageError("field", f"column {name} is {column.dtype.str}{list(column.shape)}, expected "
                                            f"{dtype} with {ndim} dims and {rows} rows")
        if columns["obs"].shape != columns["next_obs"].shape or columns["action"].shape != columns["policy_action"].shape:
            raise MessageError("field", "obs/next_obs or action/policy_action widths differ")
        if rows > 1 and not (np.diff(columns["seq"]) == 1).all():
            raise MessageError("field", "seq must count up by one, row by row")
        for name, low, high in (("seq", 1, MAX_SEQ), ("episode", 0, MAX_EPISODE), ("step", 0, MAX_STEP)):
            column = columns[name]
            if column.min() < low or column.max() >= high:
                raise MessageError("field", f"{name} {int(column.min())}..{int(column.max())} is outside "
                                            f"[{low}, {high})")
        versions = _names(body, "policy_versions", rows)
        names = _names(body, "intervention_names", MAX_INTERVENTION_NAMES)
        policy, masks = columns["policy"], columns["interventions"]
        if policy.min() < 0 or policy.max() >= len(versions):
            raise MessageError("field", f"policy indices must point into the {len(versions)} policy_versions")
        if masks.min() < 0 or masks.max() >= 1 << len(names):
            raise MessageError("field", f"interventions masks must use only the {len(names)} intervention_names")
        return cls(columns, versions, names)
