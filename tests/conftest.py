"""Shared test fixtures: headless MuJoCo and tiny network sizes so the suite stays fast on 2 cores."""

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "disable")

TINY_AGENT = {"hidden": [32, 32], "model_hidden": 16, "step_model_hidden": [16], "batch_size": 32}


@pytest.fixture
def tiny_run_settings():
    """A cartpole run of 2 episodes (AR 8: 125 decisions each) with small nets."""
    return {
        "env": "dmc:cartpole-swingup", "horizon": 2, "steps": 2000, "seed": 3, "random_steps": 500,
        "eval_every": 1000, "eval_episodes": 1, "checkpoint_every": 1000, "log_every": 50, "agent": dict(TINY_AGENT),
    }
