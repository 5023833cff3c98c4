"""Robot -> learner over ZeroMQ with CURVE on tcp 127.0.0.1: delivery with acks, restarts, and rejected messages."""

import dataclasses
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from robot_app.agent.transition_log import Transition, TransitionLog
from robot_app.learner.ingest import IngestServer, IngestStore
from robot_app.transport.keys import generate_keys, secure_client
from robot_app.transport.messages import SCHEMA_VERSION, Ack, Heartbeat, TransitionBatch, TransitionChunk, encode
from robot_app.transport.robot_link import RobotLink
from tests.conftest import reply, stored_keys, wait_until


def transition(robot_id, episode, step):
    return Transition(
        robot_id=robot_id, episode=episode, step=step, obs=np.full(6, step, np.float32),
        action=np.array([0.5], np.float32), reward=1.0, next_obs=np.full(6, step + 1, np.float32),
        terminated=False, truncated=False, policy_action=np.array([0.5], np.float32), policy_version="p1",
        interventions=(), obs_time_ns=step, command_time_ns=step, next_obs_time_ns=step, device_time_us=step,
    )


@pytest.fixture
def keys(tmp_path):
    generate_keys(tmp_path / "learner", "learner")
    for name in ("robot-1", "robot-2"):
        generate_keys(tmp_path / "robots", name)
    generate_keys(tmp_path / "strangers", "intruder")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for name in ("robot-1", "robot-2"):
        (allowed / f"{name}.key").write_bytes((tmp_path / "robots" / f"{name}.key").read_bytes())
    return tmp_path


def start(target):
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def serve(store, keys, endpoint="tcp://127.0.0.1:0"):
    server = IngestServer(store, endpoint, (keys / "learner/learner.key_secret", keys / "allowed"),
                          context=zmq.Context())
    return server, start(server.serve)


def test_every_transition_arrives_once_across_a_learner_restart(keys, tmp_path):
    outbox = TransitionLog(tmp_path / "outbox.sqlite", chunk_rows=10)
    for episode in range(6):
        for step in range(1000):
            outbox.append(transition("robot-1", episode, step))
    store = IngestStore(tmp_path / "ingest.sqlite")
    server, server_thread = serve(store, keys)
    shipper = RobotLink(outbox, server.endpoint, "robot-1",
                      (keys / "robots/robot-1.key_secret", keys / "learner/learner.key"), window=1,
                      ack_timeout_s=0.5, context=zmq.Context())
    shipper_thread = start(shipper.run)
    wait_until(lambda: store.count() >= 300, timeout_s=30)
    server.stop()  # the learner goes away mid-stream ...
    server_thread.join(timeout=10)
    time.sleep(1.0)
    assert outbox.held(), "the outbox still holds what was not acknowledged"
    server, server_thread = serve(store, keys, server.endpoint)  # ... and comes back on the same port and store
    wait_until(lambda: not outbox.held(), timeout_s=30)
    shipper.stop()
    server.stop()
    shipper_thread.join(timeout=10)
    server_thread.join(timeout=10)
    outbox.close()
    keys_seen = stored_keys(store)
    assert len(keys_seen) == 6000 == store.count("robot-1")  # none lost, none twice
    assert set(keys_seen) == {(e, s) for e in range(6) for s in range(1000)}
    chunk = store.read()[0][2]
    np.testing.assert_array_equal(chunk.columns["obs"][0], np.full(6, chunk.columns["step"][0], np.float32))
    assert outbox_next_episode(tmp_path) == 6


