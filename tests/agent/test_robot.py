"""The robot description: spec validation, encoder calibration, the sensor pipeline and the swing-up task."""

import math

import numpy as np
import pytest
import yaml

from calibration.encoders import load_calibration
from robot_app.robot.spec import load_robot_spec
from robot_app.robot.task import JointState, SensorPipeline, make_task, wrap_angle


@pytest.fixture
def spec():
    return load_robot_spec("furuta")


def _write_spec(tmp_path, spec, **changes):
    data = spec.model_dump(mode="json")
    data.update(changes)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_default_robot_spec_loads_with_its_limits(spec):
    arm = spec.joint("arm")
    assert arm.hard_stop[0] < arm.position_limit[0] < 0 < arm.position_limit[1] < arm.hard_stop[1]
    assert spec.actuators[0].command_limit == (-5.0, 5.0) and spec.actuators[0].safe_command == 0.0
    assert spec.episode_steps == 400 and spec.with_rate(500).episode_steps == 4000
    assert {"arm_damping", "pendulum_damping"} <= set(spec.randomisation)


def test_bad_specs_are_refused_naming_the_problem(spec, tmp_path):
    joints = spec.model_dump(mode="json")["joints"]
    joints[0]["position_limit"] = [-3.0, 3.0]
    with pytest.raises(ValueError, match="must lie inside hard_stop"):
        load_robot_spec(_write_spec(tmp_path, spec, joints=joints))
    actuators = spec.model_dump(mode="json")["actuators"]
    actuators[0]["joint"] = "elbow"
    with pytest.raises(ValueError, match="refers to joint 'elbow'"):
        load_robot_spec(_write_spec(tmp_path, spec, actuators=actuators))
    actuators[0] |= {"joint": "arm", "safe_command": 9.0}
    with pytest.raises(ValueError, match="safe_command 9.0 is outside"):
        load_robot_spec(_write_spec(tmp_path, spec, actuators=actuators))
    with pytest.raises(ValueError, match="unknown robot 'quadruped'"):
        load_robot_spec("quadruped")
    damping = {"parameter": "joint_damping", "element": "arm"}
    for bad, problem in ((damping | {"low": 2.0, "high": 1.0}, "low 2.0 is above high 1.0"),
                         (damping | {"low": 0.0, "high": 1.0, "log": True}, "log-uniform range needs low > 0"),
                         ({"parameter": "joint_damping", "low": 0.0, "high": 1.0}, "joint_damping needs element"),
                         (damping | {"element": "elbow", "low": 0.0, "high": 1.0}, "'elbow', which is none of"),
                         ({"parameter": "sensor_noise", "element": "arm", "low": 0, "high": 1}, "takes no element"),
                         ({"parameter": "warp_drive", "low": 0.0, "high": 1.0}, "parameter"),
                         ([0.0, 1.0], "it names what it sets")):
        with pytest.raises(ValueError, match=problem):
            load_robot_spec(_write_spec(tmp_path, spec, randomisation={"arm_damping": bad}))
    noise = {"parameter": "sensor_noise", "low": 0.0, "high": 1.0}
    with pytest.raises(ValueError, match="a second range for sensor_noise"):
        load_robot_spec(_write_spec(tmp_path, spec, randomisation={"a": noise, "b": noise}))


def test_a_log_uniform_range_draws_each_decade_equally_often(spec):
    span = spec.randomisation["pendulum_damping"]
    assert span.log and spec.randomisation["pendulum_mass"].log is False
    draws = np.array([span.draw(np.random.default_rng(seed)) for seed in range(4000)])
    assert span.low <= draws.min() and draws.max() <= span.high
    decades = np.histogram(np.log10(draws), bins=[-6, -5, -4])[0] / len(draws)  # 1e-6..1e-4 of 1e-6..5e-4
    assert abs(decades[0] - decades[1]) < 0.05 and 0.3 < decades[0] < 0.4


def test_calibration_applies_offset_scale_and_direction(tmp_path):
    encoders = load_calibration("furuta").for_sensors(["arm_encoder", "pendulum_encoder"])
    # Power-on zero hangs the pendulum; the task puts upright at 0, so hanging reads as pi.
    np.testing.assert_allclose(encoders.angles([0, 0]), [0.0, -math.pi])
    np.testing.assert_allclose(encoders.angles([512, 1024]), [math.pi / 2, 0.0])
    flipped = tmp_path / "c.yaml"
    flipped.write_text(yaml.safe_dump({"robot": "x", "encoders": {"e": {"offset_counts": 10, "scale": 0.5,
                                                                         "direction": -1}}}))
    calibrated = load_calibration(flipped).for_sensors(["e"])
    assert calibrated.angles([14])[0] == -2.0 and calibrated.counts([-2.0])[0] == 14
    with pytest.raises(ValueError, match="no entry for encoders"):
        load_calibration("furuta").for_sensors(["wrist_encoder"])


def test_velocity_is_a_filtered_derivative_that_converges_on_a_ramp():
    encoders = load_calibration("furuta").for_sensors(["arm_encoder", "pendulum_encoder"])
    pipeline = SensorPipeline(encoders, cutoff_rad_s=50.0)
    speed = 2.0  # rad/s on the arm
    estimates = []
    for k in range(400):
        t = k * 0.002
        state = pipeline.update(encoders.counts([speed * t, 0.0]), t)
        estimates.append(state.velocity)
    settled = np.array(estimates[200:])  # quantisation (0.003 rad/count) makes each estimate noisy; the mean is not
    assert settled[:, 0].mean() == pytest.approx(speed, abs=0.02) and np.all(settled[:, 1] == 0)
    assert pipeline.update(encoders.counts([speed * t, 0.0]), t) is state  # a repeated frame changes nothing


def test_task_observation_reward_and_termination(spec):
    task = make_task(spec)
    hanging = JointState(np.array([0.0, -math.pi]), np.zeros(2), 0.0)
    upright = JointState(np.array([0.0, 0.0]), np.zeros(2), 0.0)
    np.testing.assert_allclose(task.observe(hanging), [1, 0, -1, 0, 0, 0], atol=1e-6)
    assert task.reward(upright) == 1.0 and task.reward(hanging) == pytest.approx(0.2)
    assert not task.terminated(upright)
    assert task.terminated(JointState(np.array([1.8, 0.0]), np.zeros(2), 0.0))
    pendulum_limit = spec.joint("pendulum").velocity_limit  # a spinning pendulum ends the episode inside its limit
    assert not task.terminated(JointState(np.zeros(2), np.array([0.0, 0.75 * pendulum_limit]), 0.0))
    assert task.terminated(JointState(np.zeros(2), np.array([0.0, -0.85 * pendulum_limit]), 0.0))
    assert task.terminated(JointState(np.zeros(2), np.array([0.85 * spec.joint("arm").velocity_limit, 0.0]), 0.0))
    assert task.ready(hanging) and not task.ready(upright)
    assert wrap_angle(3 * math.pi) == pytest.approx(-math.pi)


def test_the_sim_environment_uses_the_same_task_and_calibration():
    from sim.envs import make_env

    env = make_env("furuta:swingup", seed=0)
    obs = env.reset()
    assert env.spec.obs_layout == make_task(load_robot_spec("furuta")).obs_layout
    assert obs[2] < -0.99  # hanging, as calibrated
    result = env.step(np.array([1.0]))
    assert result.obs.shape == (6,) and result.obs[4] > 0  # +5 V turns the arm positive
