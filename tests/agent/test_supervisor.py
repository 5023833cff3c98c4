"""The safety supervisor alone: limits, rate, braking, latches, and a property test that no output leaves the limits."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_app.agent.supervisor import SafetySupervisor
from robot_app.robot.spec import load_robot_spec
from robot_app.robot.task import JointState

SPEC = load_robot_spec("furuta")
PERIOD = 0.02
MAX_STEP = SPEC.actuators[0].rate_limit * PERIOD  # 5 V per 50 Hz tick


def state(arm=0.0, arm_velocity=0.0):
    return JointState(np.array([arm, math.pi]), np.array([arm_velocity, 0.0]), 0.0)


@pytest.fixture
def supervisor():
    return SafetySupervisor(SPEC, ["arm", "pendulum"], PERIOD)


def test_an_action_inside_every_limit_passes_untouched(supervisor):
    verdict = supervisor.check([1.5], state(), 0.0)
    assert verdict.command.tolist() == [1.5] and verdict.enable and verdict.reasons == ()


def test_actions_are_clamped_and_rate_limited(supervisor):
    assert supervisor.check([40.0], state(), 0.0).command.tolist() == [5.0]
    slow = SafetySupervisor(SPEC, ["arm", "pendulum"], 0.002)  # 500 Hz: 0.5 V per tick
    verdict = slow.check([-5.0], state(), 0.0)
    assert verdict.command.tolist() == [-0.5] and set(verdict.reasons) == {"rate_limited"}
    assert slow.counts["rate_limited"] == 1


def test_the_rate_limit_forbids_a_full_reversal_within_one_control_period():
    """At 500 V/s a 50 Hz step could cross the whole ±5 V range, so the limit checked nothing."""
    (motor,) = SPEC.actuators
    assert motor.rate_limit * SPEC.period_s < motor.command_limit[1] - motor.command_limit[0]
    supervisor = SafetySupervisor(SPEC, ["arm", "pendulum"], SPEC.period_s)
    commands = [supervisor.check([5.0 * (-1) ** i], state(), 0.0).command[0] for i in range(4)]
    assert commands == [5.0, 0.0, 5.0, 0.0]  # bang-bang asked for; at most half the range a period delivered


def test_non_finite_action_gives_the_safe_action_and_a_fault_that_latches(supervisor):
    verdict = supervisor.check([float("nan")], state(), 0.0)
    assert verdict.command.tolist() == [0.0] and "non_finite_action" in verdict.reasons
    assert supervisor.check([2.0], state(), 0.0).command.tolist() == [0.0]  # still latched: safe, not the action
    supervisor.clear_fault()
    assert supervisor.check([2.0], state(), 0.0).command.tolist() == [2.0]


def test_stale_sensor_data_latches_a_safe_stop_with_the_driver_disabled(supervisor):
    assert supervisor.check([3.0], state(), 0.0).command.tolist() == [3.0]
    verdict = supervisor.check([3.0], state(), SPEC.watchdog_timeout_s + 0.01)
    assert verdict.command.tolist() == [0.0] and not verdict.enable and "stale_sensors" in verdict.reasons
    assert not supervisor.safe_to_run
    verdict = supervisor.check([3.0], None, math.inf)
    assert verdict.command.tolist() == [0.0] and not verdict.enable
    supervisor.clear_fault()
    assert supervisor.check([5.0], state(), 0.0).command.tolist() == [5.0]  # ramps from the 0 V the motor was on


def test_estop_latches_with_the_motor_off_until_an_explicit_reset(supervisor):
    supervisor.engage_estop("operator")
    for _ in range(3):
        verdict = supervisor.check([2.0], state(), 0.0)
        assert verdict.command.tolist() == [0.0] and not verdict.enable and verdict.reasons == ("estop",)
    supervisor.reset_estop()
    assert supervisor.check([2.0], state(), 0.0).enable


def test_it_brakes_before_a_joint_limit_at_speed_and_holds_at_it(supervisor):
    high = SPEC.joint("arm").position_limit[1]
    verdict = supervisor.check([5.0], state(arm=high - 0.3, arm_velocity=6.0), 0.0)
    assert verdict.command.tolist() == [-5.0] and "braking" in verdict.reasons
    assert supervisor.check([5.0], state(arm=high - 0.3, arm_velocity=-6.0), 0.0).command.tolist() == [0.0]  # rate
    assert supervisor.check([5.0], state(arm=high - 0.3, arm_velocity=-6.0), 0.0).command.tolist() == [5.0]
    assert supervisor.check([2.0], state(arm=high + 0.01), 0.0).command.tolist() == [0.0]


def test_a_push_towards_a_limit_is_capped_to_what_stops_inside_it(supervisor):
    high = SPEC.joint("arm").position_limit[1]
    far, near, nearer = (supervisor.check([5.0], state(arm=high - d, arm_velocity=1.0), 0.0) for d in (1.0, 0.4, 0.2))
    assert far.command[0] == 5.0 and far.reasons == ()
    assert 0.0 < nearer.command[0] < near.command[0] < 5.0 and "hold_at_limit" in near.reasons


def test_a_latched_fault_brakes_a_moving_arm_to_rest(supervisor):
    for velocity in (3.0, -3.0):
        supervisor = SafetySupervisor(SPEC, ["arm", "pendulum"], PERIOD)
        supervisor.latch_fault("test")
        assert supervisor.check([0.0], state(arm_velocity=velocity), 0.0).command[0] * velocity < 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), 1e9, -1e9])),
    st.floats(-2.5, 2.5), st.floats(-40, 40), st.floats(0, 0.5), st.booleans()), min_size=1, max_size=40))
def test_no_output_ever_leaves_the_command_or_rate_limits(ticks):
    supervisor = SafetySupervisor(SPEC, ["arm", "pendulum"], PERIOD)
    previous = np.array([0.0])
    for action, arm, velocity, age, clear in ticks:
        verdict = supervisor.check([action], state(arm, velocity), age)
        command = verdict.command
        assert np.all(np.isfinite(command)) and np.all(np.abs(command) <= 5.0)
        if verdict.enable:
            assert np.all(np.abs(command - previous) <= MAX_STEP + 1e-9)
        previous = command
        if clear:
            supervisor.clear_fault()


def test_after_the_motor_may_have_been_cut_the_next_command_ramps_from_both_the_last_and_the_safe_value(supervisor):
    """A device's false 'watchdog tripped' once let a command ramp from 0 V while the motor still drove -3.8 V."""
    supervisor.check([-3.8], state(), 0.0)
    supervisor.motor_was_off()
    verdict = supervisor.check([5.0], state(), 0.0)  # 0 V + 5 V is allowed; -3.8 V + 5 V is the bound
    assert verdict.command[0] == pytest.approx(1.2) and "rate_limited" in verdict.reasons
    assert supervisor.check([5.0], state(), 0.0).command[0] == pytest.approx(5.0)  # one tick: then from the last
    fast = SafetySupervisor(SPEC, ["arm", "pendulum"], 0.002)  # 0.5 V a tick: no command is near both -2 V and 0 V
    for _ in range(4):
        fast.check([-5.0], state(), 0.0)
    fast.motor_was_off()
    assert fast.check([-5.0], state(), 0.0).command[0] == pytest.approx(-0.5)  # from 0 V, the likely truth
