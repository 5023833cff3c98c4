"""Transport messages: round trips, and every kind of bad input rejected with a reason, never unpickled."""

import dataclasses
import sqlite3
import types

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_app.agent.transition_log import Transition, TransitionLog
from robot_app.common.transition_chunk import COLUMNS
from robot_app.transport.messages import (
    KINDS, MAX_MESSAGE_BYTES, SCHEMA_VERSION, Ack, Heartbeat, MessageError, PolicyAnnouncement,
    Status, TransitionBatch, TransitionChunk, decode, encode,
)
from tests.conftest import wait_until
from tests.strategies import ANYTHING, array_records, bodies


def transition(episode, step, obs_dim=6):
    rng = np.random.default_rng(step)
    return Transition(
        robot_id="r1", episode=episode, step=step, obs=rng.standard_normal(obs_dim).astype(np.float32),
        action=np.array([1.5], np.float32), reward=0.25, next_obs=rng.standard_normal(obs_dim).astype(np.float32),
        terminated=False, truncated=step == 9, policy_action=np.array([2.0], np.float32), policy_version="abc",
        interventions=("clamped",) if step % 2 else (), obs_time_ns=10 * step, command_time_ns=10 * step + 1,
        next_obs_time_ns=10 * step + 5, device_time_us=step,
    )


def test_scalar_messages_round_trip():
    for message in (Heartbeat("learner", 123), Ack("r1", "outbox-1", 42), PolicyAnnouncement("v3", "ab" * 32, 1 << 20, "cd" * 64),
                    Status("r1", "v3", {"ticks": 5})):
        assert decode(encode(message)) == message


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


def test_the_outbox_deletes_only_acknowledged_chunks_and_never_reuses_an_episode_or_a_seq(tmp_path):
    log = TransitionLog(tmp_path / "t.sqlite", chunk_rows=2)
    for step in range(5):
        log.append(transition(3, step))
    log.close()
    log = TransitionLog(tmp_path / "t.sqlite")
    outbox_id = log.outbox_id
    assert [(c.first_seq, c.last_seq) for c in log.pending(0, max_rows=10)] == [(1, 2), (3, 4), (5, 5)]
    assert log.acknowledge(3) == 2  # an ack inside a chunk deletes only the chunks wholly below it
    assert (log.acked_through(), log.held()) == (2, 3)
    assert [c.columns["step"].tolist() for _, c in log.read()] == [[2, 3], [4]]
    log.acknowledge(5)
    assert log.read() == [] and log.held() == 0 and log.acked_through() == 5
    assert log.next_episode("r1") == 4 and log.next_episode("r2") == 0
    log.append(transition(4, 0))
    log.close()
    log = TransitionLog(tmp_path / "t.sqlite")
    assert log.outbox_id == outbox_id and [c.first_seq for c in log.pending(0, max_rows=10)] == [6]
    log.close()


def test_an_outbox_of_another_schema_is_refused_not_rewritten(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="schema v1; this version reads and writes v3"):
        TransitionLog(tmp_path / "old.sqlite")


def test_the_outbox_size_is_found_through_the_key_not_by_reading_every_chunk(tmp_path):
    """The agent asks held() every tick between episodes; a table scan there cost 3.5 ms at 3,000 chunks and broke the
    500 Hz loop. Counted in SQLite virtual-machine steps, not in time."""
    log = TransitionLog(tmp_path / "t.sqlite")
    db = log.store.db
    with db:
        db.executemany("INSERT INTO chunks VALUES (?, ?, 'r', ?)",
                       [(10 * i + 1, 10 * i + 10, b"x" * 1500) for i in range(3000)])
    steps = []
    db.set_progress_handler(lambda: steps.append(1), 100)  # called every 100 VM instructions
    assert log.held() == 30_000
    db.set_progress_handler(None, 0)
    assert len(steps) < 10, f"held() ran {len(steps) * 100}+ SQLite instructions: a table scan"
    log.close()


def test_the_outbox_size_is_read_from_one_snapshot_while_acks_delete_chunks(tmp_path):
    """The link's thread deletes acknowledged chunks while the agent asks held(). A delete landing between two separate
    reads once crashed the agent in `make run` (the first chunk found, then no last one)."""
    log = TransitionLog(tmp_path / "t.sqlite", flush_interval_s=0.005)
    for step in range(3):
        log.append(transition(0, step))
    wait_until(lambda: log.acked_through() == 0 and log.held() == 3)

    class AckBetweenStatements:  # the agent's connection, with the link's delete landing after each statement
        def __init__(self, db):
            self.db = db

        def execute(self, *args):
            cursor = self.db.execute(*args)
            link = sqlite3.connect(log.path)  # another connection, as the link's thread has
            with link:
                link.execute("DELETE FROM chunks")
            link.close()
            return cursor

    store = log.store
    log.store = types.SimpleNamespace(db=AckBetweenStatements(store.db))
    assert log.held() == 3  # what the snapshot held when it was read
    log.store = store
    assert log.held() == 0
    log.close()


def test_a_commit_that_fails_for_a_while_is_retried_and_loses_nothing(tmp_path):
    log = TransitionLog(tmp_path / "t.sqlite", flush_interval_s=0.005)
    commit, failures = log._commit, []

    def locked_three_times(batch):
        if len(failures) < 3:
            failures.append(len(batch))
            raise sqlite3.OperationalError("database is locked")
        commit(batch)

    log._commit = locked_three_times
    for step in range(50):  # the control loop keeps appending while the writer retries
        log.append(transition(0, step))
    log.close()
    log = TransitionLog(tmp_path / "t.sqlite")
    rows = [(seq, step) for _, c in log.read() for seq, step in zip(c.columns["seq"], c.columns["step"])]
    log.close()
    assert len(failures) == 3 and rows == [(i + 1, i) for i in range(50)]


def test_a_log_that_cannot_write_gives_up_saying_how_much_and_keeps_what_it_committed(tmp_path):
    log = TransitionLog(tmp_path / "t.sqlite", flush_interval_s=0.005, retry_s=0.1)
    log.append(transition(0, 0))
    wait_until(lambda: log.held() == 1)

    def disk_failed(batch):
        raise sqlite3.OperationalError("disk I/O error")

    log._commit = disk_failed
    log.append(transition(0, 1))
    log.append(transition(0, 2))
    wait_until(lambda: log.error is not None, timeout_s=10)
    with pytest.raises(OSError, match=r"stopped writing \(disk I/O error\); at least 2 transitions were not written"):
        log.append(transition(0, 3))
    log.close()
    log = TransitionLog(tmp_path / "t.sqlite")
    assert [c.columns["step"].tolist() for _, c in log.read()] == [[0]]
    log.close()
