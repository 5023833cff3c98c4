"""The calibration procedures recover a virtual robot's hidden truth, through the agent, and refuse what they must."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from calibration.encoders import load_calibration, save_calibration
from calibration.excitation import ExciteController, excitation_signal, run_excitation
from calibration.procedures import (
    DirectionController, ProcedureError, Trial, analyse_direction, analyse_zero, preconditions, response_signs,
    run_step, swing_centre,
)
from robot_app.agent.transition_log import TransitionLog
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.spec import load_robot_spec
from sim.furuta import pulse_response
from sim.virtual_robot import Variation
from tests.virtual_units import confirmed, virtual_robot

SPEC = load_robot_spec("furuta")
CLI = [sys.executable, "-m", "robot_app.cli"]
TRUTH = Variation(count_offsets=(37, -9), count_directions=(1, -1), hard_stops=(-2.3, 2.45), dead_zone_v=(0.3, 0.2),
                  sensor_noise_counts=0.5)


def test_the_cli_recovers_the_hidden_truth_and_keeps_every_version(tmp_path):
    device = subprocess.Popen([*CLI, "virtual-robot", "--lockstep", "--robot-id", "furuta-7", "--truth",
                               yaml.safe_dump(TRUTH.model_dump(mode="json"), default_flow_style=True)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = device.stdout.readline().strip()
        calibrate = [*CLI, "calibrate", "--port", port, "--robot-id", "furuta-7", "--out-dir", str(tmp_path)]
        first = subprocess.run(calibrate, capture_output=True, text=True, timeout=300)
        assert first.returncode == 1, first.stderr  # zero, then the direction check stops on the reversed pendulum
        assert "direction mismatch on pendulum_encoder" in first.stderr
        refused = subprocess.run([*calibrate, "--step", "travel"], capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "needs the encoder directions confirmed" in refused.stderr
        again = subprocess.run([*calibrate, "--step", "direction", "--step", "travel", "--step", "dead_zone"],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    finally:
        device.terminate()
        device.wait(timeout=20)
    calibration = load_calibration(tmp_path / "furuta-7.yaml", robot="furuta")
    arm, pendulum = calibration.encoders["arm_encoder"], calibration.encoders["pendulum_encoder"]
    assert (arm.direction, pendulum.direction) == (1, -1)
    assert abs((pendulum.offset_counts - (-9 + 1024)) % 2048) <= 2 or abs(pendulum.offset_counts - 1015) <= 2
    centre_counts = 37 + (-2.3 + 2.45) / 2 / arm.scale  # the arm's zero is the centre of its travel
    assert abs(arm.offset_counts - centre_counts) <= 2
    travel = calibration.steps["travel"].measured
    half = (2.45 + 2.3) / 2
    np.testing.assert_allclose(travel["stops_rad"], [-half, half], atol=math.radians(2))
    assert travel["max_approach_rad_s"] <= SPEC.joint("arm").max_hard_stop_speed
    breakaway = calibration.steps["dead_zone"].measured["breakaway_v"]
    assert abs(breakaway["positive"]["mean_v"] - 0.2) < 0.1 and abs(breakaway["negative"]["mean_v"] - 0.3) < 0.1
    record = calibration.steps["dead_zone"]
    assert record.robot_id == "furuta-7" and record.firmware.startswith("virtual-robot") and record.checks
    assert set(calibration.steps) == {"zero", "direction", "travel", "dead_zone"}
    versions = list((tmp_path / "history" / "furuta-7").glob("*.yaml"))
    assert len(versions) == 4  # zero, direction (mismatch), direction, travel: each kept when the next was written
    assert {load_calibration(v).encoders["pendulum_encoder"].direction for v in versions} == {1, -1}


def test_the_travel_search_stops_the_arm_gently_and_refuses_a_jammed_arm():
    with virtual_robot(Variation(hard_stops=(-0.1, 0.1))) as (robot, audit):
        with pytest.raises(ProcedureError, match=r"travel, trial 1: the arm stalled 0\.\d+ rad from where it started"):
            run_step("travel", SerialRobot(robot.port), SPEC, confirmed(load_calibration("furuta")))
    assert audit["hard_stop_speeds"] and max(audit["hard_stop_speeds"]) <= SPEC.joint("arm").max_hard_stop_speed


def test_a_dead_zone_past_the_procedures_voltage_is_reported_not_pushed_through():
    with virtual_robot(Variation(dead_zone_v=(2.0, 2.0))) as (robot, audit):
        with pytest.raises(ProcedureError, match=r"dead_zone, trial 1: the arm did not move on the \+ side up to 1\.5"):
            run_step("dead_zone", SerialRobot(robot.port), SPEC, confirmed(load_calibration("furuta")))
    assert max(abs(v) for v in audit["last_command"]) <= 1.5


def test_the_agent_refuses_to_run_a_step_on_another_units_calibration():
    with virtual_robot(Variation(), robot_id="furuta-8") as (robot, _):
        with pytest.raises(ConnectionError, match="the calibration was measured on 'furuta-7'"):
            run_step("zero", SerialRobot(robot.port), SPEC, confirmed(load_calibration("furuta")))


def test_steps_that_drive_far_need_a_confirmed_direction_and_say_so():
    nominal = load_calibration("furuta")
    assert preconditions("zero", nominal, SPEC) == [] == preconditions("direction", nominal, SPEC)
    for step in ("travel", "dead_zone"):
        (problem,) = preconditions(step, nominal, SPEC)
        assert "--step direction" in problem
        assert preconditions(step, confirmed(nominal), SPEC) == []
    flipped = confirmed(nominal).model_copy(update={"encoders": nominal.encoders | {
        "arm_encoder": nominal.encoders["arm_encoder"].model_copy(update={"direction": -1})}})
    assert preconditions("travel", flipped, SPEC)  # confirmed for other directions than these
    with pytest.raises(ProcedureError, match="travel cannot start"):
        run_step("travel", None, SPEC, nominal)  # refused before it touches the robot
    assert "unknown step" in preconditions("home", nominal, SPEC)[0]


@pytest.mark.parametrize("decay_per_s", [0.05, 2.0])  # a pendulum that swings for minutes, and one that stops at once
def test_a_swing_centre_is_found_through_noise_and_decay(decay_per_s):
    t = np.arange(200) * 0.02
    rng = np.random.default_rng(0)
    counts = np.round(1031.3 + 30 * np.exp(-decay_per_s * t) * np.sin(11.0 * t) + rng.normal(0, 1.0, t.size))
    centre, amplitude = swing_centre(counts)
    assert abs(centre - 1031.3) < 0.5 and amplitude > 15


def _zero_trial(centre, scale):
    phase = ["settle"] * 100 + ["swing"] * 200
    t = np.arange(200) * 0.02
    pendulum = np.concatenate([np.full(100, centre), centre + 20 * np.sin(11.0 * t)]) - 1024
    position = np.stack([np.zeros(300), np.round(pendulum) * scale], axis=1)
    return Trial(phase, position, np.zeros_like(position), np.zeros(300), [()] * 300, None)


def test_the_zero_refuses_a_down_position_that_does_not_repeat():
    scale = load_calibration("furuta").encoders["pendulum_encoder"].scale
    outcome = analyse_zero([_zero_trial(c, scale) for c in (3.0, 3.5, 4.0)], load_calibration("furuta"), SPEC)
    assert outcome.encoders["pendulum_encoder"].offset_counts == round(3.5 + 1024)
    with pytest.raises(ProcedureError, match="did not repeat: .* a spread of 5.0"):
        analyse_zero([_zero_trial(c, scale) for c in (3.0, 8.0, 4.0)], load_calibration("furuta"), SPEC)


def test_the_direction_check_compares_with_the_model_and_refuses_what_it_cannot_judge():
    expected, _ = response_signs(pulse_response(SPEC, DirectionController.PULSE_V, DirectionController.PULSE_S, 0.7),
                                 SPEC.period_s)
    assert expected == (1, -1)  # the model: a positive pulse moves the arm positive and swings the pendulum back
    scale = load_calibration("furuta").encoders["arm_encoder"].scale

    def trial(pulse, arm_sign, pendulum_sign, size=40):
        k = np.arange(40)
        position = np.stack([arm_sign * pulse * np.minimum(k, 10) * size / 10,
                             pendulum_sign * pulse * np.sin(k / 5) * size], axis=1) * scale
        return Trial(["pulse"] * 5 + ["response"] * 35, position, np.zeros_like(position),
                     np.where(k < 5, pulse * 1.0, 0.0), [()] * 40, None)

    nominal = load_calibration("furuta")
    ok = analyse_direction([trial(1, 1, -1), trial(-1, 1, -1)], nominal, SPEC, expected)
    assert ok.stop is None and ok.measured["confirmed"] and not ok.encoders
    both = analyse_direction([trial(1, -1, 1), trial(-1, -1, 1)], nominal, SPEC, expected)
    assert "reversed motor" in both.stop and {e.direction for e in both.encoders.values()} == {-1}
    with pytest.raises(ProcedureError, match="the two pulses disagree"):
        analyse_direction([trial(1, 1, -1), trial(-1, -1, -1)], nominal, SPEC, expected)
    with pytest.raises(ProcedureError, match="too small to judge"):
        analyse_direction([trial(1, 1, -1, size=2), trial(-1, 1, -1, size=2)], nominal, SPEC, expected)


def test_saving_keeps_the_version_it_replaces_and_a_nominal_calibration_is_not_saved(tmp_path):
    unit = confirmed(load_calibration("furuta"))
    path = save_calibration(unit, tmp_path)
    changed = unit.model_copy(update={"encoders": unit.encoders | {
        "arm_encoder": unit.encoders["arm_encoder"].model_copy(update={"offset_counts": 5})}})
    assert save_calibration(changed, tmp_path) == path
    (kept,) = (tmp_path / "history" / "furuta-7").glob("*.yaml")
    assert load_calibration(kept) == unit and load_calibration(path) == changed
    with pytest.raises(ValueError, match="only a unit's calibration"):
        save_calibration(load_calibration("furuta"), tmp_path)


def test_excitation_is_recorded_through_the_supervisor_with_how_it_was_made(tmp_path):
    calibration = confirmed(load_calibration("furuta"))
    out = tmp_path / "excite.sqlite"
    with virtual_robot(Variation()) as (robot, audit):
        assert run_excitation(SerialRobot(robot.port), SPEC, calibration, out, seconds=4.0, volts=2.0,
                              swing_s=6.0) == out
    assert audit["limit_violations"] == 0 and audit["rate_violations"] == 0
    log = TransitionLog(out)
    chunks = [chunk for _, chunk in log.read()]
    log.close()
    sent = np.concatenate([c.columns["action"][:, 0] for c in chunks])
    asked = np.concatenate([c.columns["policy_action"][:, 0] for c in chunks])
    assert len(sent) >= 500 and np.abs(sent).max() <= 2.0 and np.abs(asked).max() > 1.0  # it moved, within --volts
    pendulum = np.concatenate([c.columns["obs"][:, 1] for c in chunks])
    from_hanging = np.abs(np.remainder(pendulum, 2 * np.pi) - np.pi)
    assert 0.8 < from_hanging.max() < ExciteController.SWING_RAD + 0.5  # pumped (the nominal damping is high), not over
    meta = json.loads((tmp_path / "excite.sqlite.json").read_text())
    assert meta["robot_id"] == "furuta-7" and meta["volts"] == 2.0 and meta["period_s"] == SPEC.period_s
    assert meta["swing_s"] == 6.0
    with pytest.raises(ProcedureError, match="never appended to or overwritten"):
        run_excitation(None, SPEC, calibration, out)
    with pytest.raises(ProcedureError, match="directions confirmed.*; --volts 9 is outside"):
        run_excitation(None, SPEC, load_calibration("furuta"), tmp_path / "new.sqlite", volts=9.0)
    signal = excitation_signal(10.0, 0.02, 3.0, seed=1)
    assert np.array_equal(signal, excitation_signal(10.0, 0.02, 3.0, seed=1)) and np.abs(signal).max() <= 3.0
