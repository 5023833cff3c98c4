"""From an excitation log to the gate: `robot-app sysid` writes a fitted overlay and its report, refuses what it cannot
use, and the gate draws its episodes around the overlay and records which physics it judged under."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from calibration.encoders import load_calibration
from calibration.excitation import run_excitation
from robot_app.cli import main
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.physics import load_physics
from sim.gate import load_gate_config, plan_episodes, validate, write_report
from sim.virtual_robot import Variation
from tests.virtual_units import SPEC, confirmed, virtual_robot, with_breakaway

TRUE = {"arm_damping": 2e-4, "pendulum_damping": 3e-5, "motor_gain": 0.0054, "arm_mass": 0.1}
BALANCING = Path(__file__).parents[1] / "fixtures" / "furuta_balance.onnx"


@pytest.fixture(scope="module")
def excitation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("excite")
    calibration = with_breakaway(confirmed(load_calibration("furuta")), 0.2, 0.2)
    with virtual_robot(Variation(physics=TRUE, plant_latency_s=0.003, dead_zone_v=(0.15, 0.15))) as (robot, _):
        log = run_excitation(SerialRobot(robot.port), SPEC, calibration, folder / "excite.sqlite", seconds=10.0,
                             swing_s=0.0)
    return log


def test_sysid_writes_an_overlay_with_intervals_and_a_report(excitation, tmp_path, capsys):
    out = tmp_path / "fitted.yaml"
    assert main(["sysid", str(excitation), "--out", str(out), "--weighed", "arm_mass=0.1", "--max-iter", "8"]) == 0
    physics = load_physics(out)
    assert physics.robot_id == "furuta-7" and physics.logs == [str(excitation)]
    assert physics.parameters["arm_mass"].value == 0.1 and physics.parameters["arm_mass"].interval_95 == 0
    for name in ("arm_damping", "pendulum_damping", "motor_gain"):
        fitted = physics.parameters[name]
        assert fitted.value == pytest.approx(TRUE[name], rel=0.15), name
        assert 0 < fitted.interval_95 < fitted.value
    assert max(physics.held_out_rmse_counts) < min(physics.datasheet_held_out_rmse_counts)
    assert physics.quantisation_floor_counts == pytest.approx(1 / math.sqrt(12))
    report = (tmp_path / "fitted.report" / "report.md").read_text()
    assert "| motor_gain |" in report and (tmp_path / "fitted.report" / "held_out.png").stat().st_size > 10_000
    assert "held-out RMSE" in capsys.readouterr().out
    # Narrowed: the gate draws each fitted parameter within 3 intervals of its value; the rest as the spec does.
    narrowed = physics.narrow(SPEC)
    for name, fitted in physics.parameters.items():
        span = narrowed.randomisation[name]
        assert span.high == pytest.approx(fitted.value + 3 * fitted.interval_95)
        assert span.low == pytest.approx(max(0.0, fitted.value - 3 * fitted.interval_95))
    assert narrowed.randomisation["sensor_noise_counts"] == SPEC.randomisation["sensor_noise_counts"]
    assert physics.parameters["control_jitter_s"].value < 1e-3  # this unit has no jitter
    gain = physics.parameters["motor_gain"]
    assert physics.narrow(SPEC, widen=1).randomisation["motor_gain"].high == gain.value + gain.interval_95
    for plan in plan_episodes(narrowed, 8, seed=0, dead_zone_v=physics.dead_zone_v):
        assert plan.dead_zone_v == physics.dead_zone_v
        assert all(narrowed.randomisation[n].low <= v <= narrowed.randomisation[n].high for n, v in plan.draws.items())


@pytest.mark.parametrize("args, message", [
    (["--weighed", "arm_damping=0.1"], "not a mass of the furuta spec's table"),
    (["--weighed", "arm_mass=heavy"], "give NAME=KILOGRAMS"),
    (["--weighed", "arm_mass=-1"], "above 0 kg"),
    (["--out", "{tmp}/exists.yaml"], "exists: choose another --out"),
    (["--report", "{tmp}"], "exists: choose another --out or --report"),
])
def test_sysid_refuses_bad_input_before_fitting(excitation, tmp_path, capsys, args, message):
    (tmp_path / "exists.yaml").write_text("kept: true\n")
    argv = ["sysid", str(excitation), "--out", str(tmp_path / "new.yaml"), *[a.format(tmp=tmp_path) for a in args]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "identifying" not in captured.out  # refused before any fitting
    assert (tmp_path / "exists.yaml").read_text() == "kept: true\n" and not (tmp_path / "new.yaml").exists()


def test_logs_of_two_units_or_an_overlay_for_another_robot_are_refused(excitation, tmp_path, capsys):
    other = tmp_path / "other.sqlite"
    other.write_bytes(excitation.read_bytes())
    meta = json.loads(Path(f"{excitation}.json").read_text())
    Path(f"{other}.json").write_text(json.dumps(meta | {"robot_id": "furuta-8"}))
    assert main(["sysid", str(excitation), str(other), "--out", str(tmp_path / "f.yaml")]) == 2
    assert "different units (furuta-7, furuta-8)" in capsys.readouterr().err
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(_overlay(robot="qube")))
    with pytest.raises(ValueError, match="for robot 'qube', not 'furuta'"):
        load_physics(overlay).narrow(SPEC)
    overlay.write_text(yaml.safe_dump(_overlay(parameters={"wheel_damping": {"nominal": 1, "value": 1,
                                                                             "interval_95": 0}})))
    with pytest.raises(ValueError, match="names \\['wheel_damping'\\], which the furuta spec does not randomise"):
        load_physics(overlay).narrow(SPEC)


def _overlay(**changes) -> dict:
    return {"robot": "furuta", "robot_id": "furuta-7", "created": "2026-12-03T00:00:00+00:00", "method": "test",
            "logs": [], "parameters": {"motor_gain": {"nominal": 0.0052, "value": 0.0054, "interval_95": 1e-5}},
            "dead_zone_v": [0.15, 0.15], "held_out_rmse_counts": [0.3, 0.3], "datasheet_held_out_rmse_counts": [9, 9],
            "quantisation_floor_counts": 0.2887, "fit_seconds": 1.0} | changes


def test_the_gate_judges_under_a_units_physics_and_says_which(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(_overlay(parameters={name: {"nominal": 1, "value": value, "interval_95": 0}
                                                           for name, value in TRUE.items()})))
    report = validate(BALANCING, "furuta", load_gate_config(episodes=1, workers=1, seed=7), physics=overlay)
    (episode,) = report.episodes
    assert report.physics["robot_id"] == "furuta-7" and report.physics["widen"] == 3.0
    assert len(report.physics["sha256"]) == 64
    assert episode.draws["motor_gain"] == TRUE["motor_gain"] and episode.draws["arm_mass"] == TRUE["arm_mass"]
    assert episode.dead_zone_v == (0.15, 0.15) and np.isfinite(report.metrics.return_mean)
    assert "Physics: unit furuta-7's fitted values" in (write_report(report, tmp_path / "r") / "report.md").read_text()
