"""The agent's durable transition log and outbox: acknowledged chunks only are deleted, episodes and seqs never reused,
its size read cheaply and consistently, and a failing disk retried, then given up on without losing what it holds."""

import sqlite3
import types

import numpy as np
import pytest

from robot_app.agent.transition_log import Transition, TransitionLog
from tests.conftest import wait_until


def transition(episode, step, obs_dim=6):
    rng = np.random.default_rng(step)
    return Transition(
        robot_id="r1", episode=episode, step=step, obs=rng.standard_normal(obs_dim).astype(np.float32),
        action=np.array([1.5], np.float32), reward=0.25, next_obs=rng.standard_normal(obs_dim).astype(np.float32),
        terminated=False, truncated=step == 9, policy_action=np.array([2.0], np.float32), policy_version="abc",
        interventions=("clamped",) if step % 2 else (), obs_time_ns=10 * step, command_time_ns=10 * step + 1,
        next_obs_time_ns=10 * step + 5, device_time_us=step,
    )


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
    with pytest.raises(ValueError, match="schema v1; this version reads and writes v4"):
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
