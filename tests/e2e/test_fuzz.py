"""Fuzzing every input surface, bounded in count: the virtual robot's serial input, the agent's serial input from a
fake device on a pty, and the learner's ZeroMQ input with an admitted key and without one (and the robot link's).

The checks are the same everywhere: no thread dies, no command leaves the limits, no bad row is stored, and every
rejection is counted.
"""

import math
import os
import threading
import tty

import msgpack
import numpy as np
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from calibration.encoders import load_calibration
from robot_app.agent.policy_runner import RandomPolicy
from robot_app.agent.runtime import Agent
from robot_app.agent.transition_log import TransitionLog, TransitionRecorder
from robot_app.hardware.protocol import PROTOCOL_VERSION, FrameDecoder, Hello, MessageType, encode_frame, parse
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.learner.ingest import REFUSED, IngestServer, IngestStore, RowSchema
from robot_app.robot.spec import load_robot_spec
from robot_app.transport.messages import (
    SCHEMA_VERSION, Heartbeat, MessageError, PolicyAnnouncement, PolicyRequest, Status, TransitionBatch,
    TransitionChunk, decode, encode,
)
from robot_app.transport.robot_link import RobotLink
from sim.virtual_robot import AMPLIFIER_LIMIT_V, VirtualRobot
from tests.agent.test_agent import HANGING
from tests.conftest import reply, wait_until
from tests.fake_device import FakeDevice, write_all
from tests.strategies import ANYTHING, bodies, hostile_commands, hostile_sensor_frames, serial_pieces
from tests.transport.test_transport import client, keys, transition  # noqa: F401  (keys: the fixture)

SPEC = load_robot_spec("furuta")
ROWS = RowSchema.of(SPEC)
MAX_STEP = SPEC.actuators[0].rate_limit * SPEC.period_s
HOST_TYPES = [int(t) for t in (MessageType.HELLO, MessageType.COMMAND, MessageType.ESTOP)]
DEVICE_TYPES = [int(t) for t in (MessageType.HELLO, MessageType.SENSOR, MessageType.ESTOP, MessageType.FAULT)]
MUST_BE_DROPPED = {"garbage", "unknown_type", "malformed", "corrupt", "truncated", "wrong_size", "wrong_shape"}


def refusals(counters: dict) -> int:
    return sum(v for k, v in counters.items() if k not in ("frames", "sessions", "session_restarts"))


# ---- the virtual robot's serial input -------------------------------------------------------------------------------


class RawHost:
    """The host end of a pty, bytes in and frames out, with no host logic of its own."""

    def __init__(self, port: str):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.decoder, self.frames, self.probes = FrameDecoder(), [], 0
        self.write(encode_frame(MessageType.HELLO, 1, Hello(PROTOCOL_VERSION, "host").pack()))  # a session

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)

    def probe(self) -> list:
        """Two HEARTBEATs of seqs never used before, the second sent once the first is echoed: by its echo the device
        has acted on everything sent before the first (it echoes as it reads, and applies a read's commands after).
        The frames that came back meanwhile."""
        for _ in range(2):
            self.probes += 1
            seq = 0xF0000000 + self.probes
            self.write(encode_frame(MessageType.HEARTBEAT, seq))
            wait_until(lambda: self._read_some() and any(f.type == MessageType.HEARTBEAT and f.seq == seq
                                                         for f in self.frames), timeout_s=10)
        frames, self.frames = self.frames, []
        return frames

    def _read_some(self) -> bool:
        import select

        if select.select([self.fd], [], [], 0.05)[0]:
            self.frames += self.decoder.feed(os.read(self.fd, 65536))
        return True


def test_the_virtual_robot_survives_any_serial_input_and_counts_what_it_drops():
    device = VirtualRobot(SPEC, lockstep=True)
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    host = RawHost(device.port)
    host.probe()

    @settings(max_examples=60, deadline=None)
    @given(pieces=st.lists(serial_pieces(HOST_TYPES) | hostile_commands(), min_size=1, max_size=10))
    def anything_in(pieces):
        before, audit_before = refusals(device.link_counters), device.audit.limit_violations
        host.write(b"".join(data for _, data in pieces))
        answers = host.probe()  # echoed: the device is alive, back in step, and has read everything before it
        assert serving.is_alive()
        dropped = any(kind in MUST_BE_DROPPED for kind, _ in pieces)  # one drop can take several pieces with it
        assert refusals(device.link_counters) - before >= dropped
        out_of_limits = sum(kind == "command" and not -5.0 <= command_volts(data) <= 5.0 for kind, data in pieces)
        assert device.audit.limit_violations - audit_before >= out_of_limits
        for frame in answers:  # what the motor was driving at each step: never past the amplifier, never NaN
            if frame.type == MessageType.SENSOR:
                assert all(math.isfinite(v) and abs(v) <= AMPLIFIER_LIMIT_V for v in parse(frame).applied)

    try:
        anything_in()
    finally:
        device.stop()
        serving.join(timeout=10)
        os.close(host.fd)


