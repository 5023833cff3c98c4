"""Transport messages: round trips, and every kind of bad input rejected with a reason, never unpickled."""

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_app.common.transition_chunk import COLUMNS
from robot_app.transport.messages import (
    KINDS, MAX_MESSAGE_BYTES, SCHEMA_VERSION, Ack, Heartbeat, MessageError, PolicyAnnouncement, RobotCommand, Status,
    TransitionBatch, TransitionChunk, decode, encode,
)
from tests.agent.test_transition_log import transition
from tests.strategies import ANYTHING, array_records, bodies


def test_scalar_messages_round_trip():
    for message in (Heartbeat("learner", 123), Ack("r1", "outbox-1", 42), PolicyAnnouncement("v3", "ab" * 32, 1 << 20, "cd" * 64),
                    Status("r1", "v3", {"ticks": 5}, "software stop by ops", "", 7, 812.5, 40, {"clamped": 3}, "c-1"),
                    RobotCommand("r1", "software_stop", "c-1", "ops")):
        assert decode(encode(message)) == message


def test_a_command_the_robot_does_not_know_is_refused_by_name():
    data = msgpack.packb({"v": SCHEMA_VERSION, "kind": "command", "body": {
        "robot_id": "r1", "command": "self_destruct", "command_id": "c", "issued_by": "ops"}})
    with pytest.raises(MessageError, match="self_destruct.*software_stop, reset") as error:
        decode(data)
    assert error.value.reason == "field"


def test_a_transition_batch_round_trips_column_by_column():
    rows = [transition(2, i) for i in range(10)]
    packed = TransitionChunk.from_transitions(100, rows).pack()
    batch = decode(encode(TransitionBatch("r1", "outbox-1", 99, packed)))
    assert (batch.robot_id, batch.outbox_id, batch.acked_through, batch.chunk) == ("r1", "outbox-1", 99, packed)
    chunk = batch.rows
    assert len(chunk) == 10 and (chunk.first_seq, chunk.last_seq) == (100, 109)
    np.testing.assert_array_equal(chunk.columns["seq"], np.arange(100, 110))
    np.testing.assert_array_equal(chunk.columns["obs"][3], rows[3].obs)
    assert chunk.columns["truncated"].tolist() == [False] * 9 + [True]
    assert chunk.row_interventions()[:2] == [[], ["clamped"]] and chunk.row_policy_versions() == ["abc"] * 10


def test_chunks_join_and_split_keeping_each_rows_policy_and_interventions():
    rows = [dataclasses.replace(transition(0, i), policy_version=f"v{i // 3}",
                                interventions=(("braking", "clamped") if i == 4 else ("clamped",) * (i % 2)))
            for i in range(8)]
    parts = [TransitionChunk.from_transitions(1, rows[:3]), TransitionChunk.from_transitions(4, rows[3:])]
    assert parts[0].intervention_names == ["clamped"] and parts[1].intervention_names == ["clamped", "braking"]
    merged = TransitionChunk.unpack(TransitionChunk.concat(parts).pack())
    assert merged.columns["seq"].tolist() == list(range(1, 9))
    assert merged.row_policy_versions() == [t.policy_version for t in rows]
    assert [set(i) for i in merged.row_interventions()] == [set(t.interventions) for t in rows]
    tail = merged.from_seq(6)
    assert tail.first_seq == 6 and tail.row_policy_versions() == ["v1", "v2", "v2"]
    with pytest.raises(ValueError, match="consecutive"):
        TransitionChunk.concat([parts[1], parts[0]])


@pytest.mark.parametrize("mutate, reason", [
    (lambda env: env | {"v": SCHEMA_VERSION + 1}, "version"),
    (lambda env: env | {"kind": "pickle"}, "kind"),
    (lambda env: {"v": SCHEMA_VERSION, "kind": "ack"}, "decode"),
    (lambda env: env | {"body": {"robot_id": "r1"}}, "field"),
    (lambda env: env | {"body": {"robot_id": "r1", "outbox_id": "o", "up_to_seq": "7"}}, "field"),
    (lambda env: env | {"body": {"robot_id": "r1", "outbox_id": "o", "up_to_seq": True}}, "field"),
])
def test_bad_envelopes_are_rejected_with_a_reason(mutate, reason):
    envelope = msgpack.unpackb(encode(Ack("r1", "o", 7)))
    with pytest.raises(MessageError) as error:
        decode(msgpack.packb(mutate(envelope), use_bin_type=True))
    assert error.value.reason == reason


