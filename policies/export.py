"""Export the deterministic actor, with observation normalisation baked in, to ONNX; check parity with onnxruntime."""

from __future__ import annotations

import copy
import datetime
import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from policies.artifact import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ArtifactError, PolicyMetadata
from policies.files import write_atomic
from policies.networks import SquashedGaussianActor
from policies.normalizer import RunningNormalizer

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-5  # in units of the action's half-range (float32 round-off scales with the bounds)


class DeployedPolicy(nn.Module):
    """obs (native) -> normalise -> tanh(mean) -> native action units.

    Only the actor's mean head is kept (its last layer's log-std rows are dropped), and the rescale to native units is
    one multiply-add, so the ONNX graph is as short as the computation: 11 nodes for a 2-layer actor.
    """

    def __init__(self, normalizer: RunningNormalizer, actor: SquashedGaussianActor, low, high):
        super().__init__()
        self.normalizer = copy.deepcopy(normalizer).cpu().eval()
        *hidden, last = copy.deepcopy(actor.trunk).cpu()
        action_dim = last.out_features // 2
        mean_layer = nn.Linear(last.in_features, action_dim)
        with torch.no_grad():
            mean_layer.weight.copy_(last.weight[:action_dim])
            mean_layer.bias.copy_(last.bias[:action_dim])
        self.mean = nn.Sequential(*hidden, mean_layer).eval()
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.register_buffer("half_range", (self.high - self.low) / 2)
        self.register_buffer("centre", (self.high + self.low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mean(self.normalizer(obs))) * self.half_range + self.centre


def weights_sha256(module: nn.Module) -> str:
    """A digest of every tensor in the state dict, by name, dtype and shape, in sorted order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export_onnx(
    policy: DeployedPolicy,
    path: str | os.PathLike,
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
) -> PolicyMetadata:
    """Write `path` atomically, with metadata; raise ArtifactError if torch and onnxruntime disagree by >= 1e-5."""
    import onnxruntime

    path = Path(path)
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            policy,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"obs": {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())
    data = proto.SerializeToString()

    # Parity on inputs spread like real observations: the normaliser's statistics, widened.
    generator = torch.Generator().manual_seed(seed)
    std = torch.sqrt(policy.normalizer.var + policy.normalizer.eps)
    obs = policy.normalizer.mean + 3.0 * std * torch.randn(parity_samples, metadata.obs_dim, generator=generator)
    with torch.no_grad():
        expected = policy(obs).numpy()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: obs.numpy()})[0]
    error = float(np.max(np.abs(got - expected) / policy.half_range.numpy()))
    if not error < PARITY_TOLERANCE:
        raise ArtifactError(f"ONNX parity check failed: max |torch - onnxruntime| / half-range = {error:.3g} >= "
                            f"{PARITY_TOLERANCE}")
    write_atomic(path, data)  # only an artifact that passed parity is ever written
    log.info("exported %s (parity max error %.3g of the half-range, sha256 %s)", path, error, metadata.weights_sha256[:12])
    return metadata
