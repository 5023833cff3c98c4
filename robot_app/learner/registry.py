"""The policy registry: every candidate artifact, its validation reports and its life, in SQLite.

A policy moves candidate -> validating -> validated | rejected, and a validated one -> deployed -> retired (and back to
deployed on a rollback). Every move is one transaction that checks the current state, updates it and appends to the
policy's history with who or what made the move, so a kill -9 mid-write leaves either the old state or the new one,
never a policy whose state disagrees with its history. Readers (the CLI, the dashboard) see committed states only.
Artifacts are copied into the registry's folder under their version, so what was validated is what gets deployed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
from pathlib import Path

from robot_app.common.artifact import ArtifactError, PolicyMetadata, WorldModelMetadata, read_metadata
from robot_app.common.files import write_atomic
from robot_app.common.logs import utc_now
from robot_app.common.storage import DurableSQLite

SCHEMA_VERSION = 1
STATES = ("candidate", "validating", "validated", "rejected", "deployed", "retired")
MOVES = {  # state -> the states a policy may move to from it
    "candidate": {"validating"},
    "validating": {"validated", "rejected", "candidate"},  # back to candidate: a validation that did not finish
    "validated": {"deployed", "retired"},
    "rejected": set(),
    "deployed": {"retired"},
    "retired": {"deployed"},  # a rollback
}


class RegistryError(ValueError):
    """A move the registry refuses, or a policy it does not know; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class PolicyRecord:
    version: str
    sha256: str
    size: int
    path: str
    source_run: str
    training_step: int
    state: str
    created_at: str
    updated_at: str
    report: dict | None
    signature: str  # the gate's Ed25519 signature of the artifact, hex; "" until validated


