"""The robot's link to the learner: ships the transition log, and receives new policies.

Shipping is go-back-N over the log's seqs: up to `window` batches are in flight (each the log's chunks, small
consecutive ones merged up to `batch_rows`), the learner acks cumulatively (every seq up to N is stored), and the log
deletes what was acked. If the oldest chunk in flight has no ack within the timeout, the link goes back to the first
unacknowledged seq and sends again from there (the learner counts what it already has as duplicates), so an outage or
a learner restart loses nothing.

Policies: announcements arrive on a SUB socket that keeps only the newest (CONFLATE). The link fetches the artifact,
checks its sha256 against the announcement, writes it and its signature atomically, loads it (which verifies the
signature against the robot's trusted key and checks the metadata against the robot), and hands it to the agent, which
swaps it in at the next episode boundary. Status reports say which version is running, and the robot's safety state:
every heartbeat, and at once when its e-stop or fault latch changes or a command arrives.

Commands: an operator's software stop (or reset) reaches the robot from the learner as a RobotCommand, and the link
latches (or releases) the agent's e-stop, as SIGUSR1 (SIGUSR2) would. If the learner goes away, nothing changes on the
robot: the latch stays as it is, and the watchdog and the hardware e-stop remain the safety layer.

With each ack and heartbeat the learner grants credit: how many more rows this robot may record. A lockstep robot waits
for it between episodes, so a slow learner slows the robot instead of falling behind (the agent reads
`credit_through`).

Heartbeats tell the link whether the learner is alive; ZeroMQ reconnects underneath with exponential backoff. One
thread owns both sockets, and no call blocks without a timeout.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import zmq

from robot_app.agent.loading import SIGNATURE_SUFFIX
from robot_app.agent.transition_log import PendingChunk, TransitionLog
from robot_app.common.files import write_atomic
from robot_app.common.logs import first_and_doubling
from robot_app.transport.keys import secure_client
from robot_app.transport.messages import (
    Ack, Credit, Heartbeat, MessageError, PolicyAnnouncement, PolicyBlob, PolicyRequest, RobotCommand, Status,
    TransitionBatch, TransitionChunk, decode, encode,
)

log = logging.getLogger(__name__)


class RobotLink:
    def __init__(self, transitions: TransitionLog, endpoint: str, robot_id: str,
                 security_files: tuple[str, str] | None, window: int = 8, batch_rows: int = 256,
                 ack_timeout_s: float = 2.0, heartbeat_s: float = 1.0, context: zmq.Context | None = None,
                 announcements: str | None = None, policy_dir: str | Path | None = None,
                 load_policy: Callable[[str], object] | None = None, on_policy: Callable[[object], None] | None = None,
                 running_version: Callable[[], str] = lambda: "", agent=None):
        """security_files: (this robot's secret key file, the learner's public key file), or None for plaintext.
        announcements: the learner's PUB endpoint; with it, policy_dir, load_policy (path -> checked policy) and
        on_policy (the agent's request_policy) receive new policies. agent: the Agent whose safety state the status
        reports and whose e-stop commands latch (None: the link alone, as in transport tests)."""
        self.transitions, self.robot_id = transitions, robot_id
        self.window, self.batch_rows, self.ack_timeout_s, self.heartbeat_s = window, batch_rows, ack_timeout_s, heartbeat_s
        context = context or zmq.Context.instance()
        self.socket = context.socket(zmq.DEALER)  # no routing id of its own: the learner's ROUTER assigns one
        self.socket.linger = 0
        self.socket.sndhwm = self.socket.rcvhwm = 2 * window
        self.socket.reconnect_ivl, self.socket.reconnect_ivl_max = 100, 5000  # ms: exponential backoff
        self.socket.sndtimeo = 0
        if security_files:
            secure_client(self.socket, *security_files)
        self.socket.connect(endpoint)
        self.announcements = None
        if announcements:
            self.announcements = context.socket(zmq.SUB)
            self.announcements.conflate = True  # only the newest announcement matters
            self.announcements.linger = 0
            if security_files:
                secure_client(self.announcements, *security_files)
            self.announcements.subscribe(b"")
            self.announcements.connect(announcements)
        self.policy_dir = Path(policy_dir) if policy_dir else None
        self.load_policy, self.on_policy, self.running_version = load_policy, on_policy, running_version
        self.agent = agent
        self.last_command = ""  # the id of the last command applied
        self.commands = 0
        self._reported: tuple[str, str, str] | None = None  # (estop, fault, last command) in the last status sent
        self.wanted: PolicyAnnouncement | None = None  # announced, not yet fetched and loaded
        self.loaded_versions: list[str] = []
        self.policy_errors = 0
        self.last_policy_error = ""
        self.refused_versions: set[str] = set()
        self.in_flight: list[tuple[int, float]] = []  # (last seq, when sent) of each chunk in flight, in seq order
        self.acked_through = transitions.acked_through()
        self.cursor = self.highest_sent = self.acked_through  # the last seq sent; the highest ever sent
        self.sent = self.acked = self.resends = 0
        self.credit_through: int | None = None  # lockstep: the last seq the learner lets this robot record (Credit)
        self.learner_alive = False
        self.rejected = 0  # messages from the learner that did not decode
        self.errors = 0  # turns of the loop that raised (and were survived)
        self._last_heard = 0.0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.announcements is not None:
            poller.register(self.announcements, zmq.POLLIN)
        next_heartbeat = 0.0
        try:
            while not self._stop.is_set() and not self.transitions.closed:
                try:
                    next_heartbeat = self._turn(poller, next_heartbeat)
                except Exception as error:  # whatever one turn met, the link goes on: it is the robot's only way out
                    if isinstance(error, sqlite3.ProgrammingError) and self.transitions.closed:
                        log.info("the transition log was closed: the link stops")  # between the check and a query
                        break
                    self.errors += 1
                    if first_and_doubling(self.errors):
                        log.exception("robot link error (%d so far): %s", self.errors, error)
                    self._stop.wait(0.1)
        finally:
            self.socket.close(linger=0)
            if self.announcements is not None:
                self.announcements.close(linger=0)

    def _turn(self, poller: zmq.Poller, next_heartbeat: float) -> float:
        """Fill the window, take what arrived, heartbeat when due, and check liveness and timeouts; the next beat."""
        now = time.monotonic()
        self._fill_window(now)
        ready = dict(poller.poll(10))  # ms: also how soon new outbox rows go out
        if self.socket in ready:
            self._receive_all()
        if self.announcements is not None and self.announcements in ready:
            self._receive(self.announcements.recv())
        safety = (*self.agent.safety_state(), self.last_command) if self.agent is not None else ("", "", "")
        if now >= next_heartbeat:
            self._send(Heartbeat(self.robot_id, time.monotonic_ns()))
            self._send_status(safety)
            if self.wanted is not None:  # ask (again) until the artifact arrives
                self._send(PolicyRequest(self.robot_id, self.wanted.version))
            next_heartbeat = now + self.heartbeat_s
        elif safety != self._reported:  # a latch changed or a command arrived: the operator sees it now
            self._send_status(safety)
        self._check_liveness(now)
        self._check_timeouts(now)
        return next_heartbeat

    def _send_status(self, safety: tuple[str, str, str]) -> None:
        report = self.agent.report() if self.agent is not None else {}
        counters = {"sent": self.sent, "acked": self.acked, "resends": self.resends,
                    "policy_errors": self.policy_errors, "rejected": self.rejected, "errors": self.errors,
                    "commands": self.commands}
        estop, fault, last_command = safety
        if self._send(Status(self.robot_id, self.running_version(), counters, estop, fault, report.get("episode", 0),
                             report.get("jitter_p99_us", 0.0), self.transitions.appended_through - self.acked_through,
                             report.get("interventions", {}), last_command)):
            self._reported = safety

    def _send(self, message) -> bool:
        try:
            self.socket.send(encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:  # the learner is not there and the socket's bounded queue is full
            return False

    def _fill_window(self, now: float) -> None:
        """Send what is pending, small consecutive chunks merged into batches of about batch_rows."""
        free = self.window - len(self.in_flight)
        if free <= 0:
            return
        group: list[PendingChunk] = []
        for chunk in self.transitions.pending(after_seq=self.cursor, max_rows=free * self.batch_rows):
            if group and (chunk.robot_id != group[0].robot_id or _rows(group) + _rows([chunk]) > self.batch_rows):
                if not self._send_group(group, now) or len(self.in_flight) >= self.window:
                    return
                group = []
            group.append(chunk)
        if group:
            self._send_group(group, now)

    def _send_group(self, group: list[PendingChunk], now: float) -> bool:
        packed = group[0].packed if len(group) == 1 else TransitionChunk.concat(
            [TransitionChunk.unpack(c.packed, check=False) for c in group]).pack()
        if not self._send(TransitionBatch(group[0].robot_id, self.transitions.outbox_id, self.acked_through, packed)):
            return False
        self.in_flight.append((group[-1].last_seq, now))
        self.cursor = group[-1].last_seq
        self.highest_sent = max(self.highest_sent, self.cursor)
        self.sent += _rows(group)
        return True

    def _receive_all(self) -> None:
        """Everything waiting (bounded by the socket's queue); the acks among it are applied in one transaction."""
        acked_to, credit = self.acked_through, None
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            message = self._receive(data)
            if isinstance(message, Ack) and message.outbox_id == self.transitions.outbox_id:
                acked_to = max(acked_to, min(message.up_to_seq, self.highest_sent))
            elif isinstance(message, Credit) and message.robot_id == self.robot_id:
                credit = message.rows
        if acked_to > self.acked_through:
            self.acked += self.transitions.acknowledge(acked_to)
            self.acked_through, self.cursor = acked_to, max(self.cursor, acked_to)
            self.in_flight = [(last, sent) for last, sent in self.in_flight if last > acked_to]
        if credit is not None:  # from the acks taken with it (a heartbeat's may predate an ack: a batch too generous)
            self.credit_through = self.acked_through + credit

    def _receive(self, data: bytes):
        try:
            message = decode(data)
        except MessageError as error:
            self.rejected += 1
            if first_and_doubling(self.rejected):
                log.warning("dropped a message from the learner (%d so far): %s", self.rejected, error)
            return None
        self._last_heard = time.monotonic()
        if isinstance(message, PolicyAnnouncement) and self.on_policy is not None:
            if message.version not in (self.running_version(), *self.loaded_versions[-1:], *self.refused_versions):
                self.wanted = message
                self._send(PolicyRequest(self.robot_id, message.version))
        elif isinstance(message, PolicyBlob) and self.wanted is not None and message.version == self.wanted.version:
            self._install(message)
        elif isinstance(message, RobotCommand) and message.robot_id == self.robot_id and self.agent is not None:
            self._apply(message)
        return message

    def _apply(self, command: RobotCommand) -> None:
        self.commands += 1
        if command.command == "software_stop":
            log.warning("software stop from %s (command %s): e-stop latched", command.issued_by, command.command_id)
            self.agent.request_estop(f"software stop by {command.issued_by}")
        else:
            log.warning("e-stop reset from %s (command %s)", command.issued_by, command.command_id)
            self.agent.request_estop_reset()
        self.last_command = command.command_id

    def _install(self, blob: PolicyBlob) -> None:
        wanted, self.wanted = self.wanted, None
        digest = hashlib.sha256(blob.data).hexdigest()
        if digest != wanted.sha256 or len(blob.data) != wanted.size:
            self._refuse(blob.version, f"sha256 {digest} / {len(blob.data)} bytes, announced {wanted.sha256} / "
                                       f"{wanted.size}")
            return
        path = self.policy_dir / f"policy-{blob.version}.onnx"
        write_atomic(path.with_name(path.name + SIGNATURE_SUFFIX), wanted.signature.encode())
        write_atomic(path, blob.data)
        try:
            policy = self.load_policy(str(path))
        except ValueError as error:  # ArtifactError: unsigned or badly signed, for another robot, or broken
            self._refuse(blob.version, str(error))
            return
        self.loaded_versions.append(blob.version)
        log.info("policy %s verified and loaded; it takes over at the next episode boundary", blob.version)
        self.on_policy(policy)

    def _refuse(self, version: str, reason: str) -> None:
        """The agent keeps the policy it runs; the refusal is counted, logged and kept for status."""
        self.policy_errors += 1
        self.refused_versions.add(version)  # not fetched again, however often it is announced
        self.last_policy_error = f"{version}: {reason}"
        log.error("policy %s refused: %s", version, reason)

    def _check_liveness(self, now: float) -> None:
        alive = now - self._last_heard < 3 * self.heartbeat_s
        if alive != self.learner_alive:
            (log.info if alive else log.warning)("learner %s", "reachable" if alive else "unreachable; holding data")
            self.learner_alive = alive

    def _check_timeouts(self, now: float) -> None:
        if self.in_flight and now - self.in_flight[0][1] > self.ack_timeout_s:
            # Go back to the first unacknowledged seq and send again from there.
            self.cursor = self.acked_through
            self.resends += len(self.in_flight)
            self.in_flight.clear()


def _rows(chunks: list[PendingChunk]) -> int:
    return chunks[-1].last_seq - chunks[0].first_seq + 1
