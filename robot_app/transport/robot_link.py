"""The robot's link to the learner: ships the transition log, and receives new policies.

Shipping: a bounded window of batches is in flight, and rows are deleted from the log only once the learner acks them.
A batch not acknowledged within the timeout is sent again from there (the learner drops what it already has), so an
outage or a learner restart loses nothing.

Policies: announcements arrive on a SUB socket that keeps only the newest (CONFLATE). The link fetches the artifact,
checks its sha256 against the announcement, writes it atomically, loads and checks it against the robot, and hands it
to the agent, which swaps it in at the next episode boundary. Status reports say which version is running.

Heartbeats tell the link whether the learner is alive; ZeroMQ reconnects underneath with exponential backoff. One
thread owns both sockets, and no call blocks without a timeout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

import zmq

from robot_app.agent.transition_log import TransitionLog
from robot_app.transport.keys import secure_client
from robot_app.transport.messages import (
    Ack, Heartbeat, MessageError, PolicyAnnouncement, PolicyBlob, PolicyRequest, Status, TransitionBatch, decode, encode,
)

log = logging.getLogger(__name__)


class RobotLink:
    def __init__(self, transitions: TransitionLog, endpoint: str, robot_id: str,
                 security_files: tuple[str, str] | None, batch_rows: int = 256, window: int = 4,
                 ack_timeout_s: float = 2.0, heartbeat_s: float = 1.0, context: zmq.Context | None = None,
                 announcements: str | None = None, policy_dir: str | Path | None = None,
                 load_policy: Callable[[str], object] | None = None, on_policy: Callable[[object], None] | None = None,
                 running_version: Callable[[], str] = lambda: ""):
        """security_files: (this robot's secret key file, the learner's public key file), or None for plaintext.
        announcements: the learner's PUB endpoint; with it, policy_dir, load_policy (path -> checked policy) and
        on_policy (the agent's request_policy) receive new policies."""
        self.transitions, self.robot_id = transitions, robot_id
        self.batch_rows, self.window, self.ack_timeout_s, self.heartbeat_s = batch_rows, window, ack_timeout_s, heartbeat_s
        context = context or zmq.Context.instance()
        self.socket = context.socket(zmq.DEALER)
        self.socket.routing_id = robot_id.encode()
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
        self.wanted: PolicyAnnouncement | None = None  # announced, not yet fetched and loaded
        self.loaded_versions: list[str] = []
        self.policy_errors = 0
        self.in_flight: dict[tuple[int, int], float] = {}  # (first id, last id) -> when sent
        self.cursor = 0  # the last outbox id sent
        self.sent = self.acked = self.resends = 0
        self.learner_alive = False
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
            while not self._stop.is_set():
                now = time.monotonic()
                self._fill_window(now)
                ready = dict(poller.poll(50))
                if self.socket in ready:
                    self._receive(self.socket.recv())
                if self.announcements is not None and self.announcements in ready:
                    self._receive(self.announcements.recv())
                if now >= next_heartbeat:
                    self._send(Heartbeat(self.robot_id, time.monotonic_ns()))
                    self._send(Status(self.robot_id, self.running_version(), {
                        "sent": self.sent, "acked": self.acked, "resends": self.resends,
                        "policy_errors": self.policy_errors}))
                    if self.wanted is not None:  # ask (again) until the artifact arrives
                        self._send(PolicyRequest(self.robot_id, self.wanted.version))
                    next_heartbeat = now + self.heartbeat_s
                self._check_liveness(now)
                self._check_timeouts(now)
        finally:
            self.socket.close(linger=0)
            if self.announcements is not None:
                self.announcements.close(linger=0)

    def _send(self, message) -> bool:
        try:
            self.socket.send(encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:  # the learner is not there and the socket's bounded queue is full
            return False

    def _fill_window(self, now: float) -> None:
        while len(self.in_flight) < self.window:
            rows = self.transitions.read(after_id=self.cursor, limit=self.batch_rows)
            if not rows or not self._send(TransitionBatch.from_rows(self.robot_id, rows)):
                return
            self.in_flight[(rows[0][0], rows[-1][0])] = now
            self.cursor = rows[-1][0]
            self.sent += len(rows)

    def _receive(self, data: bytes) -> None:
        try:
            message = decode(data)
        except MessageError as error:
            log.warning("dropped a message from the learner: %s", error)
            return
        self._last_heard = time.monotonic()
        if isinstance(message, Ack) and message.robot_id == self.robot_id:
            if self.in_flight.pop((message.from_id, message.up_to_id), None) is not None:
                self.acked += self.transitions.acknowledge(message.from_id, message.up_to_id)
        elif isinstance(message, PolicyAnnouncement) and self.on_policy is not None:
            if message.version not in (self.running_version(), *self.loaded_versions[-1:]):
                self.wanted = message
                self._send(PolicyRequest(self.robot_id, message.version))
        elif isinstance(message, PolicyBlob) and self.wanted is not None and message.version == self.wanted.version:
            self._install(message)

    def _install(self, blob: PolicyBlob) -> None:
        wanted, self.wanted = self.wanted, None
        digest = hashlib.sha256(blob.data).hexdigest()
        if digest != wanted.sha256 or len(blob.data) != wanted.size:
            self.policy_errors += 1
            log.error("policy %s refused: sha256 %s / %d bytes, announced %s / %d", blob.version, digest,
                      len(blob.data), wanted.sha256, wanted.size)
            return
        path = self.policy_dir / f"policy-{blob.version}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob.data)
        os.replace(tmp, path)
        try:
            policy = self.load_policy(str(path))
        except ValueError as error:  # ArtifactError: a policy for another robot or a broken file
            self.policy_errors += 1
            log.error("policy %s refused: %s", blob.version, error)
            return
        self.loaded_versions.append(blob.version)
        log.info("policy %s verified and loaded; it takes over at the next episode boundary", blob.version)
        self.on_policy(policy)

    def _check_liveness(self, now: float) -> None:
        alive = now - self._last_heard < 3 * self.heartbeat_s
        if alive != self.learner_alive:
            (log.info if alive else log.warning)("learner %s", "reachable" if alive else "unreachable; holding data")
            self.learner_alive = alive

    def _check_timeouts(self, now: float) -> None:
        if self.in_flight and now - min(self.in_flight.values()) > self.ack_timeout_s:
            # Go back to the oldest unacknowledged batch and send again from there.
            self.cursor = min(first for first, _ in self.in_flight) - 1
            self.resends += len(self.in_flight)
            self.in_flight.clear()
