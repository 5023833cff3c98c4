"""The online learner: trains from the ingest store, exports candidates the agent accepts, and resumes after a restart."""

import dataclasses

import numpy as np

from robot_app.agent.loading import load_policy
from robot_app.agent.policy_runner import OnnxPolicy
from robot_app.agent.transition_log import Transition
from robot_app.learner.ingest import IngestStore
from robot_app.learner.online import OnlineLearner
from robot_app.robot.spec import load_robot_spec
from robot_app.robot.task import make_task
from robot_app.transport.messages import TransitionBatch, TransitionChunk
from sim.envs import make_env
from tests.conftest import TINY_AGENT

SPEC = load_robot_spec("furuta")


def fill_store(store, robot_id, episodes, seed):
    """Random-policy episodes of the Furuta task in sim, as a robot would ship them (actions in volts)."""
    env, rng, seq = make_env("furuta:swingup", seed), np.random.default_rng(seed), 0
    for episode in range(episodes):
        obs, rows = env.reset(), []
        for step in range(100):
            unit = rng.uniform(-1, 1, 1).astype(np.float32)
            result = env.step(unit)
            rows.append(Transition(robot_id, episode, step, obs, unit * 5.0, result.reward, result.obs,
                                   result.terminated, step == 99, unit * 5.0, "random", (), 0, 0, 0, 0))
            obs = result.obs
            if result.terminated:
                break
        batch = TransitionBatch(robot_id, "outbox-1", seq, TransitionChunk.from_transitions(seq + 1, rows).pack())
        assert store.store_batches([batch], 0)[0].stored == len(rows)
        seq += len(rows)


def make_learner(store, out):
    return OnlineLearner(store, out, SPEC, horizon=2, agent_overrides=dict(TINY_AGENT), warmup=200,
                         candidate_every=50, total_updates=1000)


def test_online_learning_exports_candidates_and_resumes(tmp_path):
    store = IngestStore(tmp_path / "ingest.sqlite")
    fill_store(store, "robot-1", 3, seed=0)
    fill_store(store, "robot-2", 2, seed=1)
    learner = make_learner(store, tmp_path / "learner")
    received = store.count()  # episodes that hit the arm's limit end early, so this is under 500
    assert learner.ingest() == received > 300
    assert learner.train(max_updates=10_000) == received - 200  # one update per transition past the warm-up
    assert len(learner.candidates) == (received - 200) // 50 and learner.robots == {"robot-1": 0, "robot-2": 1}
    policy = load_policy(str(learner.candidates[-1]), SPEC, make_task(SPEC).obs_layout)  # fits the robot
    action = policy(np.zeros(6, np.float32))
    assert np.all(np.abs(action) <= 5.0)
    meta = OnnxPolicy(learner.candidates[-1]).metadata
    assert (meta.env, meta.horizon) == ("furuta:swingup", 2) and meta.training_step == received

    resumed = make_learner(store, tmp_path / "learner")  # a restart: same store, same folder
    checkpointed = learner.candidates[-1]  # the last checkpoint was taken with the last candidate
    updates_then = int(checkpointed.stem.split("-")[1])
    assert resumed.updates == updates_then and len(resumed.replay) == resumed.transitions
    resumed.ingest()
    assert resumed.transitions == received and len(resumed.replay) == received
    assert resumed.train(max_updates=10_000) == received - 200 - updates_then  # only what was owed
    fill_store(store, "robot-3", 1, seed=2)
    new = resumed.ingest()
    assert new > 0 and resumed.train(max_updates=10_000) == new
    for name, tensor in learner.agent.actor.state_dict().items():
        assert tensor.shape == resumed.agent.actor.state_dict()[name].shape


def test_a_candidate_that_fails_export_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    from robot_app.common.artifact import ArtifactError

    def broken_export(*args, **kwargs):
        raise ArtifactError("ONNX parity check failed (simulated)")

    monkeypatch.setattr("robot_app.learner.online.export_onnx", broken_export)
    store = IngestStore(tmp_path / "ingest.sqlite")
    fill_store(store, "robot-1", 3, seed=0)
    learner = make_learner(store, tmp_path / "learner")
    received = learner.ingest()
    done = learner.train(max_updates=10_000)
    assert done == received - 200 >= 50 and learner.export_failures == done // 50 and learner.candidates == []
    assert learner.checkpoint_path.is_file()  # the checkpoint is still taken


def test_bad_rows_already_in_the_store_are_quarantined_and_the_learner_trains_on(tmp_path):
    """Rows stored before the store checked them (a NaN observation, the wrong width) once crash-looped the learner."""
    store = IngestStore(tmp_path / "ingest.sqlite")
    fill_store(store, "robot-1", 3, seed=0)
    good = store.count()
    poison = [Transition("robot-1", 9, step, np.full(6, np.nan if step == 3 else 0.1, np.float32),
                         np.array([1.0], np.float32), 0.5, np.zeros(6, np.float32), False, False,
                         np.array([1.0], np.float32), "p", (), 0, 0, 0, 0) for step in range(10)]
    wide = [dataclasses.replace(t, obs=np.zeros(7, np.float32), next_obs=np.zeros(7, np.float32)) for t in poison]
    for rows, seq in ((poison, 1000), (wide, 1010)):
        batch = TransitionBatch("robot-1", "outbox-9", seq - 1, TransitionChunk.from_transitions(seq, rows).pack())
        store.store_batches([batch], 0)  # straight into the store, as an earlier release let them in
    learner = make_learner(store, tmp_path / "learner")
    assert learner.ingest(limit=1 << 20) == good  # the two bad chunks are set aside ...
    assert learner.quarantined == {"non_finite": 1, "width": 1}
    assert [(robot, reason) for _, robot, reason, _ in store.quarantined()] == [("robot-1", "non_finite"),
                                                                                ("robot-1", "width")]
    assert learner.train(max_updates=10_000) == good - 200  # ... and training runs, finite, to the end
    store.close()
    store = IngestStore(tmp_path / "ingest.sqlite")
    restarted = make_learner(store, tmp_path / "learner")  # and a restart reads past them
    assert restarted.ingest(limit=1 << 20) == 0 and len(restarted.replay) == good


def test_a_planning_learner_exports_planning_artifacts_the_registry_and_the_agent_take(tmp_path):
    from robot_app.agent.world_planner import PlanningPolicy
    from robot_app.learner.registry import PolicyRegistry

    store = IngestStore(tmp_path / "ingest.sqlite")
    fill_store(store, "robot-1", 3, seed=0)
    learner = OnlineLearner(store, tmp_path / "learner", SPEC, horizon=2, agent_overrides=dict(TINY_AGENT),
                            warmup=200, candidate_every=10_000,
                            planner={"samples": 16, "elites": 4, "iterations": 2, "policy_samples": 4})
    learner.ingest()
    learner.train(max_updates=20)
    candidate = learner.export_candidate()
    record = PolicyRegistry(tmp_path / "registry").add_candidate(candidate, "test")
    policy = load_policy(record.path, SPEC, make_task(SPEC).obs_layout)
    assert isinstance(policy, PlanningPolicy) and policy.version == record.version
    assert policy.metadata.planner["samples"] == 16 and policy.metadata.training_step == learner.transitions
    assert np.all(np.abs(policy(np.zeros(6, np.float32))) <= 5.0)
