"""Identification's model: it replays a unit's recorded volts (dead zone, latency) exactly as the virtual robot's
physics moved, and a log it cannot use is refused with the reason."""

import math

import numpy as np
import pytest
from mujoco import sysid

from calibration.encoders import load_calibration
from calibration.excitation import excitation_signal, run_excitation
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.spec import load_robot_spec
from sim.furuta import FurutaPhysics
from sim.sysid import (
    DEAD_ZONE, SPRING_ZERO, Recording, Simulator, SysidError, identify, jitter_width, load_recording, refit_states,
    solve, window_starts,
)
from sim.virtual_robot import Variation
from tests.virtual_units import confirmed, virtual_robot, with_breakaway

SPEC = load_robot_spec("furuta")
TRUE = {"arm_damping": 2e-4, "pendulum_damping": 3e-5, "motor_gain": 0.0054, "arm_friction": 2e-5,
        "pendulum_friction": 7e-6, "cable_stiffness": 1e-3}
DEAD = (0.3, 0.1)
DELAY = 0.0035
COUNT = 2 * math.pi / 2048


def calibration():
    return with_breakaway(load_calibration("furuta"), 0.25, 0.15, robot_id="u")


def plant_recording(seconds, quantised=False):
    """The plant driven by an excitation, as the virtual robot holds each command `DELAY` into its period."""
    physics = FurutaPhysics(SPEC)
    physics.randomise(TRUE)
    physics.set_hidden(None, DEAD)
    volts = excitation_signal(seconds, SPEC.period_s, 2.0, seed=0)[:, None]
    before = (0.0,)
    physics.reset()
    angles, velocities = [physics.data.qpos.copy()], [physics.data.qvel.copy()]
    for v in volts[:-1]:
        physics.step(before, DELAY)
        physics.step((float(v[0]),), SPEC.period_s - DELAY)
        before = (float(v[0]),)
        angles.append(physics.data.qpos.copy())
        velocities.append(physics.data.qvel.copy())
    angles = np.array(angles) - [0, math.pi]
    if quantised:
        angles = np.round(angles / COUNT) * COUNT
    return np.array(velocities), Recording(None, "u", SPEC.period_s, angles, volts, calibration())


def x_of(simulator, truth):
    """The optimiser's vector for these values of the simulator's unknowns."""
    x = np.array([math.log(truth[u.name] / u.nominal) if u.log else truth[u.name] / (u.nominal or u.unit)
                  for u in simulator.unknowns])
    assert simulator.values(x) == pytest.approx(truth)
    return x


def true_x(simulator):
    return x_of(simulator, TRUE | {"plant_latency_s": DELAY, DEAD_ZONE[0]: DEAD[0], DEAD_ZONE[1]: DEAD[1],
                                   SPRING_ZERO: 0.0})


def test_the_model_replays_the_plant_exactly_from_every_windows_start():
    velocities, recording = plant_recording(6.0)
    simulator = Simulator(SPEC, {}, recording.calibration)
    x = true_x(simulator)
    starts, length = np.array([0, 99, 198]), 101
    # The windows after the first start from the plant's true velocities; the first from rest.
    states = np.stack([np.zeros(4)] + [np.r_[0, 0, velocities[s]] for s in starts[1:]])
    predicted = simulator.predict(recording, [(x, states)], starts, length)[0]
    for window, start in zip(predicted, starts):
        assert np.abs(window - recording.angles[start:start + length]).max() < 1e-9
    shifted = simulator._control(recording.volts, simulator.values(x), np.full(len(recording.volts), 0.001))
    earlier = simulator._control(recording.volts, simulator.values(x) | {"plant_latency_s": DELAY - 0.001})
    assert np.abs(shifted - earlier).max() < 1e-9  # every command landing 1 ms early is a 1-ms shorter latency
    nominal = simulator.predict(recording, [(np.array([u.start for u in simulator.unknowns]), states)], starts,
                                length)[0]
    assert np.abs(nominal - predicted).max() > 0.05  # the datasheet's robot moves otherwise: the fit has a signal


