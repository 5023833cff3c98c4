"""Versioned messages between robots and the learner: a msgpack envelope, raw numpy buffers, strict validation.

Every decode either returns a typed message or raises MessageError with a short `reason` (the key a receiver counts it
under) and a detail naming the field and the value. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 8 << 20
MAX_BATCH = 4096
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


def unpack_array(packed: Any, name: str) -> np.ndarray:
    if not isinstance(packed, dict) or set(packed) != {"dtype", "shape", "data"}:
        raise MessageError("field", f"{name} is not an array record")
    dtype, shape, data = packed["dtype"], packed["shape"], packed["data"]
    if dtype not in ARRAY_DTYPES:
        raise MessageError("field", f"{name} has dtype {dtype!r}, allowed {sorted(ARRAY_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise MessageError("field", f"{name} has shape {shape!r}")
    if not isinstance(data, bytes) or len(data) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise MessageError("field", f"{name}: {len(data) if isinstance(data, bytes) else type(data).__name__} bytes "
                                    f"do not fill shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def _get(body: dict, name: str, kind: type | tuple[type, ...]):
    if name not in body:
        raise MessageError("field", f"missing field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError("field", f"{name} is {type(value).__name__} {value!r:.40}, expected {kind}")
    return value


class Message:
    KIND: ClassVar[str]

    def body(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_body(cls, body: dict) -> "Message":
        return cls(**{f.name: _get(body, f.name, _SCALARS[f.type]) for f in dataclasses.fields(cls)})


_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "bytes": bytes}


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    KIND: ClassVar[str] = "heartbeat"
    sender: str
    time_ns: int


@dataclasses.dataclass(frozen=True)
class Ack(Message):
    """The learner has durably stored the batch of `robot_id`'s outbox rows `from_id`..`up_to_id`."""

    KIND: ClassVar[str] = "ack"
    robot_id: str
    from_id: int
    up_to_id: int


@dataclasses.dataclass(frozen=True)
class PolicyAnnouncement(Message):
    """Latest-only: the newest policy a robot should fetch, verify and load at its next episode boundary."""

    KIND: ClassVar[str] = "policy"
    version: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class PolicyRequest(Message):
    """A robot asks for the artifact of an announced version."""

    KIND: ClassVar[str] = "policy_request"
    robot_id: str
    version: str


@dataclasses.dataclass(frozen=True)
class PolicyBlob(Message):
    """The ONNX artifact itself; the robot checks its sha256 against the announcement before loading it."""

    KIND: ClassVar[str] = "policy_blob"
    version: str
    sha256: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class Status(Message):
    """What a robot is running and how it is doing."""

    KIND: ClassVar[str] = "status"
    robot_id: str
    policy_version: str
    counters: dict


# The columns of a transition batch: dtype and number of dimensions. Row i of every column is one transition.
COLUMNS = {
    "log_id": ("<i8", 1), "episode": ("<i8", 1), "step": ("<i8", 1),
    "obs": ("<f4", 2), "action": ("<f4", 2), "reward": ("<f4", 1), "next_obs": ("<f4", 2),
    "terminated": ("|b1", 1), "truncated": ("|b1", 1), "policy_action": ("<f4", 2),
    "obs_time_ns": ("<i8", 1), "command_time_ns": ("<i8", 1), "next_obs_time_ns": ("<i8", 1),
    "device_time_us": ("<i8", 1),
}


@dataclasses.dataclass(frozen=True)
class TransitionBatch(Message):
    """Rows `log_id` of one robot's outbox, column by column, so a batch is a handful of buffers, not N records."""

    KIND: ClassVar[str] = "transitions"
    robot_id: str
    columns: dict[str, np.ndarray]
    policy_versions: list[str]  # one per row
    interventions: list[list[str]]  # one list per row

    def __len__(self) -> int:
        return len(self.columns["log_id"])

    @classmethod
    def from_rows(cls, robot_id: str, rows: list) -> "TransitionBatch":
        """From (log_id, transition) pairs, as the agent's outbox yields them."""
        if not rows:
            raise ValueError("a transition batch needs at least one row")
        columns = {"log_id": np.array([row_id for row_id, _ in rows], dtype="<i8")}
        for name, (dtype, _) in COLUMNS.items():
            if name != "log_id":
                columns[name] = np.array([getattr(t, name) for _, t in rows], dtype=dtype)
        return cls(robot_id, columns, [t.policy_version for _, t in rows], [list(t.interventions) for _, t in rows])

    def body(self) -> dict:
        return {"robot_id": self.robot_id, "columns": {k: pack_array(v) for k, v in self.columns.items()},
                "policy_versions": self.policy_versions, "interventions": self.interventions}

    @classmethod
    def from_body(cls, body: dict) -> "TransitionBatch":
        robot_id = _get(body, "robot_id", str)
        packed = _get(body, "columns", dict)
        if set(packed) != set(COLUMNS):
            raise MessageError("field", f"columns {sorted(packed)} differ from the schema's {sorted(COLUMNS)}")
        columns = {name: unpack_array(packed[name], name) for name in COLUMNS}
        rows = len(columns["log_id"])
        if rows > MAX_BATCH:
            raise MessageError("field", f"batch of {rows} rows exceeds MAX_BATCH={MAX_BATCH}")
        for name, (dtype, ndim) in COLUMNS.items():
            column = columns[name]
            if column.dtype.str != dtype or column.ndim != ndim or len(column) != rows:
                raise MessageError("field", f"column {name} is {column.dtype.str}{list(column.shape)}, expected "
                                            f"{dtype} with {ndim} dims and {rows} rows")
        if columns["obs"].shape != columns["next_obs"].shape or columns["action"].shape != columns["policy_action"].shape:
            raise MessageError("field", "obs/next_obs or action/policy_action widths differ")
        versions = _get(body, "policy_versions", list)
        interventions = _get(body, "interventions", list)
        if len(versions) != rows or not all(isinstance(v, str) for v in versions):
            raise MessageError("field", "policy_versions must be one string per row")
        if len(interventions) != rows or not all(
            isinstance(row, list) and all(isinstance(r, str) for r in row) for row in interventions
        ):
            raise MessageError("field", "interventions must be one list of strings per row")
        return cls(robot_id, columns, versions, interventions)


KINDS: dict[str, type[Message]] = {
    m.KIND: m for m in (Heartbeat, Ack, PolicyAnnouncement, PolicyRequest, PolicyBlob, Status, TransitionBatch)
}


def encode(message: Message) -> bytes:
    data = msgpack.packb({"v": SCHEMA_VERSION, "kind": message.KIND, "body": message.body()}, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{message.KIND} message of {len(data)} bytes exceeds MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("oversized", f"{len(data)} bytes > MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises several unrelated types for garbage
        raise MessageError("decode", f"not msgpack: {type(error).__name__}: {error}") from None
    if not isinstance(envelope, dict) or not {"v", "kind", "body"} <= set(envelope):
        raise MessageError("decode", "not an envelope with v, kind and body")
    if envelope["v"] != SCHEMA_VERSION:
        raise MessageError("version", f"schema v{envelope['v']!r}; this side speaks v{SCHEMA_VERSION}")
    kind = envelope["kind"]
    if kind not in KINDS:
        raise MessageError("kind", f"unknown kind {kind!r:.40}")
    if not isinstance(envelope["body"], dict):
        raise MessageError("field", "body is not a map")
    return KINDS[kind].from_body(envelope["body"])
