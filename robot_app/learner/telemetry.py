"""The learner's feed to operator dashboards, and the software stops they send back to the robots.

One ROUTER socket, CURVE-secured with the dashboards' own admitted keys. A dashboard heartbeats; while it does, it
receives a Telemetry message FLUSH_HZ times a second: every robot's latest status and link age (in every message, so
safety state is never dropped), and the rows stored since the last message. Every buffer is bounded: rows wait in a
ring per robot (the oldest dropped and counted past MAX_ROWS_HELD), and a dashboard whose queue is full misses that
message (counted), never holding memory for it. The ingest server owns the socket and drives it from its own thread.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable

import zmq

from robot_app.transport.keys import DASHBOARD_DOMAIN, ServerSecurity
from robot_app.transport.messages import (
    MAX_MESSAGE_BYTES, CommandReceipt, Heartbeat, MessageError, RobotCommand, Status, Telemetry, TransitionChunk,
    decode, encode,
)

log = logging.getLogger(__name__)
FLUSH_HZ = 25
MAX_ROWS_HELD = 2048  # per robot between two flushes (4 s at 500 Hz)
DASHBOARD_TIMEOUT_S = 3.0  # a dashboard silent this long gets no more telemetry
FLEET = "*"  # a command's robot_id for every robot


class DashboardFeed:
    def __init__(self, context: zmq.Context, endpoint: str, security: ServerSecurity | None,
                 reject: Callable[[str, str], None], bind: Callable[[zmq.Socket, str], str]):
        """reject(reason, detail): how the ingest server counts what it drops; bind: its binder (port 0 chooses)."""
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.router_mandatory = True  # a full queue raises Again, so a slow dashboard's misses are counted
        self.socket.sndhwm, self.socket.rcvhwm = 64, 100
        self.socket.maxmsgsize = MAX_MESSAGE_BYTES
        if security is not None:
            security.secure(self.socket, DASHBOARD_DOMAIN)
        self.endpoint = bind(self.socket, endpoint)
        self.reject = reject
        self.dashboards: dict[bytes, float] = {}  # route -> when last heard
        self._rows: dict[str, collections.deque[TransitionChunk]] = collections.defaultdict(collections.deque)
        self._held: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()  # rows per robot dropped from the ring
        self.missed = 0  # telemetry messages a dashboard's full queue refused
        self.seq = 0
        self.next_flush = 0.0

    def add(self, robot_id: str, chunk: TransitionChunk) -> None:
        """Rows just stored; held for the next flush while a dashboard listens."""
        if not self.dashboards:
            return
        ring = self._rows[robot_id]
        ring.append(chunk)
        self._held[robot_id] += len(chunk)
        while self._held[robot_id] > MAX_ROWS_HELD:
            oldest = ring.popleft()
            self._held[robot_id] -= len(oldest)
            self.dropped[robot_id] += len(oldest)

    def receive(self) -> list[tuple[bytes, RobotCommand]]:
        """Take what the dashboards sent: heartbeats keep them subscribed; commands are returned, to be relayed."""
        commands = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return commands
            if len(frames) != 2:
                self.reject("framing", f"dashboard: {len(frames)} frames")
                continue
            route, payload = frames
            try:
                message = decode(payload)
            except MessageError as error:
                self.reject(error.reason, f"dashboard: {error}")
                continue
            if isinstance(message, Heartbeat):
                if route not in self.dashboards:
                    log.info("a dashboard subscribed to telemetry")
                self.dashboards[route] = time.monotonic()
            elif isinstance(message, RobotCommand):
                self.dashboards[route] = time.monotonic()
                commands.append((route, message))
            else:
                self.reject("kind", f"dashboard: {message.KIND} is not for the learner")

    def reply(self, route: bytes, receipt: CommandReceipt) -> None:
        self._send(route, encode(receipt))

    def flush(self, now: float, statuses: dict[str, Status], last_heard: dict[str, float]) -> None:
        """One Telemetry message to every live dashboard, when due."""
        if now < self.next_flush:
            return
        self.next_flush = now + 1.0 / FLUSH_HZ
        for route, heard in list(self.dashboards.items()):
            if now - heard > DASHBOARD_TIMEOUT_S:
                del self.dashboards[route]
                log.info("a dashboard went silent: no more telemetry to it")
        if not self.dashboards:
            self._rows.clear()
            self._held.clear()
            return
        joined = {robot: self._joined(robot, ring) for robot, ring in self._rows.items() if ring}
        self._rows.clear()
        self._held.clear()
        self.seq += 1
        ages = {robot: round(now - heard, 3) for robot, heard in last_heard.items()}
        bodies = {robot: status.body() for robot, status in statuses.items()}
        try:
            message = encode(Telemetry(self.seq, ages, bodies, {robot: chunk.pack() for robot, chunk in joined.items()},
                                       dict(self.dropped)))
        except ValueError:  # more rows than one message holds (many robots' full rings): the safety state goes alone
            for robot, chunk in joined.items():
                self.dropped[robot] += len(chunk)
            message = encode(Telemetry(self.seq, ages, bodies, {}, dict(self.dropped)))
        for route in list(self.dashboards):
            self._send(route, message)

    def _joined(self, robot: str, ring: collections.deque[TransitionChunk]) -> TransitionChunk:
        """The ring's rows as one chunk; rows before a break in the seqs (a new outbox) are dropped and counted."""
        chunks = list(ring)
        start = len(chunks) - 1
        while start > 0 and chunks[start - 1].last_seq + 1 == chunks[start].first_seq:
            start -= 1
        self.dropped[robot] += sum(len(chunk) for chunk in chunks[:start])
        return chunks[start] if start == len(chunks) - 1 else TransitionChunk.concat(chunks[start:])

    def _send(self, route: bytes, data: bytes) -> None:
        try:
            self.socket.send_multipart([route, data], zmq.NOBLOCK)
        except zmq.Again:  # that dashboard is not reading: it misses this one
            self.missed += 1
        except zmq.ZMQError as error:  # EHOSTUNREACH: it went away
            if error.errno != zmq.EHOSTUNREACH:
                raise
            self.dashboards.pop(route, None)

    def close(self) -> None:
        self.socket.close(linger=0)