def test_the_learner_counts_each_robots_plan_fallbacks_once_with_its_transitions(keys, tmp_path):
    outbox = TransitionLog(tmp_path / "outbox.sqlite", chunk_rows=10)
    for step in range(200):
        outbox.append(dataclasses.replace(transition("robot-1", 0, step), plan_fallback=step % 8 == 0))
    wait_until(lambda: outbox.held() == 200, timeout_s=30)  # its writer thread commits them; then none is held
    store = IngestStore(tmp_path / "ingest.sqlite")
    server, server_thread = serve(store, keys)
    shipper = RobotLink(outbox, server.endpoint, "robot-1",
                        (keys / "robots/robot-1.key_secret", keys / "learner/learner.key"), window=4,
                        ack_timeout_s=0.5, context=zmq.Context())
    shipper_thread = start(shipper.run)
    wait_until(lambda: not outbox.held(), timeout_s=30)
    shipper.stop()
    server.stop()
    shipper_thread.join(timeout=10)
    server_thread.join(timeout=10)
    outbox.close()
    assert server.robots["robot-1"]["transitions"] == 200 and server.robots["robot-1"]["plan_fallbacks"] == 25


def outbox_next_episode(tmp_path):
    log = TransitionLog(tmp_path / "outbox.sqlite")
    try:
        return log.next_episode("robot-1")
    finally:
        log.close()


def test_bad_messages_are_rejected_and_counted_and_the_learner_keeps_serving(keys, tmp_path):
    store = IngestStore(tmp_path / "ingest.sqlite")
    server, thread = serve(store, keys)
    context = zmq.Context()

    def client(name, key_dir="robots"):
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        secure_client(socket, keys / key_dir / f"{name}.key_secret", keys / "learner/learner.key")
        socket.connect(server.endpoint)
        return socket

    robot = client("robot-1")
    robot.send(b"\x93garbage")
    robot.send(msgpack.packb({"v": SCHEMA_VERSION + 1, "kind": "heartbeat", "body": {}}))
    robot.send(b"\0" * (9 << 20))
    robot.send(encode(Heartbeat("robot-2", 1)))  # robot-1's key speaking as robot-2
    intruder = client("intruder", "strangers")
    intruder.send(encode(Heartbeat("intruder", 1)))
    robot.send(encode(Heartbeat("robot-1", 1)))
    robot.rcvtimeo = 10_000
    answer = reply(robot)
    assert isinstance(answer, Heartbeat) and answer.sender == "learner"
    wait_until(lambda: sum(server.rejected.values()) >= 4 and server.rejected["unauthenticated"] >= 1,
               timeout_s=30)
    assert {k: v for k, v in server.rejected.items() if k != "unauthenticated"} == {
        "decode": 1, "version": 1, "oversized": 1, "identity": 1}
    assert "intruder" not in server.last_heard  # CURVE refused its handshake (counted); nothing of it got through
    server.stop()
    thread.join(timeout=10)
    context.destroy(linger=0)


def export_policy(path, obs_layout, actor=None):
    """A Furuta policy artifact: a random 8-unit actor, or `actor` (one of obs_dim inputs, one output, 8 hidden)."""
    from policies.export import DeployedPolicy, export_onnx
    from policies.networks import SquashedGaussianActor
    from policies.normalizer import RunningNormalizer

    dim = sum(w for _, w in obs_layout)
    actor = actor or SquashedGaussianActor(dim, 1, (8,))
    export_onnx(DeployedPolicy(RunningNormalizer(dim), actor, [-5.0], [5.0]), path,
                env="furuta:swingup", obs_layout=list(obs_layout), action_layout=["motor"], action_repeat=1,
                training_step=0, source_run="test", horizon=0)
    return path


