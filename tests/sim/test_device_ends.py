"""The virtual robot on TCP: one host at a time, as on a serial cable, and the next when it leaves."""

import os
import socket
import threading

import pytest

from robot_app.hardware.protocol import Command, MessageType, encode_frame
from robot_app.hardware.robot_io import LinkLost
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.spec import load_robot_spec
from sim.virtual_robot import VirtualRobot
from tests.conftest import free_port, wait_until

SPEC = load_robot_spec("furuta")


def steps_answered(host: SerialRobot, periods: int) -> int:
    """Command `periods` lockstep periods; how many a sensor frame answered."""
    assert host.wait_sensor(None, 5.0) is not None  # the first frame follows the HELLO
    answered = 0
    for _ in range(periods):
        seq = host.latest.seq
        host.send_command([0.0])
        answered += host.wait_sensor(seq, 5.0) is not None
    return answered


def test_a_tcp_virtual_robot_serves_a_host_and_then_the_next_and_beats_its_heartbeat(tmp_path):
    heartbeat = tmp_path / "alive"
    device = VirtualRobot(SPEC, lockstep=True, listen=("127.0.0.1", 0), heartbeat=heartbeat)
    assert device.port.startswith("socket://127.0.0.1:") and not device.port.endswith(":0")
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    try:
        for name in ("first", "second"):
            host = SerialRobot(device.port)
            hello = host.connect()
            assert hello.robot_id == "furuta-virtual-0", name
            assert steps_answered(host, 5) == 5, name
            host.close()
        assert heartbeat.is_file()  # touched when serving began
    finally:
        device.stop()
        serving.join(timeout=10)
    assert not serving.is_alive()
    assert device.audit.commands == 10 and device.counters["tx_overflow"] == 0


def test_a_host_that_hangs_up_mid_frame_leaves_the_next_no_half_frame_no_session_and_the_motor_off():
    device = VirtualRobot(SPEC, lockstep=True, listen=("127.0.0.1", 0))
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    address = ("127.0.0.1", int(device.port.rpartition(":")[2]))
    try:
        host = SerialRobot(device.port)
        host.connect()
        host.send_command([1.0])  # the motor on, in a session
        wait_until(lambda: device.audit.commands == 1, timeout_s=10)
        half = encode_frame(MessageType.COMMAND, 99, Command(True, (2.0,)).pack())[:9]
        with socket.create_connection(address) as second:  # waits in the backlog while the first is connected
            os.write(host._serial.fileno(), half)  # the first hangs up in the middle of a frame
            host.close()
            second.sendall(encode_frame(MessageType.COMMAND, 1, Command(True, (1.0,)).pack()))
            wait_until(lambda: device.refused["NO_SESSION"] == 1, timeout_s=10)  # no HELLO from it yet: refused
        assert device.link_counters["truncated"] == 1  # the half frame, counted and dropped: not glued to the next
        assert device.audit.commands == 1 and not device._enabled
    finally:
        device.stop()
        serving.join(timeout=10)


def test_a_host_finding_no_virtual_robot_on_the_port_gets_a_clear_link_lost():
    port = free_port()
    with pytest.raises(LinkLost, match=f"socket://127.0.0.1:{port}.*refused"):
        SerialRobot(f"socket://127.0.0.1:{port}").connect()
