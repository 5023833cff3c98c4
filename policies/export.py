"""Export the actor (deterministic action and stochastic head), normalisation baked in, to ONNX; check parity."""

from __future__ import annotations

import copy
import datetime
import hashlib
import logging
import os
import warnings

import numpy as np
import torch
from torch import nn

from policies.networks import SquashedGaussianActor
from policies.normalizer import RunningNormalizer
from robot_app.common.actions import ActionScaler
from robot_app.common.artifact import (
    INPUT_NAME, MEAN_NAME, METADATA_KEY, OUTPUT_NAME, STD_NAME, ArtifactError, PolicyMetadata,
)
from robot_app.common.files import write_atomic

log = logging.getLogger(__name__)
OUTPUT_NAMES = (OUTPUT_NAME, MEAN_NAME, STD_NAME)
PARITY_TOLERANCE = 1e-5  # in units of the action's half-range (float32 round-off scales with the bounds)


class DeployedPolicy(nn.Module):
    """obs (native) -> normalise -> tanh(mean) -> native action units; and the stochastic actor beside it.

    `forward` is the deterministic action, what evaluation and the gate run. `distribution` gives the pre-tanh mean
    and std of pi(a|s) = tanh(N(mean, std)), from which a robot learning on-line samples its own actions. The rescale
    to native units is one multiply-add.
    """

    def __init__(self, normalizer: RunningNormalizer, actor: SquashedGaussianActor, low, high):
        super().__init__()
        self.normalizer = copy.deepcopy(normalizer).cpu().eval()
        self.actor = copy.deepcopy(actor).cpu().eval()
        scaler = ActionScaler(low, high, as_array=lambda array: torch.as_tensor(array, dtype=torch.float32))
        # Buffers, so the weights digest (and with it the policy's version) covers the action bounds.
        self.register_buffer("low", torch.as_tensor(scaler.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(scaler.high, dtype=torch.float32))
        self.register_buffer("half_range", scaler.half_range)
        self.register_buffer("centre", scaler.centre)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor.distribution_params(self.normalizer(obs))
        return mean, log_std.exp()

    def to_native(self, unit_action: torch.Tensor) -> torch.Tensor:
        return ActionScaler.to_native(self, unit_action)  # the scaler's map, over this module's buffers

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.to_native(torch.tanh(self.distribution(obs)[0]))


class _Outputs(nn.Module):
    """The exported graph: the deterministic action and the stochastic actor's pre-tanh mean and std."""

    def __init__(self, policy: DeployedPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, std = self.policy.distribution(obs)
        return self.policy.to_native(torch.tanh(mean)), mean, std


def weights_sha256(module: nn.Module) -> str:
    """A digest of every tensor in the state dict, by name, dtype and shape, in sorted order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export_onnx(policy: DeployedPolicy, path: str | os.PathLike, **provenance) -> PolicyMetadata:
    """Write `path` atomically, with metadata; raise ArtifactError if torch and onnxruntime disagree by >= 1e-5."""
    data, metadata = actor_artifact(policy, **provenance)
    write_atomic(path, data)  # only an artifact that passed parity is ever written
    log.info("exported %s (sha256 %s)", path, metadata.weights_sha256[:12])
    return metadata


def actor_artifact(
    policy: DeployedPolicy,
    *,
    env: str,
    obs_layout,
    action_layout,
    action_repeat: int,
    training_step: int,
    source_run: str,
    horizon: int,
    parity_samples: int = 1024,
    seed: int = 0,
) -> tuple[bytes, PolicyMetadata]:
    """The policy artifact's bytes and metadata; ArtifactError if torch and onnxruntime disagree by >= 1e-5."""
    import onnxruntime

    metadata = PolicyMetadata(
        env=env,
        obs_layout=[(name, int(width)) for name, width in obs_layout],
        action_layout=list(action_layout),
        action_low=policy.low.tolist(),
        action_high=policy.high.tolist(),
        action_repeat=action_repeat,
        training_step=training_step,
        source_run=source_run,
        horizon=horizon,
        weights_sha256=weights_sha256(policy),
        exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    example = torch.zeros(2, metadata.obs_dim)
    log.info("exporting the actor to ONNX (torch.export, a few seconds) ...")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Outputs(policy),
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"obs": {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())
    data = proto.SerializeToString()

    # Parity on inputs spread like real observations: the normaliser's statistics, widened.
    log.info("checking parity of torch and onnxruntime on %d observations ...", parity_samples)
    generator = torch.Generator().manual_seed(seed)
    std = torch.sqrt(policy.normalizer.var + policy.normalizer.eps)
    obs = policy.normalizer.mean + 3.0 * std * torch.randn(parity_samples, metadata.obs_dim, generator=generator)
    with torch.no_grad():
        expected = [out.numpy() for out in _Outputs(policy)(obs)]
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: obs.numpy()})
    # The action in units of its half-range; the pre-tanh mean and std relative to their size (at least 1).
    scales = [policy.half_range.numpy(), np.maximum(np.abs(expected[1]), 1.0), np.maximum(expected[2], 1.0)]
    error = max(float(np.max(np.abs(g - e) / scale)) for g, e, scale in zip(got, expected, scales))
    if not error < PARITY_TOLERANCE:
        raise ArtifactError(f"ONNX parity check failed: max |torch - onnxruntime| (of the half-range, or relative) = "
                            f"{error:.3g} >= {PARITY_TOLERANCE}")
    log.info("parity max error %.3g of the half-range", error)
    return data, metadata
