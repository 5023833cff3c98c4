"""The environment interface over dm_control: naming, flattening, action scaling, repeat, seeding, episode ends; and
the robot's randomisation table as it maps onto the MuJoCo model."""

import numpy as np
import pytest

from sim.env import UnknownEnvironmentError
from sim.envs import DMControlEnv, make_env


def test_cartpole_layout_and_episode_length_with_action_repeat():
    env = make_env("dmc:cartpole-swingup", seed=0, action_repeat=8)
    assert env.spec.obs_layout == (("position", 3), ("velocity", 2))
    assert (env.spec.obs_dim, env.spec.action_dim, env.spec.max_episode_steps) == (5, 1, 125)
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (5,)
    steps, result = 0, None
    while True:
        result = env.step(np.array([0.3]))
        steps += 1
        if result.terminated or result.truncated:
            break
    assert steps == 125 and result.truncated and not result.terminated  # a time limit, not a true end


def test_same_seed_same_episode_different_seed_different():
    a, b, c = (make_env("dmc:pendulum-swingup", seed=s, action_repeat=2) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.reset(), b.reset())
    assert not np.array_equal(a.reset(), c.reset())
    state = a.get_rng_state()
    first = a.reset()
    a.set_rng_state(state)
    np.testing.assert_array_equal(a.reset(), first)


def test_actions_are_rescaled_from_unit_range_to_native_bounds(monkeypatch):
    env = make_env("dmc:reacher-easy", seed=0, action_repeat=1)
    env.reset()
    seen = []
    original = env._env.step
    monkeypatch.setattr(env._env, "step", lambda a: seen.append(np.array(a)) or original(a))
    env.step(np.array([1.0, -1.0]))
    env.step(np.array([5.0, -5.0]))  # clipped to the bounds
    np.testing.assert_allclose(seen[0], [env.spec.action_high[0], env.spec.action_low[1]])
    np.testing.assert_allclose(seen[1], seen[0])
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan, 0.0]))


def test_discount_zero_is_a_termination(monkeypatch):
    env = make_env("dmc:cartpole-balance", seed=0, action_repeat=4)
    env.reset()
    original = env._env.step

    def ends_with_zero_discount(action):
        return original(action)._replace(step_type=2, discount=0.0)

    monkeypatch.setattr(env._env, "step", ends_with_zero_discount)
    result = env.step(np.zeros(1))
    assert result.terminated and not result.truncated


@pytest.mark.parametrize("name", ["cartpole-swingup", "dmc:nope-swingup", "dmc:cartpole", "gym:CartPole-v1"])
def test_unknown_environments_get_a_clear_error(name):
    with pytest.raises(UnknownEnvironmentError, match="unknown environment|unknown dm_control task|look like"):
        make_env(name, seed=0)


def test_bad_action_repeat_is_refused():
    with pytest.raises(ValueError, match="action_repeat"):
        DMControlEnv("cartpole", "swingup", seed=0, action_repeat=0)


def test_each_physical_range_sets_the_mjcf_element_the_spec_names():
    from robot_app.robot.spec import load_robot_spec
    from sim.furuta import FurutaPhysics

    spec = load_robot_spec("furuta")
    physics = FurutaPhysics(spec)
    model, nominal = physics.model, FurutaPhysics(spec).model
    arm, pendulum = (model.joint(name) for name in ("arm", "pendulum"))
    physics.randomise({"arm_damping": 1e-4, "pendulum_friction": 5e-6, "cable_stiffness": 1e-3, "pendulum_mass": 0.0264,
                       "motor_gain": 0.0055})
    assert model.dof_damping[arm.dofadr[0]] == 1e-4 and model.dof_frictionloss[pendulum.dofadr[0]] == 5e-6
    assert model.jnt_stiffness[arm.id] == 1e-3 and model.body("pendulum").mass[0] == 0.0264
    np.testing.assert_allclose(model.body("pendulum").inertia, nominal.body("pendulum").inertia * 1.1)  # its shape kept
    assert model.actuator("motor").gainprm[0] == 0.0055  # and the back-EMF term scales with the gain
    np.testing.assert_allclose(model.actuator("motor").biasprm[2], nominal.actuator("motor").biasprm[2] * 1.1)
    def changed(field):
        return np.flatnonzero(getattr(model, field) != getattr(nominal, field)).tolist()

    assert changed("dof_damping") == [arm.dofadr[0]] and changed("dof_frictionloss") == [pendulum.dofadr[0]]
    assert changed("body_mass") == [model.body("pendulum").id]  # each range set its own element, nothing else
    with pytest.raises(ValueError, match="'sensor_noise_counts' is not a physical parameter"):
        physics.randomise({"sensor_noise_counts": 0.5})


def test_a_range_whose_element_the_mjcf_lacks_is_refused_naming_it():
    from robot_app.robot.spec import RobotSpec, load_robot_spec
    from sim.furuta import FurutaPhysics

    spec = load_robot_spec("furuta")
    elbow = {"parameter": "body_mass", "element": "elbow", "low": 0.01, "high": 0.02}  # bodies are the MJCF's to name
    spec = RobotSpec.model_validate(spec.model_dump() | {"randomisation": {"elbow_mass": elbow}})
    with pytest.raises(ValueError, match="furuta.xml has no body_mass element 'elbow'"):
        FurutaPhysics(spec).randomise({"elbow_mass": 0.015})