def test_a_log_identification_cannot_use_is_refused_with_the_reason(tmp_path):
    with pytest.raises(SysidError, match="not an excitation log"):
        load_recording(tmp_path / "missing.sqlite")
    with pytest.raises(SysidError, match="no dead_zone step"):
        Simulator(SPEC, {}, load_calibration("furuta"))
    recording = Recording(None, "u", SPEC.period_s, np.zeros((150, 2)), np.zeros((150, 1)), calibration())
    with pytest.raises(SysidError, match="past the recording's 150 samples"):
        Simulator(SPEC, {}, calibration()).predict(recording, [], np.array([0, 100]), 51)


def test_identification_recovers_the_plant_from_a_short_quantised_log():
    _, recording = plant_recording(10.0, quantised=True)
    fit = identify(SPEC, [recording], known={}, max_iter=12)
    for name in ("arm_damping", "pendulum_damping", "motor_gain"):
        assert fit.values[name] == pytest.approx(TRUE[name], rel=0.05), name
    assert fit.values["plant_latency_s"] == pytest.approx(DELAY, abs=1e-3)
    assert fit.values["control_jitter_s"] < 1e-3  # this plant has none
    floor = 1 / math.sqrt(12)  # counts: what quantisation alone leaves
    assert max(fit.held_out_rmse_counts) < 2 * floor < min(fit.nominal_held_out_rmse_counts)
    assert all(0 < width < math.inf for width in fit.intervals.values())


def test_the_fit_stops_once_its_cost_stops_falling():
    """A residual that never reaches 0 and a Jacobian 1.5x too steep: the error shrinks 3x an iteration, and the
    cost settles long before the step does. solve stops there, not at max_iter."""
    params = sysid.ParameterDict()
    params.add(sysid.Parameter("x", 0.0, -10.0, 10.0))
    calls = []

    def jacobian(x, r=None):
        calls.append(float(np.asarray(x).reshape(-1)[0]))
        return np.array([[1.5], [0.0]])

    x = solve(params, lambda x: np.array([[float(np.asarray(x).reshape(-1)[0]) - 3.0], [1.0]]), jacobian,
              max_iter=50)
    assert abs(x[0] - 3.0) < 0.01 and len(calls) <= 10  # the step test alone takes 15


def test_the_jitter_in_when_commands_land_is_found_in_the_residuals(tmp_path):
    """A unit whose commands land 3 ms + U(0, 2 ms) late, excited as `robot-app excite` does, replayed with its true
    physics at the mean delay: the residuals give the spread's width back; a unit without jitter gives next to none."""
    physics = {"arm_damping": 2e-4, "pendulum_damping": 3e-5, "motor_gain": 0.0054}
    calibration = with_breakaway(confirmed(load_calibration("furuta")), 0.2, 0.2)
    found = {}
    for jitter in (0.0, 0.002):
        unit = Variation(physics=physics, plant_latency_s=0.003, jitter_s=jitter, dead_zone_v=(0.2, 0.2))
        with virtual_robot(unit) as (robot, _):
            log = run_excitation(SerialRobot(robot.port), SPEC, calibration, tmp_path / f"{jitter}.sqlite",
                                 seconds=20.0, swing_s=10.0)
        recording = load_recording(log)
        simulator = Simulator(SPEC, {}, recording.calibration)
        truth = {u.name: u.value(u.start) for u in simulator.unknowns} | physics
        truth["plant_latency_s"] = 0.003 + jitter / 2
        x = x_of(simulator, truth)
        starts, length = window_starts(0, len(recording.angles), 51), 51
        states, _ = refit_states(simulator, recording, x, starts, length)
        found[jitter] = jitter_width(simulator, [recording], x, [states], [starts], length)
    (none, none_95), (width, width_95) = found[0.0], found[0.002]
    assert none < 0.6e-3 and 0 < none_95  # rounding to whole counts is not white noise at low speed: a little is left
    assert width == pytest.approx(0.002, abs=0.5e-3) and 0 < width_95 < 1e-3
