"""The learner's dashboard feed over CURVE on 127.0.0.1: telemetry, software stops relayed and acknowledged by the
robot's own status, bounded buffers on every hop, and keys that open only their own socket."""

import dataclasses

import msgpack
import pytest
import zmq

from robot_app.agent.transition_log import TransitionLog
from robot_app.dashboard.feed import RATE_WINDOW_S, LearnerFeed, RobotState
from robot_app.dashboard.hub import MAX_QUEUED, Client, Hub
from robot_app.learner.ingest import IngestServer, IngestStore, _bind
from robot_app.learner.telemetry import MAX_ROWS_HELD, DashboardFeed
from robot_app.robot.spec import load_robot_spec
from robot_app.transport.keys import generate_keys, secure_client
from robot_app.transport.messages import (
    SCHEMA_VERSION, Ack, Heartbeat, MessageError, RobotCommand, TransitionChunk, decode, encode,
)
from robot_app.transport.robot_link import RobotLink
from tests.conftest import free_port, wait_until
from tests.transport.test_transport import start, transition


class FakeAgent:
    """What the link asks of an agent; it latches at once (the real one at its next tick)."""

    def __init__(self):
        self.estop = ""

    def safety_state(self):
        return self.estop, ""

    def report(self):
        return {"episode": 3, "jitter_p99_us": 120.0, "interventions": {"clamped": 2}}

    def request_estop(self, reason):
        self.estop = reason

    def request_estop_reset(self):
        self.estop = ""


