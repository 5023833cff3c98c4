"""Bench only: our simulated envs as gymnasium envs, and SB3's SAC set up as ours (256x256, batch 256, 1 update/step)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from sim.envs import make_env


class GymEnv(gym.Env):
    def __init__(self, name: str, seed: int = 0, action_repeat: int | None = None):
        self.env = make_env(name, seed=seed, action_repeat=action_repeat)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.env.spec.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.env.spec.action_dim,), np.float32)

    def reset(self, *, seed=None, options=None):
        return self.env.reset(), {}

    def step(self, action):
        result = self.env.step(action)
        return result.obs, result.reward, result.terminated, result.truncated, {}


def sb3_sac(env: GymEnv, random_steps: int, seed: int):
    from stable_baselines3 import SAC

    return SAC("MlpPolicy", env, batch_size=256, learning_starts=random_steps, train_freq=1, gradient_steps=1,
               policy_kwargs={"net_arch": [256, 256]}, device="cpu", seed=seed)