def read_artifact_metadata(data: bytes, source: str) -> PolicyMetadata | WorldModelMetadata:
    """The robot_app metadata of an ONNX file's bytes, a policy's or a planner's (learner side: it needs onnx)."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ArtifactError(f"{source}: not an ONNX model: {error}") from None
    return read_metadata(props, source)


def _record(row: tuple) -> PolicyRecord:
    *fields, report, signature = row
    return PolicyRecord(*fields, json.loads(report) if report else None, signature)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class PolicyRegistry:
    def __init__(self, folder: str | Path, create: bool = True):
        """create=False: the registry must exist already (a reader given a mistyped path is told so)."""
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise RegistryError(f"{self.folder} is a file, not a policy registry folder")
        if not create and not (self.folder / "registry.sqlite").is_file():
            raise RegistryError(f"no policy registry at {self.folder} (a registry starts with `robot-app policies add` "
                                "or the learner's --registry)")
        self.store = DurableSQLite(self.folder / "registry.sqlite", "policy registry")
        self.store.check_schema(SCHEMA_VERSION)
        with self.store.db as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS policies (version TEXT PRIMARY KEY, sha256 TEXT NOT NULL,"
                " size INTEGER NOT NULL, path TEXT NOT NULL, source_run TEXT NOT NULL, training_step INTEGER NOT NULL,"
                f" state TEXT NOT NULL CHECK (state IN {STATES}), created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
                " report TEXT, signature TEXT NOT NULL DEFAULT '')"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, version TEXT NOT NULL"
                " REFERENCES policies(version), from_state TEXT, to_state TEXT NOT NULL, actor TEXT NOT NULL,"
                " reason TEXT NOT NULL, at TEXT NOT NULL)"
            )

    def close(self) -> None:
        self.store.close()

    # ---- reading ----------------------------------------------------------------------------------------------------

    def get(self, version: str) -> PolicyRecord:
        row = self.store.db.execute("SELECT * FROM policies WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise RegistryError(f"no policy {version!r} in {self.folder}; "
                                f"`robot-app policies list --registry {self.folder}` shows them")
        return _record(row)

    def list(self, state: str | None = None) -> list[PolicyRecord]:
        return [_record(row) for row in self.store.db.execute(
            "SELECT * FROM policies WHERE ? IS NULL OR state = ? ORDER BY created_at, rowid", (state, state))]

    def history(self, version: str | None = None) -> list[dict]:
        rows = self.store.db.execute(
            "SELECT version, from_state, to_state, actor, reason, at FROM history WHERE ? IS NULL OR version = ?"
            " ORDER BY id", (version, version)).fetchall()
        return [dict(zip(("version", "from_state", "to_state", "actor", "reason", "at"), row)) for row in rows]

    def deployed(self) -> PolicyRecord | None:
        found = self.list("deployed")
        return found[0] if found else None

    # ---- writing ----------------------------------------------------------------------------------------------------

    def add_candidate(self, artifact: str | Path, actor: str) -> PolicyRecord:
        """Copy an exported ONNX into the registry as a candidate; adding the same weights again changes nothing."""
        artifact = Path(artifact)
        data = artifact.read_bytes()
        meta = read_artifact_metadata(data, str(artifact))
        version = meta.weights_sha256[:16]  # what the agent reports running
        path = self.folder / "artifacts" / f"{version}.onnx"
        if not path.exists():
            write_atomic(path, data)
        now = utc_now()
        with self._write() as db:
            added = db.execute(
                "INSERT OR IGNORE INTO policies VALUES (?, ?, ?, ?, ?, ?, 'candidate', ?, ?, NULL, '')",
                (version, hashlib.sha256(data).hexdigest(), len(data), str(path), meta.source_run, meta.training_step,
                 now, now)).rowcount
            if added:
                db.execute("INSERT INTO history (version, from_state, to_state, actor, reason, at) VALUES "
                           "(?, NULL, 'candidate', ?, ?, ?)", (version, actor, f"added from {artifact}", now))
        return self.get(version)

    def move(self, version: str, to_state: str, actor: str, reason: str, report: dict | None = None,
             signature: str = "") -> PolicyRecord:
        """Move one policy, checking the move against its current state, in one transaction with its history."""
        if to_state == "validated" and not signature:
            raise RegistryError(f"policy {version} cannot be validated without the gate's signature")
        with self._write() as db:
            self._move(db, version, to_state, actor, reason, report)
            if signature:
                db.execute("UPDATE policies SET signature = ? WHERE version = ?", (signature, version))
        return self.get(version)

    def start_validation(self, version: str, actor: str) -> PolicyRecord:
        """Move a candidate to validating, noting which process validates it (see `release_abandoned`)."""
        self.release_abandoned(actor)
        return self.move(version, "validating", actor, f"sim validation started by pid {os.getpid()} on "
                                                        f"{socket.gethostname()}")

    def release_abandoned(self, actor: str) -> list[str]:
        """Return to candidate every policy whose validating process on this host is gone (a learner stopped or
        killed mid-gate), so it can be validated again; the versions released."""
        released = []
        for policy in self.list("validating"):
            started = [h for h in self.history(policy.version) if h["to_state"] == "validating"][-1]
            owner = re.search(r"by pid (\d+) on (\S+)$", started["reason"])
            if owner and (owner[2] != socket.gethostname() or _alive(int(owner[1]))):
                continue
            with self._write() as db:
                if self._state(db, policy.version) == "validating":
                    self._move(db, policy.version, "candidate", actor,
                               f"its validation ({started['reason']}) ended without a verdict")
                    released.append(policy.version)
        return released

    def deploy(self, version: str, actor: str, reason: str = "deployed") -> PolicyRecord:
        """Make `version` the deployed policy and retire the one it replaces, atomically. Only a validated policy (or
        a retired one coming back) may be deployed."""
        with self._write() as db:
            state = self._state(db, version)
            if state == "deployed":
                raise RegistryError(f"policy {version} is already deployed")
            if state not in ("validated", "retired"):
                raise RegistryError(f"policy {version} is {state}: only a validated policy can be deployed"
                                    + (" (run `robot-app policies validate` first)" if state == "candidate" else ""))
            for (current,) in db.execute("SELECT version FROM policies WHERE state = 'deployed'").fetchall():
                self._move(db, current, "retired", actor, f"replaced by {version}")
            self._move(db, version, "deployed", actor, reason)
        return self.get(version)

    def rollback(self, actor: str) -> PolicyRecord:
        """Re-deploy the policy that was deployed before the current one (twice in a row swaps back, as
        `kubectl rollout undo` does); `deploy` brings back any retired version."""
        current = self.deployed()
        if current is None:
            raise RegistryError("nothing is deployed, so there is nothing to roll back")
        previous = [h["version"] for h in self.history() if h["to_state"] == "deployed" and h["version"] != current.version]
        if not previous:
            raise RegistryError(f"{current.version} is the only policy ever deployed; there is nothing to roll back to")
        return self.deploy(previous[-1], actor, f"rollback from {current.version}")

    def _write(self):
        """A write transaction taken at once (BEGIN IMMEDIATE), so the checks and the move see the same state."""
        db = self.store.db
        db.execute("BEGIN IMMEDIATE")
        return _Transaction(db)

    @staticmethod
    def _state(db, version: str) -> str:
        row = db.execute("SELECT state FROM policies WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise RegistryError(f"no policy {version!r} in the registry")
        return row[0]

    def _move(self, db, version: str, to_state: str, actor: str, reason: str, report: dict | None = None) -> None:
        state = self._state(db, version)
        if to_state not in MOVES[state]:
            allowed = ", ".join(sorted(MOVES[state])) or "nothing (it is final)"
            raise RegistryError(f"policy {version} is {state}; it can move to {allowed}, not {to_state}")
        now = utc_now()
        db.execute("UPDATE policies SET state = ?, updated_at = ?, report = COALESCE(?, report) WHERE version = ?",
                   (to_state, now, json.dumps(report) if report is not None else None, version))
        db.execute("INSERT INTO history (version, from_state, to_state, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                   (version, state, to_state, actor, reason, now))


class _Transaction:
    """Commit on success, roll back on any error (sqlite3's own context manager does not begin IMMEDIATE)."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        return self.db

    def __exit__(self, kind, error, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
