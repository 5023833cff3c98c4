"""Where the agent records transitions (`TransitionSink`): the durable log that is also its outbox, or memory.

The durable log is SQLite (WAL, synchronous=FULL), in chunks.

A writer thread commits what the control loop appended every 20 ms, so the loop never waits on the disk. Each commit numbers the
new transitions with the next seqs and stores them as packed TransitionChunks, the very bytes the link sends. The
shipper reads chunks in seq order and deletes them only once the learner has acknowledged them, so a transition
survives learner outages and agent restarts until it is delivered. Every log has a random `outbox_id`; with the seq it
names each transition uniquely, so the learner can de-duplicate even if this file is lost and a new one started.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

from robot_app.common.storage import DurableSQLite
from robot_app.common.transition_chunk import TransitionChunk

log = logging.getLogger(__name__)
SCHEMA_VERSION = 4  # 4: transition chunks carry plan_fallback


class TransitionLogError(OSError):
    """The log stopped writing: what the loop records from now on would be lost, so the agent stops (safely)."""


@dataclasses.dataclass(frozen=True)
class Transition:
    robot_id: str
    episode: int
    step: int
    obs: np.ndarray
    action: np.ndarray  # the command that went on the wire, after the supervisor (native units)
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    policy_action: np.ndarray  # what the policy asked for
    policy_version: str
    interventions: tuple[str, ...]
    obs_time_ns: int  # host monotonic receive time of the observation's sensor frame
    command_time_ns: int  # host monotonic time the command was written
    next_obs_time_ns: int
    device_time_us: int  # the device's clock at the observation
    sample_seed: int = -1  # the seed of the draw that sampled the policy's action (-1: the policy records none)
    plan_fallback: bool = False  # a planner ran out of time, and this action is pi's own


@dataclasses.dataclass(frozen=True)
class PendingChunk:
    robot_id: str
    first_seq: int
    last_seq: int
    packed: bytes  # a TransitionChunk, as stored and as sent


class TransitionSink(Protocol):
    """What the agent appends each closed step to. It never closes a sink: the caller owns it."""

    def append(self, transition: Transition) -> None: ...

    def next_episode(self, robot_id: str) -> int:
        """The number `robot_id`'s first episode takes in this run of the agent."""
        ...


class TransitionRecorder:
    """A TransitionSink in memory, for one run, whose episodes count from 0: the gate's episodes and the tests."""

    def __init__(self):
        self.rows: list[Transition] = []

    def append(self, transition: Transition) -> None:
        self.rows.append(transition)

    def next_episode(self, robot_id: str) -> int:
        return 0


