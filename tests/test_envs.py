"""The environment interface over dm_control: naming, flattening, action scaling, repeat, seeding, episode ends."""

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