def test_a_published_policy_is_fetched_verified_and_handed_to_the_agent(keys, tmp_path):
    import torch

    from robot_app.agent.loading import load_policy
    from robot_app.common.signing import generate_signing_keys, load_signing_key, load_trusted_key, sign
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    spec = load_robot_spec("furuta")
    layout = make_task(spec).obs_layout
    gate_public, gate_secret = generate_signing_keys(tmp_path / "gate", "gate")
    _, stranger_secret = generate_signing_keys(tmp_path / "stranger", "stranger")
    trusted = load_trusted_key(gate_public)
    store = IngestStore(tmp_path / "ingest.sqlite")
    server, server_thread = serve(store, keys)
    received, running = [], ["zero"]
    link = RobotLink(TransitionLog(tmp_path / "outbox.sqlite"), server.endpoint, "robot-1",
                     (keys / "robots/robot-1.key_secret", keys / "learner/learner.key"), heartbeat_s=0.2,
                     context=zmq.Context(), announcements=server.announce_endpoint, policy_dir=tmp_path / "policies",
                     load_policy=lambda path: load_policy(path, spec, layout, trusted_key=trusted),
                     on_policy=received.append, running_version=lambda: running[0])
    link_thread = start(link.run)

    def publish(name, obs_layout, key=gate_secret, data=None):
        torch.manual_seed(sum(map(ord, name)) * 31 + len(name))  # different weights, different versions
        path = export_policy(tmp_path / f"{name}.onnx", obs_layout)
        return server.publish(path, sign(data or path.read_bytes(), load_signing_key(key)) if key else "")

    good = publish("good", layout)
    wait_until(lambda: received, timeout_s=30)
    assert received[0].version == good.version
    assert (tmp_path / "policies" / f"policy-{good.version}.onnx").read_bytes() == (tmp_path / "good.onnx").read_bytes()
    running[0] = good.version
    wait_until(lambda: "robot-1" in server.statuses and server.statuses["robot-1"].policy_version == good.version,
               timeout_s=30)
    refused = [
        (lambda: publish("other_robot", [("joint_angles", 7)]), "observation layout"),  # signed, for another robot
        (lambda: publish("unsigned", layout, key=None), "is unsigned"),
        (lambda: publish("by_a_stranger", layout, key=stranger_secret), "does not verify"),
        (lambda: publish("tampered", layout, data=b"the bytes the gate validated"), "does not verify"),
    ]
    for errors, (publish_bad, reason) in enumerate(refused, start=1):  # one at a time: announcements are latest-only
        publish_bad()
        wait_until(lambda: link.policy_errors >= errors, timeout_s=30)
        assert reason in link.last_policy_error
    assert [p.version for p in received] == [good.version]  # every one refused; the agent keeps its policy
    link.stop()
    server.stop()
    link_thread.join(timeout=10)
    server_thread.join(timeout=10)


def test_the_store_takes_each_outbox_in_seq_order_and_counts_duplicates_and_gaps(tmp_path):
    from robot_app.learner.ingest import Stored
    from robot_app.transport.messages import TransitionBatch, TransitionChunk

    def batch(outbox, first, n, acked_through):
        rows = [transition("robot-1", 0, first + i) for i in range(n)]
        return TransitionBatch("robot-1", outbox, acked_through, TransitionChunk.from_transitions(first, rows).pack())

    store = IngestStore(tmp_path / "ingest.sqlite")
    # First contact: the robot says seqs up to 10 were acknowledged elsewhere, so 11 is where this store starts.
    assert store.store_batches([batch("a", 21, 10, 10), batch("a", 11, 10, 10)], 0) == [
        Stored(out_of_order=10), Stored(stored=10)]
    assert store.store_batches([batch("a", 11, 10, 10), batch("a", 21, 10, 10), batch("a", 21, 10, 10)], 0) == [
        Stored(duplicates=10), Stored(stored=10), Stored(duplicates=10)]
    assert store.held_through("robot-1", "a") == 30
    # A new outbox (the old file lost) has its own seqs: nothing of it is mistaken for a duplicate.
    assert store.store_batches([batch("b", 1, 5, 0)], 0) == [Stored(stored=5)]
    store.close()
    store = IngestStore(tmp_path / "ingest.sqlite")  # what it holds survives a restart
    assert store.held_through("robot-1", "a") == 30 and store.count() == store.count("robot-1") == 25
    assert store.store_batches([batch("a", 21, 10, 20)], 0) == [Stored(duplicates=10)]
    # A re-sent batch merged differently overlaps what is held: only its new rows are kept.
    assert store.store_batches([batch("a", 26, 10, 20)], 0) == [Stored(stored=5, duplicates=5)]
    steps = [c.columns["step"].tolist() for _, _, c in store.read()]
    assert steps[-1] == [31, 32, 33, 34, 35] and store.held_through("robot-1", "a") == 35
    store.close()


