"""The dashboard's end of the learner's feed: one thread that subscribes to telemetry, keeps the fleet's state, turns
rows into the page's plot data, and sends operators' commands to the learner."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import queue
import threading
import time
import uuid
from typing import Callable

import numpy as np
import zmq

from robot_app.learner.telemetry import FLEET
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import make_task
from robot_app.transport.keys import secure_client
from robot_app.transport.messages import (
    MAX_MESSAGE_BYTES, CommandReceipt, Heartbeat, MessageError, RobotCommand, Status, Telemetry, TransitionChunk,
    decode, encode,
)

log = logging.getLogger(__name__)
LINK_DOWN_S = 3.0  # a robot the learner has not heard for this long is shown down
RATE_WINDOW_S = 60.0  # interventions per minute, over this window
RECEIPT_KEPT_S = 10.0  # a command's receipt is awaited this long at most


def _rounded(values: np.ndarray, digits: int = 4) -> list:
    return np.round(values.astype(np.float64), digits).T.tolist()


class RobotState:
    """One robot as the fleet view shows it, from its statuses and rows."""

    def __init__(self, robot_id: str):
        self.robot_id = robot_id
        self.status: Status | None = None
        self.link_age_s = float("inf")
        self.returns: dict[int, float] = {}  # open episodes' returns so far
        self.last_return: float | None = None
        self.last_episode: int | None = None
        self.dropped = 0
        self._interventions: collections.deque[tuple[float, int]] = collections.deque()  # (time, total)
        self._ticks: collections.deque[tuple[float, int, int]] = collections.deque()  # (time, rows, plan fallbacks)

    def take(self, now: float, status: Status | None, age: float, rows: TransitionChunk | None, dropped: int) -> None:
        self.link_age_s, self.dropped = age, dropped
        if status is not None:
            self.status = status
            self._interventions.append((now, sum(status.interventions.values())))
        if rows is not None:
            c = rows.columns
            self._ticks.append((now, len(rows), int(c["plan_fallback"].sum())))
            for episode, reward, ended in zip(c["episode"].tolist(), c["reward"].tolist(),
                                              (c["terminated"] | c["truncated"]).tolist()):
                self.returns[episode] = self.returns.get(episode, 0.0) + reward
                self.last_episode = episode
                if ended:
                    self.last_return = self.returns.pop(episode)
            for episode in [e for e in self.returns if e < (self.last_episode or 0) - 1]:
                del self.returns[episode]  # an episode whose end never arrived (a robot restart)
        for window in (self._interventions, self._ticks):
            while window and now - window[0][0] > RATE_WINDOW_S:
                window.popleft()

    def plan_fallback_share(self) -> float | None:
        """Of the last minute's ticks, the share a planner ran out of time on (None: no ticks came)."""
        ticks = sum(n for _, n, _ in self._ticks)
        return sum(f for _, _, f in self._ticks) / ticks if ticks else None

    def interventions_per_min(self) -> float:
        if len(self._interventions) < 2:
            return 0.0
        (then, before), (now, total) = self._interventions[0], self._interventions[-1]
        return 60.0 * (total - before) / max(now - then, 1.0)

    def row(self) -> dict:
        s = self.status
        return {
            "robot": self.robot_id, "link_up": self.link_age_s < LINK_DOWN_S, "link_age_s": round(self.link_age_s, 2),
            "version": s.policy_version if s else "", "episode": s.episode if s else None,
            "return": round(self.returns.get(self.last_episode, 0.0), 1) if self.last_episode is not None else None,
            "last_return": None if self.last_return is None else round(self.last_return, 1),
            "estop": s.estop if s else "", "fault": s.fault if s else "",
            "jitter_p99_us": round(s.jitter_p99_us) if s else None,
            "interventions_per_min": round(self.interventions_per_min(), 1), "backlog": s.backlog if s else None,
            "plan_fallback_share": None if (share := self.plan_fallback_share()) is None else round(share, 4),
            "last_command": s.last_command if s else "", "dropped": self.dropped,
        }


