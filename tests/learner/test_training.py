"""Training runs: resume is exact, a NaN stops training and keeps the last good checkpoint, run folders are guarded."""

import json

import pytest
import torch

from policies.checkpoint import CheckpointError, load_checkpoint
from robot_app.learner.training import RunError, Trainer, TrainingDiverged, load_agent


def final_state(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.agent.state_dict().items()}


def test_resumed_run_matches_an_uninterrupted_run(tmp_path, tiny_run_settings):
    straight = Trainer.open(tmp_path / "straight", tiny_run_settings)
    straight.run()

    first = Trainer.open(tmp_path / "split", {**tiny_run_settings, "steps": 1000})
    first.run()
    assert first.env_steps == 1000
    resumed = Trainer.open(tmp_path / "split", {"steps": 2000}, resume=True)
    resumed.run()

    assert resumed.updates == straight.updates > 0
    expected, got = final_state(straight), final_state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    for optimizer in ("actor_optimizer", "critic_optimizer", "model_optimizer"):
        a = getattr(straight.agent, optimizer).state_dict()["state"]
        b = getattr(resumed.agent, optimizer).state_dict()["state"]
        for key in a:
            torch.testing.assert_close(a[key]["exp_avg"], b[key]["exp_avg"], rtol=0, atol=0)
    evals = [json.loads(line) for line in (tmp_path / "split" / "eval.jsonl").read_text().splitlines()]
    straight_evals = [json.loads(line) for line in (tmp_path / "straight" / "eval.jsonl").read_text().splitlines()]
    assert [e["returns"] for e in evals] == [e["returns"] for e in straight_evals]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, tiny_run_settings):
    trainer = Trainer.open(tmp_path / "run", {**tiny_run_settings, "steps": 3000})
    original_update = trainer._update

    def poisoned_update():
        if trainer.env_steps > 1500:  # after the first checkpoint at 1000
            with torch.no_grad():
                trainer.agent.critic.layers[0].weight.fill_(float("nan"))
        return original_update()

    trainer._update = poisoned_update
    with pytest.raises(TrainingDiverged, match="non-finite critic_loss.*last good checkpoint kept"):
        trainer.run()
    payload = load_checkpoint(trainer.checkpoint_path)
    assert payload["counters"]["env_steps"] == 1000
    agent = load_agent(tmp_path / "run").agent
    assert all(torch.isfinite(p).all() for p in agent.parameters())


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path, tiny_run_settings):
    settings = {**tiny_run_settings, "steps": 1000}
    Trainer.open(tmp_path / "run", settings).run()
    with pytest.raises(RunError, match="already holds a run"):
        Trainer.open(tmp_path / "run", settings)
    with pytest.raises(RunError, match="different settings: horizon"):
        Trainer.open(tmp_path / "run", {"horizon": 0}, resume=True)
    with pytest.raises(RunError, match="cannot resume"):
        Trainer.open(tmp_path / "empty", {}, resume=True)


def test_unreadable_checkpoints_raise_a_clear_error(tmp_path):
    garbage = tmp_path / "last.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_agent(garbage)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_agent(tmp_path / "missing")


@pytest.mark.parametrize("settings, words", [
    ({"horizon": 0, "plan_eval": True}, "plan_eval needs a model"),
    ({"plan_eval": True, "planner": {"sample": 64}}, "planner: .*unexpected keyword argument 'sample'"),
    ({"plan_eval": True, "planner": {"elites": 0}}, "elites must be in 1..samples"),
])
def test_planned_evaluation_settings_are_checked_before_a_run_starts(settings, words):
    from robot_app.learner.training import TrainConfig

    with pytest.raises(ValueError, match=words):
        TrainConfig(env="dmc:cartpole-swingup", **settings)