def command_volts(frame: bytes) -> float:
    return parse(FrameDecoder().feed(frame)[0]).volts[0]


# ---- the agent's serial input, from a fake device -------------------------------------------------------------------


def _device_pieces():
    framed = hostile_sensor_frames().map(lambda piece: (piece[0], ("sensor", piece[1])))
    return st.lists(serial_pieces(DEVICE_TYPES) | framed, max_size=3)


QUICK_WATCHDOG = SPEC.model_copy(update={"watchdog_timeout_s": 0.05})  # a silent tick costs the watchdog's wait


@settings(max_examples=25, deadline=None)
@given(ticks=st.lists(st.tuples(_device_pieces(), st.integers(0, 9).map(bool)), min_size=60, max_size=60))
def test_the_agent_survives_any_serial_input_keeps_every_command_inside_the_limits_and_counts_what_it_drops(ticks):
    bad = {"n": 0}

    def script(device, command):
        if command is None:
            device.step = 0
            return device.sensor(1, (0, HANGING))
        device.step += 1
        pieces, answer = ticks[min(device.step, len(ticks) - 1)]
        out = b""
        for kind, data in pieces:
            if isinstance(data, tuple):  # a sensor payload: framed with the device's own seq
                data = device.frame(MessageType.SENSOR, data[1])
            bad["n"] += kind in MUST_BE_DROPPED
            out += data
        if answer:  # nine ticks in ten also get a good frame
            out += device.sensor(device.step * 20_000 + 1, (0, HANGING))
        return out

    recorder = TransitionRecorder()
    with FakeDevice(script) as device:
        agent = Agent(SerialRobot(device.port), QUICK_WATCHDOG, load_calibration("furuta"), RandomPolicy([-5.0], [5.0]),
                      recorder, status_every_s=60, reset_timeout_s=0.1)
        done = threading.Thread(target=lambda: wait_until(lambda: len(device.commands) >= 60, timeout_s=120) or
                                agent.request_stop("script done"), daemon=True)
        done.start()
        summary = agent.run(duration_s=120)
        commands = list(device.commands)
    assert summary.stop_reason == "script done" and summary.tick_errors == 0 and summary.failure is None
    assert refusals(summary.link) >= min(bad["n"], 1)  # one drop can take several pieces with it
    previous = 0.0
    for command in commands:
        (volts,) = command.volts
        assert math.isfinite(volts) and -5.0 <= volts <= 5.0
        if command.enable:
            assert abs(volts - previous) <= MAX_STEP + 1e-6
        previous = volts if command.enable else 0.0
    for row in recorder.rows:
        assert np.isfinite(row.obs).all() and np.isfinite(row.next_obs).all() and -5.0 <= row.action[0] <= 5.0


# ---- the learner's ZeroMQ input -------------------------------------------------------------------------------------


def _batches():
    """Transition batches from robot-1: fine, poisoned (NaN, the wrong width, 40 V), at any seq."""
    def build(rows, poison, first_seq):
        rows = [transition("robot-1", 0, step) for step in range(rows)]
        if poison == "nan":
            rows[0] = rows[0].__class__(**{**rows[0].__dict__, "obs": np.full(6, np.nan, np.float32)})
        elif poison == "wide":
            rows = [r.__class__(**{**r.__dict__, "obs": np.zeros(7, np.float32), "next_obs": np.zeros(7, np.float32)})
                    for r in rows]
        elif poison == "volts":
            rows[-1] = rows[-1].__class__(**{**rows[-1].__dict__, "action": np.array([40.0], np.float32)})
        chunk = TransitionChunk.from_transitions(first_seq, rows).pack()
        return encode(TransitionBatch("robot-1", "fuzz-outbox", max(0, first_seq - 1), chunk))

    return st.builds(build, st.integers(1, 20), st.sampled_from(["none", "nan", "wide", "volts"]),
                     st.integers(1, 200))


def _envelopes(kinds):
    """Envelopes of these kinds with fields of any type, and envelopes of anything at all."""
    typed = st.sampled_from(sorted(kinds)).flatmap(lambda kind: bodies(kind).map(
        lambda body: msgpack.packb({"v": SCHEMA_VERSION, "kind": kind, "body": body}, use_bin_type=True)))
    untyped = st.builds(lambda v, kind, body: msgpack.packb({"v": v, "kind": kind, "body": body}, use_bin_type=True),
                        ANYTHING, ANYTHING, ANYTHING)
    return typed | untyped


