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

SCHEMA_VERSION = 5  # 5: transition chunks carry plan_fallback
MAX_MESSAGE_BYTES = 8 << 20


class Message:
    KIND: ClassVar[str]

    def body(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_body(cls, body: dict) -> "Message":
        return cls(**{f.name: get_field(body, f.name, _SCALARS[f.type]) for f in dataclasses.fields(cls)})


_SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "bytes": bytes, "list": list}


def _check_map(body: dict, field: str, values, what: str) -> None:
    """Every key of body[field] a string and every value of type `values`."""
    for key, value in body[field].items():
        if not isinstance(key, str) or not isinstance(value, values) or isinstance(value, bool):
            raise MessageError("field", f"{field}[{key!r:.40}] is {type(value).__name__}, not {what}")


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
    """What a robot is running and how it is doing: every heartbeat, and at once when its safety state changes.
    estop and fault: the latched reason, "" when none. last_command: the id of the last RobotCommand it applied."""

    KIND: ClassVar[str] = "status"
    robot_id: str
    policy_version: str
    counters: dict  # the link's
    estop: str
    fault: str
    episode: int
    jitter_p99_us: float
    backlog: int  # transitions recorded and not yet acknowledged by a learner
    interventions: dict  # reason -> ticks the supervisor changed a command, since the agent started
    last_command: str


ROBOT_COMMANDS = ("software_stop", "reset")


@dataclasses.dataclass(frozen=True)
class RobotCommand(Message):
    """Learner -> robot, from an operator: latch the agent's e-stop (`software_stop`) or release it (`reset`). The
    robot's watchdog and hardware e-stop stay the safety layer; this is the software one."""

    KIND: ClassVar[str] = "command"
    robot_id: str
    command: str
    command_id: str
    issued_by: str

    @classmethod
    def from_body(cls, body: dict) -> "RobotCommand":
        command = super().from_body(body)
        if command.command not in ROBOT_COMMANDS:
            raise MessageError("field", f"command {command.command!r:.40} is not one of {', '.join(ROBOT_COMMANDS)}")
        return command


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


@dataclasses.dataclass(frozen=True)
class CommandReceipt(Message):
    """Learner -> dashboard: the RobotCommand `command_id` went to `robots`; `detail` says why to none, if so."""

    KIND: ClassVar[str] = "command_receipt"
    command_id: str
    robots: list
    detail: str

    @classmethod
    def from_body(cls, body: dict) -> "CommandReceipt":
        receipt = super().from_body(body)
        if not all(isinstance(robot, str) for robot in receipt.robots):
            raise MessageError("field", "robots holds something other than robot ids")
        return receipt


@dataclasses.dataclass(frozen=True)
class Telemetry(Message):
    """Learner -> dashboard, FLUSH_HZ times a second. Every message holds every robot's latest status and link age,
    so the safety state is never dropped; `chunks`, the rows stored since the last message, packed, per robot;
    `dropped`, rows per robot the learner's bounded buffer let go before they could be sent."""

    KIND: ClassVar[str] = "telemetry"
    seq: int
    link_age_s: dict  # robot -> seconds since the learner last heard it
    statuses: dict  # robot -> the body of its latest Status
    chunks: dict  # robot -> a packed TransitionChunk
    dropped: dict

    @classmethod
    def from_body(cls, body: dict) -> "Telemetry":
        telemetry = super().from_body(body)
        for field, values, what in (("link_age_s", (int, float), "a number"), ("statuses", dict, "a status"),
                                    ("chunks", bytes, "a packed chunk"), ("dropped", int, "an int")):
            _check_map(body, field, values, what)
        telemetry.robot_statuses, telemetry.rows  # validated on receipt, like every other field
        return telemetry

    @functools.cached_property
    def robot_statuses(self) -> dict[str, Status]:
        return {robot: Status.from_body(body) for robot, body in self.statuses.items()}

    @functools.cached_property
    def rows(self) -> dict[str, TransitionChunk]:
        return {robot: TransitionChunk.unpack(packed) for robot, packed in self.chunks.items()}


KINDS: dict[str, type[Message]] = {
    m.KIND: m for m in (Heartbeat, Ack, Credit, PolicyAnnouncement, PolicyRequest, PolicyBlob, Status, TransitionBatch,
                        RobotCommand, CommandReceipt, Telemetry)
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
