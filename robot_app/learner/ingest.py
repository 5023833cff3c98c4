"""The learner's ingest: a ROUTER socket that validates robots' transition batches, stores them durably, then acks;
and a PUB socket that announces the newest policy, whose artifact robots then fetch over the ROUTER.

The store (SQLite, WAL, synchronous=FULL) is the learner's record of every transition. It keeps each robot's chunks as
they came, and it takes each outbox's seqs strictly in order: rows at or below what it holds are duplicates (acked
again, never stored twice), and a chunk that would leave a gap is dropped unacked, so the robot's go-back resends it
in order. All batches that arrived together are stored in one transaction, and acked (cumulatively) after it commits.
The replay buffer is rebuilt from the store on a restart.

Rows are checked against the robot's declared layout before they are stored. A chunk of the wrong width is refused
unacked (the robot keeps it: it is misconfigured). A chunk with non-finite or impossible values is kept, acked, and
quarantined: stored aside, never read for training, so one glitch neither stalls the robot nor poisons the learner.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from robot_app.common.logs import first_and_doubling
from robot_app.common.storage import DurableSQLite
from robot_app.learner.registry import read_artifact_metadata
from robot_app.learner.telemetry import FLEET, DashboardFeed
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import make_task
from robot_app.transport.keys import ServerSecurity
from robot_app.transport.messages import (
    MAX_MESSAGE_BYTES, MAX_SEQ, Ack, CommandReceipt, Credit, Heartbeat, MessageError, PolicyAnnouncement, PolicyBlob,
    PolicyRequest, RobotCommand, Status, TransitionBatch, TransitionChunk, decode, encode,
)

log = logging.getLogger(__name__)
SCHEMA_VERSION = 4  # 4: transition chunks carry plan_fallback
DRAIN_LIMIT = 64  # messages taken per round, so one commit covers them and the loop still turns
ACTIVE_ROBOT_S = 10.0  # a robot heard from this recently shares the learner's credit


MAX_ABS_VALUE = 1e6  # past any physical reading in SI units; keeps the learner's float32 statistics finite
REFUSED = frozenset({"width"})  # problems that refuse a chunk unacked; the others quarantine it


@dataclasses.dataclass(frozen=True)
class RowSchema:
    """What every row from the robots must hold: the task's observation width and the robot's actuators, finite
    values, and commands inside the command limits (the supervisor keeps them there)."""

    obs_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    @classmethod
    def of(cls, spec: RobotSpec) -> "RowSchema":
        low, high = spec.command_limits
        return cls(make_task(spec).obs_dim, low, high)

    def problem(self, chunk: TransitionChunk) -> tuple[str, str] | None:
        """(reason, detail) of the first thing wrong with a chunk's rows, or None. Reasons: width, non_finite,
        out_of_range."""
        c, action_dim = chunk.columns, len(self.action_low)
        if c["obs"].shape[1] != self.obs_dim or c["action"].shape[1] != action_dim:
            return "width", (f"obs width {c['obs'].shape[1]} and action width {c['action'].shape[1]}; this robot's "
                             f"are {self.obs_dim} and {action_dim}")
        for name in ("obs", "next_obs", "action", "reward"):
            finite = np.isfinite(c[name])
            if not finite.all():
                return "non_finite", f"{name} is not finite in {int((~finite).sum())} values"
        for name in ("obs", "next_obs", "reward"):
            if np.abs(c[name]).max() > MAX_ABS_VALUE:
                return "out_of_range", f"{name} reaches {float(np.abs(c[name]).max()):.3g}, past {MAX_ABS_VALUE:g}"
        slack = 1e-6 * (np.asarray(self.action_high) - np.asarray(self.action_low))
        if (c["action"] < np.asarray(self.action_low) - slack).any() or (
                c["action"] > np.asarray(self.action_high) + slack).any():
            return "out_of_range", (f"action {float(c['action'].min()):.3g}..{float(c['action'].max()):.3g} is "
                                    f"outside the command limits {list(self.action_low)}..{list(self.action_high)}")
        return None


@dataclasses.dataclass(frozen=True)
class Stored:
    """What the store made of one batch: rows `stored`, rows it already had (`duplicates`), rows `out_of_order`."""

    stored: int = 0
    duplicates: int = 0
    out_of_order: int = 0


class IngestStore:
    def __init__(self, path: str | Path):
        self.store = DurableSQLite(path, "ingest store")
        self.path = self.store.path
        self.store.check_schema(SCHEMA_VERSION)
        with self.store.db as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT, robot_id TEXT NOT NULL,"
                " outbox_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,"
                " rows INTEGER NOT NULL, received_ns INTEGER NOT NULL, chunk BLOB NOT NULL,"
                " UNIQUE (robot_id, outbox_id, first_seq))"
            )
            db.execute("CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY REFERENCES chunks (seq),"
                       " reason TEXT NOT NULL, detail TEXT NOT NULL, quarantined_ns INTEGER NOT NULL)")
        self._held: dict[tuple[str, str], int] = {}  # (robot, outbox) -> the highest seq stored (writer's cache)

    def held_through(self, robot_id: str, outbox_id: str) -> int | None:
        key = (robot_id, outbox_id)
        if key not in self._held:
            (last,) = self.store.db.execute("SELECT MAX(last_seq) FROM chunks WHERE robot_id = ? AND outbox_id = ?",
                                            key).fetchone()
            if last is None:
                return None
            self._held[key] = last
        return self._held[key]

    def store_batches(self, batches: list[TransitionBatch], received_ns: int,
                      problems: list[tuple[str, str] | None] | None = None) -> list[Stored]:
        """Take what continues each outbox's seqs, all in one transaction; say what became of each batch. A batch
        with a problem (reason, detail) is stored quarantined: it holds its seqs, but is never read for training."""
        held, rows, verdicts = {}, [], []
        for batch, problem in zip(batches, problems or [None] * len(batches)):
            key, chunk = (batch.robot_id, batch.outbox_id), batch.rows
            through = held.get(key, self.held_through(*key))
            expected = max(batch.acked_through, batch.acked_through if through is None else through) + 1
            if chunk.last_seq < expected:
                verdicts.append(Stored(duplicates=len(chunk)))
            elif chunk.first_seq > expected:  # a gap: an earlier batch was lost, and the robot will go back for it
                verdicts.append(Stored(out_of_order=len(chunk)))
            else:
                packed = batch.chunk if chunk.first_seq == expected else chunk.from_seq(expected).pack()
                rows.append(((*key, expected, chunk.last_seq, chunk.last_seq - expected + 1, received_ns, packed),
                             problem))
                held[key] = chunk.last_seq
                verdicts.append(Stored(stored=chunk.last_seq - expected + 1, duplicates=expected - chunk.first_seq))
        if rows:
            with self.store.db as db:
                for row, problem in rows:
                    cursor = db.execute("INSERT INTO chunks (robot_id, outbox_id, first_seq, last_seq, rows,"
                                        " received_ns, chunk) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                    if problem is not None:
                        self._quarantine(db, cursor.lastrowid, problem, received_ns)
            self._held.update(held)
        return verdicts

    def quarantine(self, seq: int, problem: tuple[str, str]) -> None:
        """Set a stored chunk aside: it keeps its place in its outbox's seqs, and read() no longer returns it."""
        with self.store.db as db:
            self._quarantine(db, seq, problem, time.monotonic_ns())

    @staticmethod
    def _quarantine(db, seq: int, problem: tuple[str, str], at_ns: int) -> None:
        db.execute("INSERT OR IGNORE INTO quarantine VALUES (?, ?, ?, ?)", (seq, *problem, at_ns))

    def quarantined(self) -> list[tuple[int, str, str, str]]:
        """(store seq, robot_id, reason, detail) of every chunk set aside."""
        return self.store.db.execute("SELECT q.seq, c.robot_id, q.reason, q.detail FROM quarantine q"
                                     " JOIN chunks c ON c.seq = q.seq ORDER BY q.seq").fetchall()

    def count(self, robot_id: str | None = None) -> int:
        """Rows held for training (quarantined ones aside). For tests and tools: it reads the whole table."""
        where = "seq NOT IN (SELECT seq FROM quarantine)" + ("" if robot_id is None else " AND robot_id = ?")
        return self.store.db.execute(f"SELECT COALESCE(SUM(rows), 0) FROM chunks WHERE {where}",
                                     () if robot_id is None else (robot_id,)).fetchone()[0]

    def read(self, after_seq: int = 0, limit_rows: int = 10_000,
             until_seq: int | None = None) -> list[tuple[int, str, TransitionChunk]]:
        """(store seq, robot_id, chunk) in arrival order, whole chunks until about limit_rows rows; quarantined
        chunks are skipped. A chunk that no longer decodes (the file was damaged) is quarantined as it is met."""
        out, rows, broken = [], 0, []
        for seq, robot_id, packed in self.store.db.execute(
            "SELECT seq, robot_id, chunk FROM chunks WHERE seq > ? AND seq <= ?"
            " AND seq NOT IN (SELECT seq FROM quarantine) ORDER BY seq",
            (after_seq, until_seq if until_seq is not None else 1 << 62),
        ):
            try:
                chunk = TransitionChunk.unpack(packed)
            except MessageError as error:
                broken.append((seq, ("decode", str(error))))
                continue
            out.append((seq, robot_id, chunk))
            rows += len(chunk)
            if rows >= limit_rows:
                break
        for seq, problem in broken:  # after the query: a write inside it would end it
            log.error("stored chunk %d does not decode (%s): quarantined", seq, problem[1])
            self.quarantine(seq, problem)
        return out

    def close(self) -> None:
        self.store.close()


