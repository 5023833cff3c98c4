"""Versioned messages between robots and the learner: a msgpack envelope, raw numpy buffers, strict validation.

Every decode either returns a typed message or raises MessageError with a short `reason` (the key a receiver counts it
under) and a detail naming the field and the value. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import msgpack

from robot_app.common.transition_chunk import MAX_SEQ, MessageError, TransitionChunk, get_field, unpack_map

SCHEMA_VERSION = 3
MAX_MESSAGE_BYTES = 8 << 20


class Message:
    KIND: ClassVar[str]

    def body(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_body(cls, body: dict) -> "Message":
        return cls(**{f.name: get_field(body, f.name, _SCALARS[f.type]) for f in dataclasses.fields(cls)})


_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "bytes": bytes}


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    KIND: ClassVar[str] = "heartbeat"
    sender: str
    time_ns: int


@dataclasses.dataclass(frozen=True)
class Ack(Message):
    """Cumulative: the learner has durably stored every row of `robot_id`'s outbox `outbox_id` up to `up_to_seq`."""

    KIND: ClassVar[str] = "ack"
    robot_id: str
    outbox_id: str
    up_to_seq: int


@dataclasses.dataclass(frozen=True)
class Credit(Message):
    """Lockstep pacing: `robot_id` may record `rows` more transitions past the last one the learner has acked. A robot
    in lockstep starts an episode only while credit is left; a realtime robot ignores credit."""

    KIND: ClassVar[str] = "credit"
    robot_id: str
    rows: int

    @classmethod
    def from_body(cls, body: dict) -> "Credit":
        credit = super().from_body(body)
        if not 0 <= credit.rows < MAX_SEQ:
            raise MessageError("field", f"rows {credit.rows} is outside [0, {MAX_SEQ})")
        return credit


@dataclasses.dataclass(frozen=True)
class PolicyAnnouncement(Message):
    """Latest-only: the newest policy a robot should fetch, verify and load at its next episode boundary."""

    KIND: ClassVar[str] = "policy"
    version: str
    sha256: str
    size: int
    signature: str  # the gate's Ed25519 signature of the artifact's bytes, hex; "" when unsigned


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


@dataclasses.dataclass(frozen=True)
class TransitionBatch(Message):
    """A packed TransitionChunk of `robot_id`'s outbox `outbox_id`. `acked_through`: the robot holds no row at or
    below this seq, because a learner acknowledged them all (so a learner meeting this outbox first starts there)."""

    KIND: ClassVar[str] = "transitions"
    robot_id: str
    outbox_id: str
    acked_through: int
    chunk: bytes

    @functools.cached_property
    def rows(self) -> TransitionChunk:
        return TransitionChunk.unpack(self.chunk)

    @classmethod
    def from_body(cls, body: dict) -> "TransitionBatch":
        batch = super().from_body(body)
        if not 0 <= batch.acked_through < MAX_SEQ:
            raise MessageError("field", f"acked_through {batch.acked_through} is outside [0, {MAX_SEQ})")
        batch.rows  # validated on receipt, like every other field
        return batch


KINDS: dict[str, type[Message]] = {
    m.KIND: m for m in (Heartbeat, Ack, Credit, PolicyAnnouncement, PolicyRequest, PolicyBlob, Status, TransitionBatch)
}


def encode(message: Message) -> bytes:
    data = msgpack.packb({"v": SCHEMA_VERSION, "kind": message.KIND, "body": message.body()}, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{message.KIND} message of {len(data)} bytes exceeds MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> Message:
    """The typed message in `data`, or MessageError: every failure to decode is one, whatever the input."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("oversized", f"{len(data)} bytes > MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    envelope = unpack_map(data, "message")
    if not {"v", "kind", "body"} <= set(envelope):
        raise MessageError("decode", "not an envelope with v, kind and body")
    if type(envelope["v"]) is not int or envelope["v"] != SCHEMA_VERSION:
        raise MessageError("version", f"schema v{envelope['v']!r:.40}; this side speaks v{SCHEMA_VERSION}")
    kind = envelope["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise MessageError("kind", f"unknown kind {kind!r:.40}")
    if not isinstance(envelope["body"], dict):
        raise MessageError("field", "body is not a map")
    try:
        return KINDS[kind].from_body(envelope["body"])
    except MessageError:
        raise
    except Exception as error:  # a check this schema forgot: still a counted rejection, never a dead receiver
        raise MessageError("field", f"{kind} body does not decode: {type(error).__name__}: {error}") from None
