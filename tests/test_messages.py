"""Transport messages: round trips, and every kind of bad input rejected with a reason, never unpickled."""

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_app.agent.transition_log import Transition, TransitionLog
from robot_app.transport.messages import (
    MAX_MESSAGE_BYTES, SCHEMA_VERSION, Ack, Heartbeat, MessageError, PolicyAnnouncement, Status, TransitionBatch,
    decode, encode,
)


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
    for message in (Heartbeat("learner", 123), Ack("r1", 40, 42), PolicyAnnouncement("v3", "ab" * 32, 1 << 20),
                    Status("r1", "v3", {"ticks": 5})):
        assert decode(encode(message)) == message


def test_a_transition_batch_round_trips_column_by_column():
    rows = [(100 + i, transition(2, i)) for i in range(10)]
    batch = decode(encode(TransitionBatch.from_rows("r1", rows)))
    assert len(batch) == 10 and batch.robot_id == "r1"
    np.testing.assert_array_equal(batch.columns["log_id"], np.arange(100, 110))
    np.testing.assert_array_equal(batch.columns["obs"][3], rows[3][1].obs)
    assert batch.columns["truncated"].tolist() == [False] * 9 + [True]
    assert batch.interventions[1] == ["clamped"] and batch.policy_versions == ["abc"] * 10


@pytest.mark.parametrize("mutate, reason", [
    (lambda env: env | {"v": SCHEMA_VERSION + 1}, "version"),
    (lambda env: env | {"kind": "pickle"}, "kind"),
    (lambda env: {"v": SCHEMA_VERSION, "kind": "ack"}, "decode"),
    (lambda env: env | {"body": {"robot_id": "r1"}}, "field"),
    (lambda env: env | {"body": {"robot_id": "r1", "from_id": 5, "up_to_id": "7"}}, "field"),
    (lambda env: env | {"body": {"robot_id": "r1", "from_id": 5, "up_to_id": True}}, "field"),
])
def test_bad_envelopes_are_rejected_with_a_reason(mutate, reason):
    envelope = msgpack.unpackb(encode(Ack("r1", 5, 7)))
    with pytest.raises(MessageError) as error:
        decode(msgpack.packb(mutate(envelope), use_bin_type=True))
    assert error.value.reason == reason


def _batch_envelope():
    return msgpack.unpackb(encode(TransitionBatch.from_rows("r1", [(1, transition(0, 0)), (2, transition(0, 1))])))


@pytest.mark.parametrize("mutate, message", [
    (lambda cols: cols["obs"].update(dtype="<f8", data=b"\0" * 96), "column obs is <f8"),
    (lambda cols: cols["obs"].update(shape=[2, 7]), "do not fill shape"),
    (lambda cols: cols["reward"].update(dtype="|O"), "dtype '|O'"),
    (lambda cols: cols.pop("reward"), "differ from the schema"),
    (lambda cols: cols["step"].update(shape=[3], data=b"\0" * 24), "column step is <i8\\[3\\]"),
])
def test_wrong_dtypes_shapes_and_missing_columns_are_rejected(mutate, message):
    envelope = _batch_envelope()
    mutate(envelope["body"]["columns"])
    with pytest.raises(MessageError, match=message):
        decode(msgpack.packb(envelope, use_bin_type=True))


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


def test_the_outbox_deletes_only_acknowledged_rows_and_never_reuses_an_episode(tmp_path):
    log = TransitionLog(tmp_path / "t.sqlite")
    for step in range(5):
        log.append(transition(3, step))
    log.close()
    log = TransitionLog(tmp_path / "t.sqlite")
    ids = [row_id for row_id, _ in log.read()]
    assert log.acknowledge(ids[1], ids[2]) == 2  # a batch acknowledged out of order
    assert [t.step for _, t in log.read()] == [0, 3, 4]
    log.acknowledge(ids[0], ids[-1])
    assert log.read() == [] and log.next_episode("r1") == 4
    log.close()
