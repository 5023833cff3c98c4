"""SQLite files that must survive kill -9 and power loss: WAL, synchronous=FULL, one connection per thread.
(Whole files go through robot_app.common.files.write_atomic.)"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class DurableSQLite:
    """Each thread gets its own connection to `path` (a connection must not carry two threads' transactions)."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        for folder in (self.path.parent, *self.path.parent.parents):
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"{folder} is a file, not a folder: the {what} cannot be kept at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.db  # fail now, with the file's name, if it is not a database

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.DatabaseError as error:
                raise ValueError(f"{self.path}: not a usable {self.what}: {error}") from None
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def check_schema(self, version: int) -> None:
        """Record `version` in a new file; refuse a file written under another one (never rewrite recorded data)."""
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(version),))
        found = int(self.meta("schema_version"))
        if found != version:
            raise ValueError(f"{self.path}: {self.what} schema v{found}; this version reads and writes v{version}. "
                             "Keep the file (it may hold undelivered data) and run the release that wrote it.")

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Inside the caller's transaction."""
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value))

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()