def test_the_link_stops_quietly_when_its_log_is_closed_under_it(tmp_path):
    """The log's owner closes it while the link's thread may be mid-query. The CLI stops the link first; this is the
    link's own defence for any other owner."""
    errors = []
    hook, threading.excepthook = threading.excepthook, errors.append
    try:
        log = TransitionLog(tmp_path / "outbox.sqlite")
        link = RobotLink(log, "tcp://127.0.0.1:9", "robot-1", None, context=zmq.Context())  # no learner there
        thread = start(link.run)
        time.sleep(0.1)
        log.close()
        thread.join(timeout=10)
    finally:
        threading.excepthook = hook
    assert not thread.is_alive() and errors == []


# ---- hostile input on the learner's socket and the robot's link -----------------------------------------------------


def client(context, keys, endpoint, name, key_dir="robots", routing_id=None):
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.rcvtimeo = 10_000
    if routing_id is not None:
        socket.routing_id = routing_id
    secure_client(socket, keys / key_dir / f"{name}.key_secret", keys / "learner/learner.key")
    socket.connect(endpoint)
    return socket


def still_answers(socket, robot_id="robot-1"):
    """The server is alive: a heartbeat gets its answer (every earlier message on this connection was handled)."""
    socket.send(encode(Heartbeat(robot_id, 1)))
    return reply(socket).sender == "learner"


def test_a_message_of_unexpected_types_is_a_counted_rejection_and_the_server_serves_on(keys, tmp_path):
    """{"v":2,"kind":[1],"body":{}} and a column whose dtype is a list raised TypeError in decode: the ingest thread
    died, and the learner stayed up, deaf."""
    store = IngestStore(tmp_path / "ingest.sqlite")
    server, thread = serve(store, keys)
    context = zmq.Context()
    robot = client(context, keys, server.endpoint, "robot-1")
    robot.send(msgpack.packb({"v": SCHEMA_VERSION, "kind": [1], "body": {}}))
    chunk = msgpack.unpackb(TransitionChunk.from_transitions(1, [transition("robot-1", 0, 0)]).pack())
    chunk["columns"]["obs"]["dtype"] = ["<f4"]
    robot.send(encode(TransitionBatch("robot-1", "o", 0, msgpack.packb(chunk, use_bin_type=True))))
    assert still_answers(robot)
    assert server.rejected == {"kind": 1, "field": 1} and thread.is_alive() and store.count() == 0
    server.stop()
    thread.join(timeout=10)
    context.destroy(linger=0)


def batch_of(rows, first_seq=1, acked_through=0, robot_id="robot-1", outbox="o"):
    return TransitionBatch(robot_id, outbox, acked_through, TransitionChunk.from_transitions(first_seq, rows).pack())


def test_rows_that_do_not_fit_the_robot_are_refused_or_quarantined_never_stored_for_training(keys, tmp_path):
    """Width 7 made the learner exit, and one NaN observation killed it at its next update; both were stored."""
    from robot_app.learner.ingest import RowSchema
    from robot_app.robot.spec import load_robot_spec

    store = IngestStore(tmp_path / "ingest.sqlite")
    server = IngestServer(store, "tcp://127.0.0.1:0", (keys / "learner/learner.key_secret", keys / "allowed"),
                          context=zmq.Context(), rows=RowSchema.of(load_robot_spec("furuta")))
    thread = start(server.serve)
    context = zmq.Context()
    robot = client(context, keys, server.endpoint, "robot-1")
    good = [transition("robot-1", 0, step) for step in range(5)]
    wide = [dataclasses.replace(t, obs=np.zeros(width, np.float32), next_obs=np.zeros(width, np.float32))
            for width in (7, 1) for t in good[:1]]
    nan = [dataclasses.replace(t, obs=np.full(6, np.nan, np.float32)) if t.step == 2 else t for t in good]
    huge = [dataclasses.replace(t, action=np.array([40.0], np.float32)) for t in good]
    for rows in ([wide[0]], [wide[1]]):
        robot.send(encode(batch_of(rows)))
    robot.send(encode(batch_of(nan)))  # seqs 1-5: quarantined, and acked
    assert reply(robot) == Ack("robot-1", "o", 5)
    robot.send(encode(batch_of(huge, 6, 5)))  # seqs 6-10: 40 V is no command the supervisor lets out
    assert reply(robot) == Ack("robot-1", "o", 10)
    robot.send(encode(batch_of(good, 11, 10)))
    assert reply(robot) == Ack("robot-1", "o", 15)
    assert server.rejected == {"width": 2} and server.quarantined == {"non_finite": 1, "out_of_range": 1}
    assert store.count() == 5 and [c.first_seq for _, _, c in store.read()] == [11]
    assert [reason for _, _, reason, _ in store.quarantined()] == ["non_finite", "out_of_range"]
    server.stop()
    thread.join(timeout=10)
    context.destroy(linger=0)


