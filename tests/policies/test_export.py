"""ONNX export: parity, dynamic batch, metadata, and the agent-side runner's checks."""

import json

import numpy as np
import onnx
import pytest
import torch

from policies.export import DeployedPolicy, export_onnx, weights_sha256
from policies.networks import SquashedGaussianActor
from policies.normalizer import RunningNormalizer
from robot_app.agent.policy_runner import OnnxPolicy
from robot_app.common.artifact import METADATA_KEY, ArtifactError, PolicyMetadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    normalizer = RunningNormalizer(5)
    normalizer.update(torch.randn(100, 5) * 3 + 1)
    actor = SquashedGaussianActor(5, 2, (64, 64))
    policy = DeployedPolicy(normalizer, actor, low=[-2.0, 0.0], high=[2.0, 10.0])
    path = tmp_path_factory.mktemp("export") / "policy.onnx"
    meta = export_onnx(
        policy, path, env="dmc:test-task", obs_layout=[("position", 3), ("velocity", 2)],
        action_layout=["a0", "a1"], action_repeat=4, training_step=1234, source_run="runs/x", horizon=3,
    )
    return policy, path, meta


def test_onnx_matches_torch_with_a_dynamic_batch(exported):
    policy, path, _ = exported
    runner = OnnxPolicy(path)
    for batch in (1, 7, 300):
        obs = torch.randn(batch, 5) * 4
        with torch.no_grad():
            expected = policy(obs).numpy()
        np.testing.assert_allclose(runner(obs.numpy()), expected, atol=1e-5, rtol=0)
    single = runner(np.zeros(5, np.float32))
    assert single.shape == (2,)
    np.testing.assert_array_equal(runner(obs[0].numpy()), runner(obs[:1].numpy())[0])  # the bound fast path
    assert np.all(single >= [-2.0, 0.0]) and np.all(single <= [2.0, 10.0])


def test_the_deployed_policy_is_the_actors_deterministic_action_in_native_units(exported):
    policy, _, _ = exported
    torch.manual_seed(1)
    actor = SquashedGaussianActor(5, 2, (64, 64))
    normalizer = RunningNormalizer(5)
    normalizer.update(torch.randn(50, 5))
    deployed = DeployedPolicy(normalizer, actor, low=[-2.0, 0.0], high=[2.0, 10.0])
    obs = torch.randn(64, 5) * 2
    with torch.no_grad():
        unit = actor.act_deterministic(normalizer(obs))
        expected = torch.tensor([-2.0, 0.0]) + (unit + 1) * 0.5 * torch.tensor([4.0, 10.0])
        torch.testing.assert_close(deployed(obs), expected, atol=1e-6, rtol=0)


def test_metadata_carries_layout_bounds_provenance_and_weights_hash(exported):
    policy, path, meta = exported
    runner_meta = OnnxPolicy(path).metadata
    assert runner_meta == meta
    assert meta.obs_layout == [("position", 3), ("velocity", 2)] and meta.obs_dim == 5
    assert meta.action_low == [-2.0, 0.0] and meta.action_high == [2.0, 10.0]
    assert (meta.training_step, meta.source_run, meta.horizon, meta.action_repeat) == (1234, "runs/x", 3, 4)
    assert meta.weights_sha256 == weights_sha256(policy)


def test_the_weights_digest_and_so_the_version_covers_the_action_bounds(exported):
    policy, _, _ = exported
    wider = DeployedPolicy(policy.normalizer, policy.actor, low=[-2.0, 0.0], high=[2.0, 20.0])
    assert weights_sha256(wider) != weights_sha256(policy)


@pytest.mark.parametrize("bounds", [([float("nan"), 0.0], [2.0, 10.0]), ([-2.0, 0.0], [2.0, float("inf")]),
                                    ([-2.0, 10.0], [2.0, 0.0])])
def test_metadata_with_bounds_that_are_not_finite_and_ordered_is_refused(exported, bounds):
    _, _, meta = exported
    low, high = bounds
    with pytest.raises(ArtifactError, match="must lie below action_high .* both finite"):
        PolicyMetadata.from_json(json.dumps(meta.model_dump() | {"action_low": low, "action_high": high}))  # NaN too


def test_runner_refuses_a_mismatched_target_and_bad_files(exported, tmp_path):
    _, path, _ = exported
    with pytest.raises(ArtifactError, match="obs_dim=5, action_dim=2; the target has obs_dim=6"):
        OnnxPolicy(path).check_compatible(obs_dim=6, action_dim=2)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        OnnxPolicy(bad)
    stripped = onnx.load(str(path))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "stripped.onnx"))
    with pytest.raises(ArtifactError, match=f"no '{METADATA_KEY}' metadata"):
        OnnxPolicy(tmp_path / "stripped.onnx")


def test_parity_failure_is_refused_and_writes_nothing(exported, tmp_path, monkeypatch):
    policy, _, _ = exported
    import onnxruntime

    class SkewedSession(onnxruntime.InferenceSession):
        def run(self, names, feeds):
            return [out + 1e-3 for out in super().run(names, feeds)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", SkewedSession)
    target = tmp_path / "skewed.onnx"
    with pytest.raises(ArtifactError, match="parity check failed"):
        export_onnx(policy, target, env="e", obs_layout=[("x", 5)], action_layout=["a0", "a1"], action_repeat=1,
                    training_step=0, source_run="r", horizon=0)
    assert not target.exists() and not list(tmp_path.glob("*.tmp"))


def test_the_exported_stochastic_actor_samples_as_torch_does(exported):
    """Mean and std over many draws match torch's sampler, through the same tanh squashing and native rescale."""
    from robot_app.agent.policy_runner import SampledPolicy

    policy, path, _ = exported
    runner = OnnxPolicy(path)
    assert runner.stochastic
    obs = np.array([0.5, -1.0, 2.0, 0.3, 1.0], np.float32)
    sampler = SampledPolicy(runner, seed=3)
    onnx_draws = np.array([sampler(obs) for _ in range(20_000)])
    torch.manual_seed(0)
    with torch.no_grad():
        unit, _ = policy.actor.sample(policy.normalizer(torch.from_numpy(obs)).expand(20_000, -1))
        torch_draws = policy.to_native(unit).numpy()
    half_range = policy.half_range.numpy()
    assert onnx_draws.std(axis=0).min() > 0.05 * half_range.min()  # a real spread, not the deterministic action
    np.testing.assert_allclose(onnx_draws.mean(axis=0) / half_range, torch_draws.mean(axis=0) / half_range, atol=0.02)
    np.testing.assert_allclose(onnx_draws.std(axis=0) / half_range, torch_draws.std(axis=0) / half_range, atol=0.02)
    assert np.all(onnx_draws >= [-2.0, 0.0]) and np.all(onnx_draws <= [2.0, 10.0])
    noise = np.array([0.7, -1.3], np.float32)  # one draw, exactly: tanh(mean + std * noise), in native units
    with torch.no_grad():
        mean, std = policy.distribution(torch.from_numpy(obs)[None])
        expected = policy.to_native(torch.tanh(mean + std * torch.from_numpy(noise)))[0].numpy()
    np.testing.assert_allclose(runner.sample(obs, noise), expected, atol=1e-5)
