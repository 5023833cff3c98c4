"""The virtual robot's hidden truth, as the wire shows it: what calibration and identification must recover."""

import contextlib
import threading

import numpy as np
import pytest

from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.spec import load_robot_spec
from sim.furuta import dead_zone
from sim.virtual_robot import Variation, VirtualRobot, load_variation

SPEC = load_robot_spec("furuta")


@contextlib.contextmanager
def lockstep_unit(variation: Variation, initial_qpos=(0.0, 0.0)):
    device = VirtualRobot(SPEC, lockstep=True, variation=variation, initial_qpos=np.array(initial_qpos))
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    host = SerialRobot(device.port)
    host.connect()
    try:
        assert host.wait_sensor(None, 5.0) is not None  # the lockstep device's first frame follows its HELLO
        yield device, host
    finally:
        host.close()
        device.stop()
        serving.join(timeout=10)


def drive(host: SerialRobot, volts: float, periods: int) -> tuple[int, ...]:
    """Hold `volts` for `periods` lockstep periods; the counts of the last frame."""
    for _ in range(periods):
        host.send_command([volts])
        reading = host.wait_sensor(host.latest.seq, 5.0)
        assert reading is not None
    return reading.frame.counts


def test_a_unit_reports_its_encoders_reversed_and_offset_as_its_truth_says():
    truth = load_variation("{count_offsets: [3, -2], count_directions: [-1, 1]}")
    with lockstep_unit(truth, initial_qpos=(0.3, 0.1)) as (device, host):
        counts = drive(host, 0.0, 1)
        ideal = device.physics.counts()
    assert ideal[0] > 90 and ideal[1] > 30  # 0.3 and 0.1 rad at 2048 counts a turn
    assert counts == (-ideal[0] + 3, ideal[1] - 2)


def test_a_unit_with_a_dead_zone_does_not_move_inside_it_and_does_outside_it():
    assert [dead_zone(v, 0.4, 0.6) for v in (0.5, -0.5, 1.0, -0.4)] == pytest.approx([0.0, -0.1, 0.4, 0.0])
    with lockstep_unit(Variation(dead_zone_v=(0.4, 0.6))) as (_, host):
        still = drive(host, 0.0, 5)
        assert drive(host, 0.5, 25)[0] == still[0]  # 0.5 V is inside the positive side's 0.6 V
        assert drive(host, -0.5, 25)[0] < still[0] - 5  # and outside the negative side's 0.4 V
    with lockstep_unit(Variation()) as (_, host):  # the nominal unit moves on 0.5 V
        still = drive(host, 0.0, 5)
        assert drive(host, 0.5, 25)[0] > still[0] + 5


def test_a_units_true_hard_stops_are_where_its_arm_stops():
    truth = Variation(hard_stops=(-1.0, 2.0))
    with lockstep_unit(truth) as (device, host):
        drive(host, 3.0, 75)  # 1.5 s pushing: 15 mN·m against a 2.4 mN·m/rad cable would need 6 rad
        high = float(device.physics.data.qpos[0])
        drive(host, 0.0, 50)
        drive(host, -3.0, 100)
        low = float(device.physics.data.qpos[0])
        arrivals = list(device.physics.hard_stop_speeds)
    assert high == pytest.approx(2.0, abs=0.02) and low == pytest.approx(-1.0, abs=0.02)
    assert len(arrivals) >= 2  # the device's audit saw both arrivals


def test_a_truth_is_read_from_a_file_or_the_command_line_and_bad_ones_are_refused_by_name(tmp_path):
    path = tmp_path / "unit.yaml"
    path.write_text("count_offsets: [1, 2]\ndead_zone_v: [0.3, 0.35]\nphysics: {motor_gain: 0.0052}\n")
    assert load_variation(str(path)) == Variation(count_offsets=(1, 2), dead_zone_v=(0.3, 0.35),
                                                  physics={"motor_gain": 0.0052})
    assert load_variation("") == Variation()
    for text, problem in (("{count_directions: [2, 1]}", "count_directions"),
                          ("{hard_stops: [1.0, 2.0]}", "low < 0 < high"),
                          ("{dead_zone_v: [-0.1, 0.2]}", "two magnitudes"),
                          ("{warp_drive: 1}", "warp_drive"),
                          ("{count_offsets: [1, 2", "neither a .yaml file nor YAML")):
        with pytest.raises(ValueError, match=problem):
            load_variation(text)
    with pytest.raises(ValueError, match="count_directions \\[-1\\] has 1 entries; the robot has 2 encoders"):
        VirtualRobot(SPEC, lockstep=True, variation=Variation(count_directions=(-1,)))
    with pytest.raises(ValueError, match="warp"):
        VirtualRobot(SPEC, lockstep=True, variation=Variation(physics={"warp": 1.0}))