def _messages():
    scalars = st.sampled_from([
        encode(Heartbeat("robot-1", 5)), encode(Heartbeat("robot-2", 5)),
        encode(Status("robot-1", "v", {"x": 1}, "", "", 0, 0.0, 0, {}, "")),
        encode(PolicyRequest("robot-1", "nothing-published")), encode(PolicyAnnouncement("v", "00", 1, "")),
    ])
    kinds = ["heartbeat", "status", "transitions", "ack", "policy_request"]
    return st.binary(max_size=200) | _envelopes(kinds) | scalars | _batches()


def expected_rejection(data: bytes) -> int:
    """The server's rules, as an oracle: 1 if this message must be rejected (and counted), else 0."""
    try:
        message = decode(data)
    except MessageError:
        return 1
    if getattr(message, "robot_id", getattr(message, "sender", None)) != "robot-1":
        return 1
    if isinstance(message, TransitionBatch):
        problem = ROWS.problem(message.rows)
        return int(problem is not None and problem[0] in REFUSED)
    return int(not isinstance(message, (Heartbeat, Status)))


def _answered_heartbeats(messages: list[bytes]) -> int:
    answered = 0
    for data in messages:
        try:
            message = decode(data)
        except MessageError:
            continue
        answered += isinstance(message, Heartbeat) and message.sender == "robot-1"
    return answered


def test_the_learner_survives_anything_an_admitted_robot_sends_stores_no_bad_row_and_counts_every_rejection(
        keys, tmp_path):  # noqa: F811
    store = IngestStore(tmp_path / "ingest.sqlite")
    server = IngestServer(store, "tcp://127.0.0.1:0", (keys / "learner/learner.key_secret", keys / "allowed"),
                          context=zmq.Context(), rows=ROWS)
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    context = zmq.Context()
    robot = client(context, keys, server.endpoint, "robot-1")
    stranger = client(context, keys, server.endpoint, "intruder", "strangers")

    @settings(max_examples=80, deadline=None)
    @given(messages=st.lists(_messages(), min_size=1, max_size=8))
    def anything_in(messages):
        before, quarantined = sum(server.rejected.values()) - server.rejected["unauthenticated"], store.quarantined()
        for data in messages:
            robot.send(data)
            try:
                stranger.send(data, zmq.NOBLOCK)  # refused at the handshake: none of it reaches the learner
            except zmq.Again:
                pass
        robot.send(encode(Heartbeat("robot-1", 0)))
        answers = 0
        while answers < _answered_heartbeats(messages) + 1:  # ours is the last: all before it were handled
            answers += isinstance(reply(robot), Heartbeat)
        assert serving.is_alive()
        assert sum(server.rejected.values()) - server.rejected["unauthenticated"] - before == sum(
            map(expected_rejection, messages))
        for _, robot_id, chunk in store.read(limit_rows=1 << 40):  # what training reads: nothing bad
            assert robot_id == "robot-1" and ROWS.problem(chunk) is None
        assert all(reason != "width" for _, _, reason, _ in store.quarantined()[len(quarantined):])

    try:
        anything_in()
        wait_until(lambda: server.rejected["unauthenticated"] >= 1, timeout_s=30)
        assert "intruder" not in server.last_heard and server.quarantined.keys() <= {"non_finite", "out_of_range"}
    finally:
        server.stop()
        serving.join(timeout=10)
        context.destroy(linger=0)
        store.close()


def test_the_robot_link_survives_anything_the_learner_sends_and_counts_what_it_drops(tmp_path):
    context = zmq.Context()
    learner = context.socket(zmq.ROUTER)
    learner.linger, learner.rcvtimeo = 0, 10_000
    port = learner.bind_to_random_port("tcp://127.0.0.1")
    outbox = TransitionLog(tmp_path / "outbox.sqlite")
    link = RobotLink(outbox, f"tcp://127.0.0.1:{port}", "robot-1", None, context=context, heartbeat_s=0.05)
    linking = threading.Thread(target=link.run, daemon=True)
    linking.start()
    route = learner.recv_multipart()[0]

    @settings(max_examples=60, deadline=None)
    @given(messages=st.lists(st.binary(max_size=100) | _envelopes(["heartbeat", "ack", "policy", "policy_blob"]),
                             min_size=1, max_size=8))
    def anything_in(messages):
        before = link.rejected
        expected = 0
        for data in messages:
            try:
                decode(data)
            except MessageError:
                expected += 1
            learner.send_multipart([route, data])
        wait_until(lambda: link.rejected - before == expected, timeout_s=30)
        assert linking.is_alive() and link.errors == 0

    try:
        anything_in()
    finally:
        link.stop()
        linking.join(timeout=10)
        outbox.close()
        context.destroy(linger=0)
