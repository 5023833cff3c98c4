"""The dashboard's audit log: every control action, who asked, when and what came of it; rows are only ever added."""

from __future__ import annotations

from pathlib import Path

from robot_app.common.logs import utc_now
from robot_app.common.storage import DurableSQLite

SCHEMA_VERSION = 1
FIELDS = ("id", "at", "who", "role", "action", "target", "outcome", "detail")


class AuditLog:
    """SQLite (WAL, synchronous=FULL). Triggers refuse UPDATE and DELETE, so the file itself keeps it append-only."""

    def __init__(self, path: str | Path):
        self.store = DurableSQLite(path, "audit log")
        self.store.check_schema(SCHEMA_VERSION)
        with self.store.db as db:
            db.execute("CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
                       " who TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,"
                       " outcome TEXT NOT NULL, detail TEXT NOT NULL)")
            for verb in ("UPDATE", "DELETE"):
                db.execute(f"CREATE TRIGGER IF NOT EXISTS audit_no_{verb.lower()} BEFORE {verb} ON audit "
                           "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END")

    def record(self, who: str, role: str, action: str, target: str, outcome: str, detail: str = "") -> dict:
        at = utc_now()
        with self.store.db as db:
            cursor = db.execute("INSERT INTO audit (at, who, role, action, target, outcome, detail)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?)", (at, who, role, action, target, outcome, detail))
        return dict(zip(FIELDS, (cursor.lastrowid, at, who, role, action, target, outcome, detail)))

    def entries(self, limit: int = 200) -> list[dict]:
        """The newest `limit` entries, newest first."""
        rows = self.store.db.execute(f"SELECT {', '.join(FIELDS)} FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(FIELDS, row)) for row in rows]

    def close(self) -> None:
        self.store.close()