def _with_chunk_body(mutate) -> bytes:
    """A valid two-row batch whose packed chunk has been through `mutate` (its map of columns)."""
    chunk = msgpack.unpackb(TransitionChunk.from_transitions(1, [transition(0, 0), transition(0, 1)]).pack())
    mutate(chunk["columns"])
    return encode(TransitionBatch("r1", "o", 0, msgpack.packb(chunk, use_bin_type=True)))


@pytest.mark.parametrize("mutate, message", [
    (lambda cols: cols["obs"].update(dtype="<f8", data=b"\0" * 96), "column obs is <f8"),
    (lambda cols: cols["obs"].update(shape=[2, 7]), "do not fill shape"),
    (lambda cols: cols["reward"].update(dtype="|O"), "dtype '|O'"),
    (lambda cols: cols.pop("reward"), "differ from the schema"),
    (lambda cols: cols["step"].update(shape=[3], data=b"\0" * 24), "column step is <i8\\[3\\]"),
    (lambda cols: cols["seq"].update(data=np.array([1, 3], "<i8").tobytes()), "seq must count up by one"),
    (lambda cols: cols["policy"].update(data=np.array([0, 1], "<i4").tobytes()), "policy indices"),
    (lambda cols: cols["interventions"].update(data=np.array([0, 4], "<i8").tobytes()), "interventions masks"),
])
def test_wrong_dtypes_shapes_and_missing_columns_are_rejected(mutate, message):
    with pytest.raises(MessageError, match=message) as error:
        decode(_with_chunk_body(mutate))
    assert error.value.reason == "field"


def test_a_chunk_that_is_not_msgpack_is_rejected():
    with pytest.raises(MessageError) as error:
        decode(encode(TransitionBatch("r1", "o", 0, b"\xc1 not msgpack")))
    assert error.value.reason == "decode"


def test_oversized_messages_are_rejected_before_decoding():
    with pytest.raises(MessageError) as error:
        decode(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    assert error.value.reason == "oversized"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_never_raises_anything_but_a_message_error(data):
    try:
        decode(data)
    except MessageError:
        pass


@settings(max_examples=400, deadline=None)
@given(version=st.just(SCHEMA_VERSION) | ANYTHING, kind=st.sampled_from(sorted(KINDS)) | ANYTHING, data=st.data())
def test_random_field_types_are_a_message_error_never_another_exception(version, kind, data):
    """{"v":2,"kind":[1],"body":{}}, or a column whose dtype is a list, once raised TypeError in decode."""
    body = data.draw(bodies(kind))
    try:
        decode(msgpack.packb({"v": version, "kind": kind, "body": body}, use_bin_type=True))
    except MessageError:
        pass


VALID_CHUNK = msgpack.unpackb(TransitionChunk.from_transitions(1, [transition(0, 0), transition(0, 1)]).pack())


@settings(max_examples=300, deadline=None)
@given(replaced=st.dictionaries(st.sampled_from(sorted(COLUMNS)), array_records(), max_size=4),
       rest=st.dictionaries(st.sampled_from(["policy_versions", "intervention_names"]), ANYTHING),
       acked_through=st.integers(-2**63, 2**63 - 1))
def test_random_chunks_are_a_message_error_never_another_exception(replaced, rest, acked_through):
    """A valid chunk with some of its columns, vocabularies and its acked_through replaced by anything at all."""
    chunk = msgpack.packb(VALID_CHUNK | {"columns": VALID_CHUNK["columns"] | replaced} | rest, use_bin_type=True)
    try:
        decode(encode(TransitionBatch("r1", "o", acked_through, chunk)))
    except MessageError:
        pass


@pytest.mark.parametrize("column, values, message", [
    ("seq", [-1, 0], "seq -1..0 is outside"), ("seq", [2**62, 2**62 + 1], "seq .* is outside"),
    ("episode", [-5, -5], "episode"), ("step", [0, 2**40], "step"),
])
def test_impossible_seqs_episodes_and_steps_are_rejected(column, values, message):
    with pytest.raises(MessageError, match=message) as error:
        decode(_with_chunk_body(lambda cols: cols[column].update(data=np.array(values, "<i8").tobytes())))
    assert error.value.reason == "field"
    with pytest.raises(MessageError, match="acked_through"):
        decode(encode(TransitionBatch("r1", "o", -1, TransitionChunk.from_transitions(1, [transition(0, 0)]).pack())))
