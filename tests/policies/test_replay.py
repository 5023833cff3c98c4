"""Replay: sequences stay inside one episode, wrap-around, save/load, termination class weight."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.checkpoint import CheckpointError
from policies.replay import ReplayBuffer


def fill(buffer: ReplayBuffer, episode_lengths, terminate_last=True):
    for episode, length in enumerate(episode_lengths):
        for step in range(length):
            obs = np.full(2, episode * 1000 + step, np.float32)
            buffer.add(obs, [0.0], 1.0, obs + 1, terminate_last and step == length - 1, episode, step)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=20),
    capacity=st.integers(8, 64),
    length=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_sequences_never_cross_an_episode_end(lengths, capacity, length, seed):
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=capacity)
    fill(buffer, lengths)
    rng = np.random.default_rng(seed)
    try:
        seq = buffer.sample_sequences(16, length, rng, max_tries=20)
    except ValueError:
        return  # too few windows held: refused, never a crossing window
    obs = seq.obs.numpy()[..., 0]  # [T, B] = episode * 1000 + step
    episode, step = obs // 1000, obs % 1000
    assert (episode == episode[0]).all()
    assert (np.diff(step, axis=0) == 1).all()
    assert (seq.terminated.numpy()[:-1] == 0).all()  # a termination can only close a window
    np.testing.assert_array_equal(seq.next_obs.numpy()[:-1], seq.obs.numpy()[1:])


def test_sample_sequences_refuses_when_no_window_fits():
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=100)
    fill(buffer, [2, 2, 2])
    with pytest.raises(ValueError, match="too few windows of 3 steps"):
        buffer.sample_sequences(4, 3, np.random.default_rng(0), max_tries=5)


def test_save_and_load_round_trip_after_wrapping(tmp_path):
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=10)
    fill(buffer, [7, 6])
    buffer.save(tmp_path / "replay.npz")
    loaded = ReplayBuffer(obs_dim=2, action_dim=1, capacity=10)
    loaded.load(tmp_path / "replay.npz")
    assert (loaded.size, loaded.cursor, loaded.terminal_count) == (buffer.size, buffer.cursor, buffer.terminal_count)
    for name in ("obs", "action", "reward", "next_obs", "terminated", "episode", "step"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(buffer, name))
    with pytest.raises(CheckpointError, match="capacity"):
        ReplayBuffer(obs_dim=2, action_dim=1, capacity=11).load(tmp_path / "replay.npz")


def test_termination_class_weight_tracks_overwrites():
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=8)
    assert buffer.termination_class_weight() == 1.0
    fill(buffer, [4, 4])  # 2 terminations in 8
    assert buffer.termination_class_weight() == pytest.approx(6 / 2)
    fill(buffer, [4])  # overwrites the first episode: still 2 terminations
    assert buffer.terminal_count == 2
