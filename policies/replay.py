"""Replay of transitions, sampled as single steps or as sequences that never cross an episode boundary; saves and loads."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from policies.checkpoint import CheckpointError
from robot_app.common.files import write_atomic

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "episode", "step")


@dataclasses.dataclass
class Batch:
    """Tensors on the learner device. Single steps are [B, ...]; sequences are [T, B, ...]."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """A ring buffer in numpy. `episode` and `step` identify each transition, so sequences can be checked for continuity."""

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity, self.device = capacity, torch.device(device)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, action_dim), np.float32)
        self.reward = np.zeros((capacity, 1), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminated = np.zeros((capacity, 1), np.float32)
        self.episode = np.full(capacity, -1, np.int64)
        self.step = np.full(capacity, -1, np.int64)
        self.size = 0
        self.cursor = 0  # next write position
        self.terminal_count = 0  # true terminations held, for the termination model's class weight

    def add(self, obs, action, reward: float, next_obs, terminated: bool, episode: int, step: int) -> None:
        self.add_many(np.asarray(obs)[None], np.asarray(action)[None], np.asarray([reward]), np.asarray(next_obs)[None],
                      np.asarray([terminated]), np.asarray([episode]), np.asarray([step]))

    def add_many(self, obs, action, reward, next_obs, terminated, episode, step) -> None:
        """Rows in order: arrays of N rows each (the oldest rows make way once the buffer is full)."""
        n = len(obs)
        if n > self.capacity:  # only the newest capacity rows would survive
            return self.add_many(*(a[n - self.capacity:] for a in (obs, action, reward, next_obs, terminated,
                                                                   episode, step)))
        idx = (self.cursor + np.arange(n)) % self.capacity
        overwritten = int(np.count_nonzero(self.terminated[idx[idx < self.size], 0]))
        self.terminal_count += int(np.count_nonzero(terminated)) - overwritten
        self.obs[idx], self.action[idx], self.reward[idx, 0] = obs, action, reward
        self.next_obs[idx], self.terminated[idx, 0] = next_obs, np.asarray(terminated, np.float32)
        self.episode[idx], self.step[idx] = episode, step
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        return None

    def __len__(self) -> int:
        return self.size

    def termination_class_weight(self) -> float:
        """negatives / positives, for BCE's pos_weight; 1 while no termination has been seen."""
        return (self.size - self.terminal_count) / self.terminal_count if self.terminal_count else 1.0

    def _to_batch(self, idx: np.ndarray) -> Batch:
        def take(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array[idx]).to(self.device, non_blocking=True)

        return Batch(take(self.obs), take(self.action), take(self.reward), take(self.next_obs), take(self.terminated))

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self._to_batch(rng.integers(0, self.size, size=batch_size))

    def sample_sequences(self, batch_size: int, length: int, rng: np.random.Generator, max_tries: int = 100) -> Batch:
        """[length, B] windows of consecutive steps of one episode each: (obs_t, action_t, reward_t, next_obs_t, done_t)."""
        chosen = np.empty(0, np.int64)
        for _ in range(max_tries):
            starts = rng.integers(0, self.size, size=2 * batch_size)
            chosen = np.concatenate([chosen, starts[self._continuous(starts, length)]])
            if chosen.size >= batch_size:
                idx = (chosen[:batch_size][None, :] + np.arange(length)[:, None]) % self.capacity
                return self._to_batch(idx)
        raise ValueError(f"replay holds too few windows of {length} steps inside one episode")

    def _continuous(self, starts: np.ndarray, length: int) -> np.ndarray:
        idx = (starts[:, None] + np.arange(length)[None, :]) % self.capacity
        same_episode = (self.episode[idx] == self.episode[starts][:, None]).all(1)
        consecutive = (self.step[idx] == self.step[starts][:, None] + np.arange(length)[None, :]).all(1)
        return same_episode & consecutive & (self.episode[starts] >= 0)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: getattr(self, name)[: self.size] for name in FIELDS}
        state["meta"] = np.array([self.capacity, self.size, self.cursor], np.int64)
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write the filled part as .npz (no pickle)."""
        write_atomic(path, lambda f: np.savez(f, **self.state_dict()))

    def load(self, path: str | os.PathLike) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in ("meta", *FIELDS)}
        except FileNotFoundError:
            raise CheckpointError(f"no replay file at {path}") from None
        except Exception as error:  # numpy raises many types, some with a pickle hint, for a corrupt or foreign file
            raise CheckpointError(f"replay file {path} is unreadable ({type(error).__name__}): not the .npz a "
                                  "checkpoint writes") from None
        capacity, size, cursor = (int(v) for v in arrays["meta"])
        if any(len(arrays[name]) != size for name in FIELDS):
            raise CheckpointError(f"replay file {path} says it holds {size} rows, but its arrays disagree")
        if capacity != self.capacity or arrays["obs"].shape[1:] != self.obs.shape[1:]:
            raise CheckpointError(f"replay file {path} has capacity {capacity} and obs shape "
                                  f"{arrays['obs'].shape[1:]}, expected {self.capacity} and {self.obs.shape[1:]}")
        for name in FIELDS:
            getattr(self, name)[:size] = arrays[name]
        self.size, self.cursor = size, cursor
        self.terminal_count = int(self.terminated[:size].sum())
