"""The robot's shipper: sends its transition log to the learner in batches and deletes only what the learner acked.

A bounded window of batches is in flight. A batch not acknowledged within the timeout is sent again from there (the
learner drops what it already has), so an outage or a learner restart loses nothing. Heartbeats tell it whether the
learner is alive; ZeroMQ reconnects underneath with exponential backoff. No call blocks without a timeout.
"""

from __future__ import annotations

import logging
import threading
import time

import zmq

from robot_app.agent.transition_log import TransitionLog
from robot_app.transport.keys import secure_client
from robot_app.transport.messages import Ack, Heartbeat, MessageError, TransitionBatch, decode, encode

log = logging.getLogger(__name__)


class Shipper:
    def __init__(self, transitions: TransitionLog, endpoint: str, robot_id: str,
                 security_files: tuple[str, str] | None, batch_rows: int = 256, window: int = 4,
                 ack_timeout_s: float = 2.0, heartbeat_s: float = 1.0, context: zmq.Context | None = None):
        """security_files: (this robot's secret key file, the learner's public key file), or None for plaintext."""
        self.transitions, self.robot_id = transitions, robot_id
        self.batch_rows, self.window, self.ack_timeout_s, self.heartbeat_s = batch_rows, window, ack_timeout_s, heartbeat_s
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.routing_id = robot_id.encode()
        self.socket.linger = 0
        self.socket.sndhwm = self.socket.rcvhwm = 2 * window
        self.socket.reconnect_ivl, self.socket.reconnect_ivl_max = 100, 5000  # ms: exponential backoff
        self.socket.sndtimeo = 0
        if security_files:
            secure_client(self.socket, *security_files)
        self.socket.connect(endpoint)
        self.in_flight: dict[tuple[int, int], float] = {}  # (first id, last id) -> when sent
        self.cursor = 0  # the last outbox id sent
        self.sent = self.acked = self.resends = 0
        self.learner_alive = False
        self._last_heard = 0.0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        next_heartbeat = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._fill_window(now)
                if self.socket.poll(50, zmq.POLLIN):
                    self._receive(self.socket.recv())
                if now >= next_heartbeat:
                    self._send(Heartbeat(self.robot_id, time.monotonic_ns()))
                    next_heartbeat = now + self.heartbeat_s
                self._check_liveness(now)
                self._check_timeouts(now)
        finally:
            self.socket.close(linger=0)

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