@pytest.fixture
def keys(tmp_path):
    for name in ("learner", "robot-1", "dashboard"):
        generate_keys(tmp_path, name)
    for folder, name in (("allowed", "robot-1"), ("dashboards", "dashboard")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.key").write_bytes((tmp_path / f"{name}.key").read_bytes())
    return tmp_path


def secure_server(keys, tmp_path) -> tuple[IngestStore, IngestServer]:
    store = IngestStore(tmp_path / "ingest.sqlite")
    return store, IngestServer(store, "tcp://127.0.0.1:0", (keys / "learner.key_secret", keys / "allowed",
                                                            keys / "dashboards"),
                               context=zmq.Context(), dashboard_endpoint="tcp://127.0.0.1:0")


def test_telemetry_and_a_software_stop_round_trip_with_the_robots_own_acknowledgement(keys, tmp_path):
    store, server = secure_server(keys, tmp_path)
    server_thread = start(server.serve)
    outbox, agent = TransitionLog(tmp_path / "outbox.sqlite", chunk_rows=10), FakeAgent()
    link = RobotLink(outbox, server.endpoint, "robot-1", (keys / "robot-1.key_secret", keys / "learner.key"),
                     context=zmq.Context(), heartbeat_s=0.2, agent=agent)
    link_thread = start(link.run)
    updates = []
    feed = LearnerFeed(server.dashboard.endpoint, load_robot_spec("furuta"),
                       (keys / "dashboard.key_secret", keys / "learner.key"), on_update=lambda *u: updates.append(u),
                       heartbeat_s=0.2, context=zmq.Context()).start()
    try:
        wait_until(lambda: "robot-1" in feed.robots and feed.robots["robot-1"].status is not None, timeout_s=20)
        for step in range(50):
            outbox.append(transition("robot-1", 0, step))
        wait_until(lambda: feed.samples >= 50, timeout_s=20)
        row = feed.fleet()["robot-1"]
        assert (row["link_up"], row["episode"], row["jitter_p99_us"], row["estop"]) == (True, 3, 120, "")
        data = [d for _, d, _ in updates if d is not None]
        assert sum(rows for _, rows in data) == 50 and '"q":[[' in data[0][0]  # joint angles, a list per joint

        receipt = feed.command(None, "software_stop", "alice (dashboard)").result(timeout=5)
        assert receipt.robots == ["robot-1"] and receipt.detail == ""
        wait_until(lambda: feed.fleet()["robot-1"]["estop"] == "software stop by alice (dashboard)", timeout_s=5)
        assert feed.fleet()["robot-1"]["last_command"] == receipt.command_id
        events = [e for _, _, batch in updates for e in batch]
        assert {"robot": "robot-1", "kind": "estop", "text": "estop latched: software stop by alice (dashboard)"} \
            in events
        feed.command("robot-1", "reset", "alice (dashboard)").result(timeout=5)
        wait_until(lambda: feed.fleet()["robot-1"]["estop"] == "", timeout_s=5)
        unknown = feed.command("robot-9", "software_stop", "alice").result(timeout=5)
        assert unknown.robots == [] and "robot-9" in unknown.detail
        assert link.commands == 2
    finally:
        feed.stop()
        link.stop()
        link_thread.join(timeout=10)
        server.stop()
        server_thread.join(timeout=10)
        outbox.close()
        store.close()


def test_a_robot_key_opens_no_dashboard_socket_and_a_dashboard_key_no_robot_socket(keys, tmp_path):
    store, server = secure_server(keys, tmp_path)
    server_thread = start(server.serve)
    context = zmq.Context()
    try:
        impostor = context.socket(zmq.DEALER)
        secure_client(impostor, keys / "robot-1.key_secret", keys / "learner.key")
        impostor.connect(server.dashboard.endpoint)
        impostor.send(encode(Heartbeat("dashboard", 1)))
        impostor.send(encode(RobotCommand("*", "software_stop", "c1", "robot-1")))
        assert not impostor.poll(1500)  # no telemetry, no receipt: the handshake itself was refused
        assert not server.dashboard.dashboards
        dashboard_as_robot = context.socket(zmq.DEALER)
        secure_client(dashboard_as_robot, keys / "dashboard.key_secret", keys / "learner.key")
        dashboard_as_robot.connect(server.endpoint)
        dashboard_as_robot.send(encode(Heartbeat("dashboard", 1)))
        wait_until(lambda: server.rejected["unauthenticated"] >= 1, timeout_s=10)
        assert not server.last_heard
    finally:
        context.destroy(linger=0)
        server.stop()
        server_thread.join(timeout=10)
        store.close()


def chunk(first_seq: int, rows: int) -> TransitionChunk:
    return TransitionChunk.from_transitions(first_seq, [transition("robot-1", 0, i) for i in range(rows)])


def test_the_fleet_row_gives_the_last_minutes_share_of_ticks_a_planner_ran_out_of_time_on():
    robot = RobotState("robot-1")
    assert robot.row()["plan_fallback_share"] is None  # no ticks yet: nothing to say
    late = [dataclasses.replace(transition("robot-1", 0, i), plan_fallback=i < 5) for i in range(100)]
    robot.take(0.0, None, 0.0, TransitionChunk.from_transitions(1, late), 0)
    robot.take(1.0, None, 0.0, chunk(101, 100), 0)
    assert robot.row()["plan_fallback_share"] == 0.025  # 5 of 200
    robot.take(RATE_WINDOW_S + 0.5, None, 0.0, chunk(201, 100), 0)
    assert robot.row()["plan_fallback_share"] == 0.0  # the late ticks left the window


def test_the_learners_ring_keeps_the_newest_rows_and_counts_what_it_let_go():
    feed = DashboardFeed(zmq.Context(), "tcp://127.0.0.1:0", None, lambda *_: None,
                         _bind)
    try:
        feed.add("robot-1", chunk(1, 10))
        assert not feed._held  # no dashboard listens: nothing is held
        feed.dashboards[b"route"] = 1e12
        for i in range(30):
            feed.add("robot-1", chunk(1 + 100 * i, 100))
        assert feed._held["robot-1"] <= MAX_ROWS_HELD and feed.dropped["robot-1"] == 3000 - feed._held["robot-1"]
    finally:
        feed.close()


def test_a_dashboard_that_never_reads_costs_the_learner_bounded_memory_and_is_counted(keys):
    context = zmq.Context()
    feed = DashboardFeed(context, "tcp://127.0.0.1:0", None, lambda *_: None,
                         _bind)
    stalled = context.socket(zmq.DEALER)
    stalled.rcvhwm = 1
    stalled.connect(feed.endpoint)
    try:
        stalled.send(encode(Heartbeat("dashboard", 1)))
        wait_until(lambda: feed.receive() == [] and feed.dashboards, timeout_s=5)
        status = {}
        for i in range(400):
            feed.add("robot-1", chunk(1 + 2048 * i, 2048))
            feed.next_flush = 0.0
            feed.flush(next(iter(feed.dashboards.values())), status, {"robot-1": 0.0})
        assert feed.missed > 0 and feed.seq == 400
        assert isinstance(decode(stalled.recv()).seq, int)  # what it does read is whole
    finally:
        stalled.close(linger=0)
        feed.close()
        context.destroy(linger=0)


def test_rows_past_what_one_message_holds_are_dropped_and_counted_and_the_safety_state_still_goes(monkeypatch):
    import robot_app.transport.messages as messages

    context = zmq.Context()
    feed = DashboardFeed(context, "tcp://127.0.0.1:0", None, lambda *_: None,
                         _bind)
    listener = context.socket(zmq.DEALER)
    listener.connect(feed.endpoint)
    try:
        listener.send(encode(Heartbeat("dashboard", 1)))
        wait_until(lambda: feed.receive() == [] and feed.dashboards, timeout_s=5)
        feed.add("robot-1", chunk(1, 2000))
        monkeypatch.setattr(messages, "MAX_MESSAGE_BYTES", 20_000)  # as if many robots' rings were full
        now = next(iter(feed.dashboards.values()))
        feed.flush(now, {}, {"robot-1": now - 0.5})
        message = decode(listener.recv())
        assert message.chunks == {} and message.dropped == {"robot-1": 2000} and message.link_age_s == {"robot-1": 0.5}
    finally:
        listener.close(linger=0)
        feed.close()
        context.destroy(linger=0)


def test_a_slow_browser_keeps_its_newest_batches_and_every_message_has_the_fleets_safety_state():
    hub = Hub(lambda: 0.02)
    slow = Client("victor", "viewer")
    hub.clients.add(slow)
    for i in range(MAX_QUEUED + 30):
        hub.publish({"robot-1": {"estop": "software stop by alice" if i >= 70 else ""}}, (f'{{"n":{i}}}', 10), [])
    assert len(slow.queue) == MAX_QUEUED and slow.dropped == 300
    message = hub.message(slow)
    assert '"estop":"software stop by alice"' in message and f'{{"n":{MAX_QUEUED + 29}}}' in message
    assert '{"n":29}' not in message and '"dropped":300' in message
    assert hub.totals() == (MAX_QUEUED * 10, 300)
    assert not slow.queue


def test_a_command_refused_while_the_learner_is_away_never_arrives_when_it_is_back(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    feed = LearnerFeed(endpoint, load_robot_spec("furuta"), None, on_update=lambda *_: None, heartbeat_s=0.2,
                       context=zmq.Context()).start()
    store = IngestStore(tmp_path / "ingest.sqlite")
    server = server_thread = None
    try:
        with pytest.raises(ConnectionError, match="not reachable"):
            feed.command(None, "reset", "alice").result(timeout=5)
        server = IngestServer(store, "tcp://127.0.0.1:0", None, context=zmq.Context(), dashboard_endpoint=endpoint)
        relayed = []
        server._relay = lambda route, command: relayed.append(command)
        server_thread = start(server.serve)
        wait_until(lambda: server.dashboard.dashboards, timeout_s=20)  # connected: its heartbeats arrive
        feed.command(None, "software_stop", "alice")
        wait_until(lambda: relayed, timeout_s=5)
        assert [c.command for c in relayed] == ["software_stop"]  # the reset refused before never came
    finally:
        feed.stop()
        if server is not None:
            server.stop()
            server_thread.join(timeout=10)
        store.close()


@pytest.mark.parametrize("field, value", [("link_age_s", {"r": "far"}), ("statuses", {"r": 5}),
                                          ("chunks", {"r": b"not a chunk"}), ("dropped", {1: 2}),
                                          ("statuses", {"r": {"robot_id": "r"}})])
def test_a_telemetry_message_with_a_bad_field_is_refused_by_name(field, value):
    body = {"seq": 1, "link_age_s": {}, "statuses": {}, "chunks": {}, "dropped": {}} | {field: value}
    data = msgpack.packb({"v": SCHEMA_VERSION, "kind": "telemetry", "body": body}, use_bin_type=True)
    with pytest.raises(MessageError) as error:
        decode(data)
    assert error.value.reason in ("field", "decode")


def test_garbage_on_either_end_of_the_dashboard_link_is_counted_and_the_link_serves_on(tmp_path):
    store = IngestStore(tmp_path / "ingest.sqlite")
    server = IngestServer(store, "tcp://127.0.0.1:0", None, context=zmq.Context(),
                          dashboard_endpoint="tcp://127.0.0.1:0")
    server_thread = start(server.serve)
    context = zmq.Context()
    junk = context.socket(zmq.DEALER)
    junk.connect(server.dashboard.endpoint)
    feed = LearnerFeed(server.dashboard.endpoint, load_robot_spec("furuta"), None, on_update=lambda *_: None,
                       heartbeat_s=0.2, context=zmq.Context()).start()
    try:
        for data in (b"\xc1 not msgpack", encode(Ack("r", "o", 1)), msgpack.packb({"v": 99, "kind": "x", "body": {}})):
            junk.send(data)
        wait_until(lambda: server.rejected["decode"] and server.rejected["kind"] and server.rejected["version"],
                   timeout_s=10)
        wait_until(lambda: feed.messages > 0, timeout_s=10)  # the learner still feeds the dashboard
        route = next(iter(server.dashboard.dashboards))
        server.dashboard._send(route, b"\xc1 garbage for the dashboard")  # as if the learner sent nonsense
        wait_until(lambda: feed.rejected == 1, timeout_s=10)
        before = feed.messages
        wait_until(lambda: feed.messages > before, timeout_s=10)  # and the dashboard still takes telemetry
    finally:
        feed.stop()
        junk.close(linger=0)
        context.destroy(linger=0)
        server.stop()
        server_thread.join(timeout=10)
        store.close()
