"""The agent's durable local log of transitions: SQLite (WAL, synchronous=FULL), msgpack records, raw numpy buffers.

A writer thread commits in small batches, so the control loop never waits on the disk. The log is also the outbox: the
shipper reads rows in id order and deletes them only once the learner has acknowledged them, so a row survives learner
outages and agent restarts until it is delivered.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sqlite3
import threading
from pathlib import Path

import msgpack
import numpy as np

from robot_app.transport.messages import pack_array, unpack_array

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


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

    _ARRAYS = ("obs", "action", "next_obs", "policy_action")

    def pack(self) -> bytes:
        record = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name in self._ARRAYS:
            record[name] = pack_array(record[name])
        record["interventions"] = list(self.interventions)
        return msgpack.packb(record, use_bin_type=True)

    @classmethod
    def unpack(cls, blob: bytes) -> "Transition":
        record = msgpack.unpackb(blob, raw=False)
        for name in cls._ARRAYS:
            record[name] = unpack_array(record[name], name)
        record["interventions"] = tuple(record["interventions"])
        return cls(**record)


class TransitionLog:
    """Append from the control loop; a background thread commits. Reopening continues where the last run stopped."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.05):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, robot_id TEXT NOT NULL,"
                " episode INTEGER NOT NULL, step INTEGER NOT NULL, record BLOB NOT NULL, UNIQUE (robot_id, episode, step))"
            )
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        (version,) = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: transition log schema v{version}, this agent writes v{SCHEMA_VERSION}")
        self._queue: queue.Queue[Transition | None] = queue.Queue()
        self._flush_interval = flush_interval_s
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_forever, name="transition-log", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a usable transition log: {error}") from None
        return db

    def next_episode(self, robot_id: str) -> int:
        """Episode numbers never repeat for a robot, even after its delivered rows are deleted."""
        (last,) = self._db.execute("SELECT MAX(episode) FROM transitions WHERE robot_id = ?", (robot_id,)).fetchone()
        delivered = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"last_episode:{robot_id}",)).fetchone()
        candidates = [int(v) for v in (last, delivered[0] if delivered else None) if v is not None]
        return max(candidates) + 1 if candidates else 0

    def acknowledge(self, from_id: int, up_to_id: int) -> int:
        """Delete rows from_id..up_to_id, which the learner has stored; return how many went."""
        db = self._connect()
        try:
            with db:
                for robot_id, episode in db.execute(
                    "SELECT robot_id, MAX(episode) FROM transitions WHERE id BETWEEN ? AND ? GROUP BY robot_id",
                    (from_id, up_to_id),
                ).fetchall():
                    db.execute(
                        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                        "MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                        (f"last_episode:{robot_id}", str(episode)),
                    )
                return db.execute("DELETE FROM transitions WHERE id BETWEEN ? AND ?", (from_id, up_to_id)).rowcount
        finally:
            db.close()

    def append(self, transition: Transition) -> None:
        if self._error is not None:
            raise OSError(f"{self.path}: the transition log stopped writing: {self._error}")
        self._queue.put(transition)

    def _write_forever(self) -> None:
        closing = False
        while not closing:
            batch: list[Transition] = []
            try:
                item = self._queue.get(timeout=self._flush_interval)
                while True:
                    if item is None:
                        closing = True
                        break
                    batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if batch:
                try:
                    with self._db:
                        self._db.executemany(
                            "INSERT OR IGNORE INTO transitions (robot_id, episode, step, record) VALUES (?, ?, ?, ?)",
                            [(t.robot_id, t.episode, t.step, t.pack()) for t in batch],
                        )
                except sqlite3.Error as error:
                    log.error("transition log write failed: %s", error)
                    self._error = error
                    return

    def close(self) -> None:
        """Commit everything appended so far, then close."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
        self._db.close()

    def __enter__(self) -> "TransitionLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading (tests, the shipper in the next issue) -------------------------------------------------------------

    def read(self, after_id: int = 0, limit: int = 10_000) -> list[tuple[int, Transition]]:
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT id, record FROM transitions WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        finally:
            db.close()
        return [(row_id, Transition.unpack(blob)) for row_id, blob in rows]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]

    def held_upper_bound(self) -> int:
        """At least the number of rows held (not yet delivered), from the id range: cheap at any size."""
        low, high = self._db.execute("SELECT MIN(id), MAX(id) FROM transitions").fetchone()
        return 0 if low is None else high - low + 1
