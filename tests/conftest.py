"""Shared test fixtures: headless MuJoCo and tiny network sizes so the suite stays fast on 2 cores."""

import os
import socket
import sqlite3
import time

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


def wait_until(condition, timeout_s: float = 60.0) -> None:
    """Poll `condition` until it holds; fail the test if it does not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when asked)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keys(chunks) -> list[tuple[int, int]]:
    return [(e, s) for c in chunks for e, s in zip(c.columns["episode"].tolist(), c.columns["step"].tolist())]


def outbox_state(path) -> tuple[int, set]:
    """How many transitions an agent's outbox ever logged, and the (episode, step) of those it still holds."""
    from robot_app.transport.messages import TransitionChunk

    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        held = [TransitionChunk.unpack(blob) for (blob,) in db.execute("SELECT chunk FROM chunks")]
    finally:
        db.close()
    return (int(row[0]) if row else 0), set(_keys(held))


def stored_keys(store, robot_id: str | None = None) -> list[tuple[int, int]]:
    """The (episode, step) of every transition in a learner's ingest store, as stored (duplicates would repeat)."""
    return _keys(chunk for _, rid, chunk in store.read(limit_rows=1 << 40) if robot_id in (None, rid))


def reply(socket):
    """The learner's next message on a raw robot socket, past the credit it grants after each ack and heartbeat."""
    from robot_app.transport.messages import Credit, decode

    while isinstance(message := decode(socket.recv()), Credit):
        pass
    return message


@pytest.fixture(scope="session")
def furuta_planning_artifact(tmp_path_factory):
    """A planning artifact for the Furuta (untrained tiny nets, a small planner): the robot-side tests' world model."""
    import torch

    from policies.planner import PlannerConfig
    from policies.sac_svg import SACSVG, SACSVGConfig
    from policies.world_model import export_world_model
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    spec = load_robot_spec("furuta")
    task = make_task(spec)
    torch.manual_seed(0)
    agent = SACSVG(task.obs_dim, len(task.action_layout), SACSVGConfig(horizon=2, **TINY_AGENT))
    path = tmp_path_factory.mktemp("planning") / "furuta-planner.onnx"
    low, high = spec.command_limits
    export_world_model(agent, path, env=f"furuta:{spec.task}", obs_layout=task.obs_layout,
                       action_layout=task.action_layout, action_low=low, action_high=high, action_repeat=1,
                       training_step=0, source_run="tests", parity_decisions=2,
                       planner=PlannerConfig(samples=32, elites=8, iterations=2, policy_samples=4))
    return path