class TransitionLog:
    """The durable TransitionSink and outbox. Append from the control loop; a background thread commits. Reopening
    continues where the last run stopped."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.02, chunk_rows: int = 256, retry_s: float = 10.0):
        """retry_s: how long a commit that fails in a way that may pass (busy, locked, I/O, disk full) is retried,
        holding its transitions, before the log gives up and the agent stops safely."""
        self.store = DurableSQLite(path, "transition log")
        self.path = self.store.path
        self.store.check_schema(SCHEMA_VERSION)
        db = self.store.db
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS chunks (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,"
                       " robot_id TEXT NOT NULL, chunk BLOB NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('outbox_id', ?)", (uuid.uuid4().hex,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', '0')")
        self.outbox_id = self.store.meta("outbox_id")
        self._last_seq = int(self.store.meta("last_seq"))
        self.appended_through = self._last_seq  # the seq the last transition appended will have (seqs have no gaps)
        self._queue: queue.Queue[Transition | None] = queue.Queue()
        self._flush_interval, self._chunk_rows, self._retry_s = flush_interval_s, chunk_rows, retry_s
        self._error: TransitionLogError | None = None
        self.closed = False  # a link still shipping from this log stops once it is closed
        self._writer = threading.Thread(target=self._write_forever, name="transition-log", daemon=True)
        self._writer.start()

    def next_episode(self, robot_id: str) -> int:
        """Episode numbers never repeat for a robot in this log, even after its delivered rows are deleted."""
        last = self.store.meta(f"last_episode:{robot_id}")
        return 0 if last is None else int(last) + 1

    def append(self, transition: Transition) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(transition)
        self.appended_through += 1

    @property
    def error(self) -> TransitionLogError | None:
        """Why the log stopped writing, once it has given up (append raises it from then on); None while it writes."""
        return self._error

    def _write_forever(self) -> None:
        """Commit what arrived every flush interval (one fsync per interval, not per tick), until close()."""
        closing = False
        while not closing:
            deadline, batch = time.monotonic() + self._flush_interval, []
            while not closing:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    batch.append(item)
            if batch and not self._commit_retrying(batch):
                return

    def _commit_retrying(self, batch: list[Transition]) -> bool:
        """Commit `batch`, retrying with backoff for retry_s while the error is one that may pass; the control loop
        keeps appending meanwhile. A failed transaction rolls back whole, so a retry writes the same seqs. False: the
        log gave up, and says how many transitions it could not write."""
        give_up_at, delay, retried = time.monotonic() + self._retry_s, 0.01, 0
        while True:
            try:
                self._commit(batch)
            except sqlite3.OperationalError as error:  # busy or locked, I/O error, disk full
                if time.monotonic() + delay < give_up_at:
                    if not retried:
                        log.warning("transition log write failed (%s): retrying for up to %g s", error, self._retry_s)
                    retried += 1
                    time.sleep(delay)
                    delay = min(2 * delay, 0.5)
                    continue
                failure: sqlite3.Error = error
            except sqlite3.Error as error:  # corrupt file, constraint: retrying cannot help
                failure = error
            else:
                if retried:
                    log.warning("transition log write succeeded after %d retries", retried)
                return True
            unwritten = len(batch) + self._queue.qsize()
            self._error = TransitionLogError(f"{self.path}: the transition log stopped writing ({failure}); at least {unwritten} "
                                  "transitions were not written, everything committed before is kept")
            log.error("%s", self._error)
            return False

    def _commit(self, batch: list[Transition]) -> None:
        """One transaction: the chunks (one robot each, at most chunk_rows), the last seq and the last episodes."""
        db, seq, rows, last_episode = self.store.db, self._last_seq, [], {}
        for robot_id, group in itertools.groupby(batch, key=lambda t: t.robot_id):
            group = list(group)
            last_episode[robot_id] = max(t.episode for t in group)
            for start in range(0, len(group), self._chunk_rows):
                part = group[start:start + self._chunk_rows]
                rows.append((seq + 1, seq + len(part), robot_id, TransitionChunk.from_transitions(seq + 1, part).pack()))
                seq += len(part)
        with db:
            db.executemany("INSERT INTO chunks (first_seq, last_seq, robot_id, chunk) VALUES (?, ?, ?, ?)", rows)
            self.store.set_meta("last_seq", str(seq))
            for robot_id, episode in last_episode.items():
                db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                           "MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                           (f"last_episode:{robot_id}", str(episode)))
        self._last_seq = seq

    def close(self) -> None:
        """Commit everything appended so far, then close."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        self.closed = True
        self.store.close()

    def __enter__(self) -> "TransitionLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the outbox side (the link's thread) ----------------------------------------------------------------------

    def pending(self, after_seq: int, max_rows: int) -> list[PendingChunk]:
        """The chunks held after `after_seq` that start within the next `max_rows` seqs, in seq order."""
        return [PendingChunk(*row) for row in self.store.db.execute(
            "SELECT robot_id, first_seq, last_seq, chunk FROM chunks WHERE first_seq > ? AND first_seq <= ?"
            " ORDER BY first_seq", (after_seq, after_seq + max_rows))]

    def acknowledge(self, up_to_seq: int) -> int:
        """Delete every chunk up to `up_to_seq`, which the learner has stored; return how many rows went."""
        db, acked = self.store.db, "first_seq <= :seq AND last_seq <= :seq"  # first_seq bounds it: a key range
        with db:
            (rows,) = db.execute(f"SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM chunks WHERE {acked}",
                                 {"seq": up_to_seq}).fetchone()
            db.execute(f"DELETE FROM chunks WHERE {acked}", {"seq": up_to_seq})
        return rows

    def acked_through(self) -> int:
        """Every seq up to this one was acknowledged (the log holds none of them)."""
        first, last = self.store.db.execute(
            "SELECT MIN(first_seq), (SELECT value FROM meta WHERE key = 'last_seq') FROM chunks").fetchone()
        return int(last) if first is None else first - 1

    def held(self) -> int:
        """How many transitions wait for delivery. Seqs have no gaps, so the first and the last chunk tell, each found
        through the primary key: the agent asks this every tick between episodes, at any size of the log. Both come
        from one statement, so one snapshot: the link's thread deletes acknowledged chunks concurrently."""
        first, last = self.store.db.execute("SELECT (SELECT first_seq FROM chunks ORDER BY first_seq LIMIT 1),"
                                            " (SELECT last_seq FROM chunks ORDER BY first_seq DESC LIMIT 1)").fetchone()
        return 0 if first is None else last - first + 1

    def read(self, after_seq: int = 0) -> list[tuple[str, TransitionChunk]]:
        """Everything held after `after_seq`, unpacked: (robot_id, chunk). For tests and tools."""
        return [(c.robot_id, TransitionChunk.unpack(c.packed)) for c in self.pending(after_seq, max_rows=1 << 62)]