def test_one_robot_cannot_take_another_robots_replies_by_claiming_its_routing_id(keys, tmp_path):
    """robot-1's key connecting first with routing id "robot-2" once silenced the real robot-2: no acks, no
    heartbeats."""
    store = IngestStore(tmp_path / "ingest.sqlite")
    server, thread = serve(store, keys)
    context = zmq.Context()
    impostor = client(context, keys, server.endpoint, "robot-1", routing_id=b"robot-2")
    impostor.send(encode(Heartbeat("robot-1", 1)))
    wait_until(lambda: server.rejected["identity"] == 1, timeout_s=30)  # refused, counted
    outbox = TransitionLog(tmp_path / "outbox.sqlite")
    for step in range(20):
        outbox.append(transition("robot-2", 0, step))
    wait_until(lambda: outbox.held() == 20, timeout_s=30)
    link = RobotLink(outbox, server.endpoint, "robot-2",
                     (keys / "robots/robot-2.key_secret", keys / "learner/learner.key"), heartbeat_s=0.2,
                     context=zmq.Context())
    link_thread = start(link.run)
    wait_until(lambda: not outbox.held() and link.learner_alive, timeout_s=30)  # robot-2 is unaffected
    assert store.count("robot-2") == 20 and server.rejected["identity"] >= 1
    link.stop()
    link_thread.join(timeout=10)
    outbox.close()
    server.stop()
    thread.join(timeout=10)
    context.destroy(linger=0)


def test_the_robot_link_survives_whatever_the_learner_sends(tmp_path):
    """A learner-side message that raised in decode (a kind that is a list) used to end the link's thread."""
    context = zmq.Context()
    learner = context.socket(zmq.ROUTER)
    learner.linger = 0
    port = learner.bind_to_random_port("tcp://127.0.0.1")
    outbox = TransitionLog(tmp_path / "outbox.sqlite")
    for step in range(3):
        outbox.append(transition("robot-1", 0, step))
    link = RobotLink(outbox, f"tcp://127.0.0.1:{port}", "robot-1", None, context=context, heartbeat_s=0.1)
    thread = start(link.run)
    learner.rcvtimeo = 10_000
    route = learner.recv_multipart()[0]
    poison = [msgpack.packb({"v": SCHEMA_VERSION, "kind": [1], "body": {}}), b"\xc1",
              msgpack.packb({"v": SCHEMA_VERSION, "kind": "ack",
                             "body": {"robot_id": "robot-1", "outbox_id": outbox.outbox_id, "up_to_seq": [3]}})]
    for data in poison:
        learner.send_multipart([route, data])
    wait_until(lambda: link.rejected == len(poison), timeout_s=30)
    learner.send_multipart([route, encode(Ack("robot-1", outbox.outbox_id, 3))])
    wait_until(lambda: not outbox.held(), timeout_s=30)  # it still takes acks
    assert thread.is_alive() and link.errors == 0
    link.stop()
    thread.join(timeout=10)
    outbox.close()
    context.destroy(linger=0)
