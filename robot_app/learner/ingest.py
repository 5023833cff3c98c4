"""The learner's ingest: a ROUTER socket that validates robots' transition batches, stores them durably, then acks;
and a PUB socket that announces the newest policy, whose artifact robots then fetch over the ROUTER.

The store (SQLite, WAL, synchronous=FULL) is the learner's record of every transition, keyed by (robot_id, episode,
step), so a re-sent batch is counted as duplicates and never enters twice. A batch is acknowledged only after its
transaction commits; the replay buffer is rebuilt from the store on a restart.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import onnx
import zmq
from zmq.utils.monitor import recv_monitor_message

from policies.artifact import PolicyMetadata
from robot_app.logs import first_and_doubling
from robot_app.transport.keys import ServerSecurity
from robot_app.transport.messages import (
    COLUMNS, MAX_MESSAGE_BYTES, Ack, Heartbeat, MessageError, PolicyAnnouncement, PolicyBlob, PolicyRequest, Status,
    TransitionBatch, decode, encode, pack_array, unpack_array,
)

log = logging.getLogger(__name__)


class IngestStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT, robot_id TEXT NOT NULL,"
                " episode INTEGER NOT NULL, step INTEGER NOT NULL, received_ns INTEGER NOT NULL, record BLOB NOT NULL,"
                " UNIQUE (robot_id, episode, step))"
            )

    def store(self, batch: TransitionBatch, received_ns: int) -> tuple[int, int]:
        """Insert a batch in one transaction; return (new rows, duplicates)."""
        rows = []
        for i in range(len(batch)):
            record = {name: (pack_array(column[i]) if column.ndim == 2 else column[i].item())
                      for name, column in batch.columns.items()}
            record["policy_version"] = batch.policy_versions[i]
            record["interventions"] = batch.interventions[i]
            rows.append((batch.robot_id, int(batch.columns["episode"][i]), int(batch.columns["step"][i]), received_ns,
                         msgpack.packb(record, use_bin_type=True)))
        with self._db:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO transitions (robot_id, episode, step, received_ns, record) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            new = self._db.total_changes - before
        return new, len(rows) - new

    def count(self, robot_id: str | None = None) -> int:
        if robot_id is None:
            return self._db.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM transitions WHERE robot_id = ?", (robot_id,)).fetchone()[0]

    def read(self, after_seq: int = 0, limit: int = 10_000) -> list[tuple[int, str, dict]]:
        """(seq, robot_id, record) in arrival order; arrays come back as numpy."""
        out = []
        for seq, robot_id, blob in self._db.execute(
            "SELECT seq, robot_id, record FROM transitions WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ):
            record = msgpack.unpackb(blob, raw=False)
            for name, (_, ndim) in COLUMNS.items():
                if ndim == 2:
                    record[name] = unpack_array(record[name], name)
            out.append((seq, robot_id, record))
        return out

    def close(self) -> None:
        self._db.close()


class IngestServer:
    """Serves robots until stop(): every message is validated; anything bad is counted by reason and dropped."""

    def __init__(self, store: IngestStore, endpoint: str, security_files: tuple[str, str] | None,
                 heartbeat_s: float = 1.0, context: zmq.Context | None = None, announce_endpoint: str | None = None):
        """security_files: (learner secret key file, directory of admitted robots' public keys), or None for the
        explicit local-development plaintext mode."""
        self.store = store
        self.context = context or zmq.Context.instance()
        self.security = ServerSecurity(self.context, *security_files) if security_files else None
        if self.security is None:
            log.warning("ingest on %s WITHOUT CURVE: local development only", endpoint)
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.router_mandatory = False
        self.socket.rcvhwm = self.socket.sndhwm = 1000  # bounded queues; robots hold the rest in their outboxes
        self.socket.maxmsgsize = 2 * MAX_MESSAGE_BYTES  # past this ZeroMQ drops the peer; below it we count oversize
        if self.security:
            self.security.secure(self.socket)
        # Refused CURVE handshakes never become messages; the socket monitor is where they can be counted.
        self._monitor = self.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self.endpoint = _bind(self.socket, endpoint)
        self.publisher = self.context.socket(zmq.PUB)
        self.publisher.linger = 0
        if self.security:
            self.security.secure(self.publisher)
        self.announce_endpoint = _bind(self.publisher, announce_endpoint or endpoint.rsplit(":", 1)[0] + ":0")
        self._policy: tuple[PolicyAnnouncement, bytes] | None = None
        self._policy_lock = threading.Lock()
        self.heartbeat_s = heartbeat_s
        self.rejected: collections.Counter[str] = collections.Counter()
        self.robots: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.last_heard: dict[str, float] = {}
        self.statuses: dict[str, Status] = {}  # the latest each robot reported
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def publish(self, artifact: str | Path) -> PolicyAnnouncement:
        """Make `artifact` the policy robots should run; announced now and again every heartbeat (latest only)."""
        data = Path(artifact).read_bytes()
        props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        version = PolicyMetadata.from_props(props, str(artifact)).weights_sha256[:16]  # what robots report running
        announcement = PolicyAnnouncement(version, hashlib.sha256(data).hexdigest(), len(data))
        with self._policy_lock:
            self._policy = (announcement, data)
        log.info("publishing policy %s (%d bytes) from %s", version, len(data), artifact)
        return announcement

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        next_announcement = 0.0
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(timeout=100))
                if self.socket in ready:
                    self._handle(self.socket.recv_multipart(copy=False))
                if self._monitor in ready:
                    event = recv_monitor_message(self._monitor)
                    self._reject("unauthenticated", f"handshake refused (event {event['event']}) from a peer "
                                                    f"on {event['endpoint']!r}")
                if time.monotonic() >= next_announcement:
                    next_announcement = time.monotonic() + self.heartbeat_s
                    with self._policy_lock:
                        policy = self._policy
                    if policy is not None:
                        self.publisher.send(encode(policy[0]))
        finally:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self.socket.close(linger=0)
            self.publisher.close(linger=0)
            if self.security:
                self.security.stop()

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        if first_and_doubling(self.rejected[reason]):
            log.warning("rejected a message (%s, %d so far): %s", reason, self.rejected[reason], detail)

    def _handle(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            return self._reject("framing", f"{len(frames)} frames")
        route, payload = frames
        try:
            message = decode(payload.bytes)
        except MessageError as error:
            return self._reject(error.reason, str(error))
        sender = getattr(message, "robot_id", getattr(message, "sender", None))
        if self.security is not None and self.security.name_of(payload) != sender:
            return self._reject("identity", f"{sender!r} is not the robot whose key signed the connection")
        self.last_heard[sender] = time.monotonic()
        if isinstance(message, TransitionBatch):
            new, duplicates = self.store.store(message, time.monotonic_ns())
            stats = self.robots[sender]
            stats["batches"] += 1
            stats["transitions"] += new
            stats["duplicates"] += duplicates
            log_ids = message.columns["log_id"]
            reply = Ack(sender, int(np.min(log_ids)), int(np.max(log_ids)))
        elif isinstance(message, Heartbeat):
            reply = Heartbeat("learner", time.monotonic_ns())
        elif isinstance(message, Status):
            self.statuses[sender] = message
            return None
        elif isinstance(message, PolicyRequest):
            with self._policy_lock:
                policy = self._policy
            if policy is None or policy[0].version != message.version:
                return self._reject("policy_version", f"{sender} asked for {message.version}, not the current one")
            reply = PolicyBlob(policy[0].version, policy[0].sha256, policy[1])
        else:
            return self._reject("kind", f"{message.KIND} is not for the learner")
        self.socket.send_multipart([route.bytes, encode(reply)])
        return None


def _bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind, choosing a free port for 'tcp://host:0'; return the endpoint bound."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        host = endpoint.rsplit(":", 1)[0]
        return f"{host}:{socket.bind_to_random_port(host)}"
    socket.bind(endpoint)
    return endpoint