class LearnerFeed:
    """Subscribes to the learner's dashboard endpoint (heartbeating every second) until stop().

    on_update(fleet, data, events) is called from this thread for each telemetry message: the fleet rows, the plot
    data as (a JSON string, its row count) or None when no rows came, and the events it raised (link lost or back,
    e-stop and fault latched or released)."""

    def __init__(self, endpoint: str, spec: RobotSpec, security_files: tuple[str, str] | None,
                 on_update: Callable[[dict, tuple[str, int] | None, list[dict]], None], heartbeat_s: float = 1.0,
                 context: zmq.Context | None = None):
        self.endpoint, self.on_update, self.heartbeat_s = endpoint, on_update, heartbeat_s
        self.spec, self.task = spec, make_task(spec)
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.rcvhwm = self.socket.sndhwm = 100
        self.socket.maxmsgsize = 2 * MAX_MESSAGE_BYTES
        self.socket.reconnect_ivl, self.socket.reconnect_ivl_max = 100, 5000
        # Queue only on a live connection: a reset refused while the learner is away must not arrive when it is back.
        self.socket.immediate = True
        if security_files:
            secure_client(self.socket, *security_files)
        self.socket.connect(endpoint)
        self.robots: dict[str, RobotState] = {}
        self.last_telemetry = 0.0  # monotonic time the last telemetry arrived
        self.messages = self.rejected = 0
        self.samples = 0  # rows received
        self._commands: queue.Queue[tuple[RobotCommand, concurrent.futures.Future]] = queue.Queue()
        self._waiting: dict[str, tuple[concurrent.futures.Future, float]] = {}  # id -> (future, sent at)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learner-feed", daemon=True)

    def start(self) -> "LearnerFeed":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def feed_age_s(self) -> float:
        return time.monotonic() - self.last_telemetry if self.last_telemetry else float("inf")

    def fleet(self) -> dict:
        return {robot: state.row() for robot, state in sorted(list(self.robots.items()))}  # the feed thread adds

    def command(self, robot_id: str | None, command: str, issued_by: str) -> concurrent.futures.Future:
        """Send a software stop or reset to one robot (or, with None, the fleet); the Future gets the learner's
        CommandReceipt."""
        message = RobotCommand(robot_id or FLEET, command, uuid.uuid4().hex[:12], issued_by)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.command_id = message.command_id
        self._commands.put((message, future))
        return future

    def _run(self) -> None:
        next_heartbeat = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._send(Heartbeat("dashboard", time.monotonic_ns()))
                    next_heartbeat = now + self.heartbeat_s
                while not self._commands.empty():
                    command, future = self._commands.get_nowait()
                    if self._send(command):
                        self._waiting[command.command_id] = (future, now)
                    else:
                        future.set_exception(ConnectionError("the learner is not reachable"))
                for command_id in [c for c, (_, sent) in self._waiting.items() if now - sent > RECEIPT_KEPT_S]:
                    del self._waiting[command_id]  # its caller gave up long ago
                if self.socket.poll(5):  # ms: how soon a command goes out
                    self._receive_all()
        except Exception:
            log.exception("the learner feed stopped")
            raise
        finally:
            self.socket.close(linger=0)

    def _send(self, message) -> bool:
        try:
            self.socket.send(encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _receive_all(self) -> None:
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode(data)
            except MessageError as error:
                self.rejected += 1
                log.warning("dropped a message from the learner (%d so far): %s", self.rejected, error)
                continue
            if isinstance(message, Telemetry):
                self._take(message)
            elif isinstance(message, CommandReceipt) and message.command_id in self._waiting:
                self._waiting.pop(message.command_id)[0].set_result(message)

    def _take(self, telemetry: Telemetry) -> None:
        now = time.monotonic()
        self.last_telemetry, self.messages = now, self.messages + 1
        events, data, count = [], {}, 0
        statuses, rows = telemetry.robot_statuses, telemetry.rows
        for robot in sorted(set(telemetry.link_age_s) | set(statuses)):
            state = self.robots.get(robot) or self.robots.setdefault(robot, RobotState(robot))
            before = state.row()
            state.take(now, statuses.get(robot), telemetry.link_age_s.get(robot, float("inf")), rows.get(robot),
                       telemetry.dropped.get(robot, 0))
            events += _changes(robot, before, state.row())
            if robot in rows:
                data[robot] = self._plot_data(rows[robot])
                count += len(rows[robot])
        self.samples += count
        self.on_update(self.fleet(), (json.dumps(data, separators=(",", ":")), count) if data else None, events)

    def _plot_data(self, rows: TransitionChunk) -> dict:
        """Columns for the page: time (s, robot clock), joint angles and velocities, command and policy action,
        reward, and whether the supervisor changed the command."""
        c = rows.columns
        return {"t": np.round(c["obs_time_ns"] / 1e9, 4).tolist(), "q": _rounded(self.task.joint_positions(c["obs"])),
                "dq": _rounded(self.task.joint_velocities(c["obs"])), "cmd": _rounded(c["action"]),
                "act": _rounded(c["policy_action"]), "r": np.round(c["reward"].astype(np.float64), 4).tolist(),
                "iv": (c["interventions"] != 0).astype(int).tolist()}


def _changes(robot: str, before: dict, after: dict) -> list[dict]:
    """The events between two rows of one robot: link, e-stop and fault changes."""
    events = []
    if before["link_up"] != after["link_up"] and (before["version"] or after["link_up"]):
        events.append({"robot": robot, "kind": "link", "text": "link up" if after["link_up"] else
                       f"link lost ({after['link_age_s']:.1f} s silent)"})
    for latch in ("estop", "fault"):
        if before[latch] != after[latch]:
            events.append({"robot": robot, "kind": latch, "text": f"{latch} latched: {after[latch]}" if after[latch]
                           else f"{latch} released (was: {before[latch]})"})
    return events