class IngestServer:
    """Serves robots until stop(): every message is validated; anything bad is counted by reason and dropped."""

    def __init__(self, store: IngestStore, endpoint: str, security_files: tuple[str, str] | None,
                 heartbeat_s: float = 1.0, context: zmq.Context | None = None, announce_endpoint: str | None = None,
                 rows: RowSchema | None = None, dashboard_endpoint: str | None = None):
        """security_files: (learner secret key file, directory of admitted robots' public keys[, directory of
        admitted dashboards' keys]), or None for the explicit local-development plaintext mode. rows: what the robots'
        rows must hold (None: the schema's checks only, for tests of the transport alone). dashboard_endpoint: where
        dashboards subscribe to telemetry and send software stops (telemetry.DashboardFeed)."""
        self.store, self.rows = store, rows
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
        self.dashboard = None if dashboard_endpoint is None else DashboardFeed(
            self.context, dashboard_endpoint, self.security, self._reject, _bind)
        self.routes: dict[str, bytes] = {}  # robot -> the route it was last heard on (for commands)
        self._policy: tuple[PolicyAnnouncement, bytes] | None = None
        self._policy_lock = threading.Lock()
        self._announce_now = threading.Event()
        self.heartbeat_s = heartbeat_s
        self.rejected: collections.Counter[str] = collections.Counter()
        self.quarantined: collections.Counter[str] = collections.Counter()  # chunks stored aside, by reason
        self.robots: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.last_heard: dict[str, float] = {}
        self.statuses: dict[str, Status] = {}  # the latest each robot reported
        # Lockstep pacing: (robots heard lately, rows stored for training) -> the rows they may still send, all
        # together (the learner's, from the updates it has made); None grants without limit. Each gets an equal share.
        self.credit: Callable[[int, int], int] | None = None
        self.stored_rows = store.count()  # for training, quarantined rows aside; kept up to date as batches land
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def publish(self, artifact: str | Path, signature: str = "") -> PolicyAnnouncement:
        """Make `artifact` the policy robots should run; announced now and again every heartbeat (latest only).
        `signature`: the gate's, in hex; robots with a trusted key refuse an artifact without a valid one."""
        data = Path(artifact).read_bytes()
        version = read_artifact_metadata(data, str(artifact)).weights_sha256[:16]  # what robots report running
        announcement = PolicyAnnouncement(version, hashlib.sha256(data).hexdigest(), len(data), signature)
        with self._policy_lock:
            self._policy = (announcement, data)
        self._announce_now.set()
        log.info("publishing policy %s (%d bytes) from %s", version, len(data), artifact)
        return announcement

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        if self.dashboard is not None:
            poller.register(self.dashboard.socket, zmq.POLLIN)
        next_announcement = 0.0
        try:
            while not self._stop.is_set():
                due_ms = 100 if self.dashboard is None else 1e3 * (self.dashboard.next_flush - time.monotonic())
                ready = dict(poller.poll(timeout=min(100, max(0, due_ms))))
                if self.socket in ready:
                    self._drain()
                if self.dashboard is not None:
                    if self.dashboard.socket in ready:
                        for route, command in self.dashboard.receive():
                            self._relay(route, command)
                    self.dashboard.flush(time.monotonic(), self.statuses, self.last_heard)
                if self._monitor in ready:
                    event = recv_monitor_message(self._monitor)
                    self._reject("unauthenticated", f"handshake refused (event {event['event']}) from a peer "
                                                    f"on {event['endpoint']!r}")
                if time.monotonic() >= next_announcement or self._announce_now.is_set():
                    self._announce_now.clear()
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
            if self.dashboard is not None:
                self.dashboard.close()
            if self.security:
                self.security.stop()

    def _relay(self, route: bytes, command: RobotCommand) -> None:
        """An operator's command to the robot it names, or to every robot heard lately (FLEET); the dashboard is told
        which robots it went to. Whether each applied it, their statuses say."""
        now = time.monotonic()
        heard = sorted(robot for robot, at in self.last_heard.items() if now - at < ACTIVE_ROBOT_S)
        targets = heard if command.robot_id == FLEET else [command.robot_id] if command.robot_id in heard else []
        for robot in targets:
            self.socket.send_multipart([self.routes[robot], encode(
                RobotCommand(robot, command.command, command.command_id, command.issued_by))])
        detail = "" if targets else (f"no robot has been heard in the last {ACTIVE_ROBOT_S:g} s"
                                     if command.robot_id == FLEET else f"robot {command.robot_id!r} has not been heard "
                                                                       f"in the last {ACTIVE_ROBOT_S:g} s")
        log.warning("%s by %s (command %s) sent to %s", command.command, command.issued_by, command.command_id,
                    ", ".join(targets) or f"no robot: {detail}")
        self.dashboard.reply(route, CommandReceipt(command.command_id, targets, detail))

    def _reject(self, reason: str, detail: str, error: Exception | None = None) -> None:
        self.rejected[reason] += 1
        if first_and_doubling(self.rejected[reason]):
            log.warning("rejected a message (%s, %d so far): %s", reason, self.rejected[reason], detail, exc_info=error)

    def _drain(self) -> None:
        """Handle what has arrived (up to DRAIN_LIMIT messages); store its batches in one commit, then ack them.
        Whatever one message does, it is counted and the server serves on."""
        batches: list[tuple[bytes, TransitionBatch, tuple[str, str] | None]] = []
        for _ in range(DRAIN_LIMIT):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                batch = self._handle(frames)
            except Exception as error:  # a check this server forgot: counted, and it serves on
                self._reject("error", f"{type(error).__name__}: {error}", error)
                continue
            if batch is not None:
                batches.append(batch)
        if not batches:
            return
        try:
            verdicts = self.store.store_batches([b for _, b, _ in batches], time.monotonic_ns(),
                                                [problem for _, _, problem in batches])
        except Exception as error:  # nothing acked: the robots keep the rows and send them again
            self._reject("store", f"{len(batches)} batches not stored: {type(error).__name__}: {error}", error)
            return
        acks: dict[tuple[bytes, str, str], int] = {}
        for (route, batch, problem), verdict in zip(batches, verdicts):
            stats = self.robots[batch.robot_id]
            stats["batches"] += 1
            stats["transitions" if problem is None else "quarantined"] += verdict.stored
            self.stored_rows += verdict.stored if problem is None else 0
            stats["duplicates"] += verdict.duplicates
            stats["out_of_order"] += verdict.out_of_order
            if problem is not None and verdict.stored:
                self.quarantined[problem[0]] += 1
                if first_and_doubling(self.quarantined[problem[0]]):
                    log.warning("quarantined a chunk of %s (%s, %d so far): %s", batch.robot_id, problem[0],
                                self.quarantined[problem[0]], problem[1])
            if problem is None and verdict.stored:
                new = batch.rows.from_seq(batch.rows.last_seq - verdict.stored + 1)
                stats["plan_fallbacks"] += int(new.columns["plan_fallback"].sum())
                if self.dashboard is not None:
                    self.dashboard.add(batch.robot_id, new)
            through = self.store.held_through(batch.robot_id, batch.outbox_id)
            if through is not None:
                acks[(route, batch.robot_id, batch.outbox_id)] = through
        for (route, robot_id, outbox_id), through in acks.items():
            self.socket.send_multipart([route, encode(Ack(robot_id, outbox_id, through))])
            self._send_credit(route, robot_id)

    def _send_credit(self, route: bytes, robot_id: str) -> None:
        """After each ack and heartbeat: the robot's share of the learner's credit (see Credit)."""
        if self.credit is None:
            rows = MAX_SEQ - 1
        else:
            now = time.monotonic()
            active = max(1, sum(1 for heard in self.last_heard.values() if now - heard < ACTIVE_ROBOT_S))
            rows = max(0, self.credit(active, self.stored_rows) // active)
        self.socket.send_multipart([route, encode(Credit(robot_id, rows))])

    def _handle(self, frames: list[zmq.Frame]):
        """Answer one message; a transition batch is returned (with its route and any problem of its rows) to be
        stored with the others."""
        if len(frames) != 2:
            return self._reject("framing", f"{len(frames)} frames")
        route, payload = frames
        if route.bytes[:1] != b"\0":  # the peer chose its own routing id: it could take another robot's replies
            return self._reject("identity", f"a connection set its own routing id {route.bytes[:64]!r}; robots "
                                            "must let the learner assign one")
        try:
            message = decode(payload.bytes)
        except MessageError as error:
            return self._reject(error.reason, str(error))
        sender = getattr(message, "robot_id", getattr(message, "sender", None))
        if self.security is not None and self.security.name_of(payload) != sender:
            return self._reject("identity", f"{sender!r:.40} is not the robot whose key signed the connection")
        self.last_heard[sender] = time.monotonic()
        self.routes[sender] = route.bytes
        if isinstance(message, TransitionBatch):
            problem = self.rows.problem(message.rows) if self.rows is not None else None
            if problem is not None and problem[0] in REFUSED:
                return self._reject(problem[0], f"{sender}: {problem[1]}")
            return route.bytes, message, problem
        if isinstance(message, Heartbeat):
            reply = Heartbeat("learner", time.monotonic_ns())
        elif isinstance(message, Status):
            self.statuses[sender] = message
            return None
        elif isinstance(message, PolicyRequest):
            with self._policy_lock:
                policy = self._policy
            if policy is None or policy[0].version != message.version:
                return self._reject("policy_version", f"{sender} asked for {message.version:.40}, not the current one")
            reply = PolicyBlob(policy[0].version, policy[0].sha256, policy[1])
        else:
            return self._reject("kind", f"{message.KIND} is not for the learner")
        self.socket.send_multipart([route.bytes, encode(reply)])
        if isinstance(message, Heartbeat):
            self._send_credit(route.bytes, sender)
        return None


def _bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind, choosing a free port for 'tcp://host:0'; return the endpoint bound."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        host = endpoint.rsplit(":", 1)[0]
        return f"{host}:{socket.bind_to_random_port(host)}"
    socket.bind(endpoint)
    return endpoint
