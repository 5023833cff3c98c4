"""Runs an exported ONNX policy with onnxruntime, checking its metadata against what it is asked to drive."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from policies.artifact import INPUT_NAME, OUTPUT_NAME, ArtifactError, PolicyMetadata


class OnnxPolicy:
    """One policy artifact, loaded for single-threaded low-latency inference."""

    def __init__(self, path: str | os.PathLike):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"no policy file at {self.path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise ArtifactError(f"{self.path}: not a loadable ONNX model: {error}") from None
        props = self._session.get_modelmeta().custom_metadata_map
        self.metadata = PolicyMetadata.from_props(props, str(self.path))
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if INPUT_NAME not in inputs or inputs[INPUT_NAME][-1] != self.metadata.obs_dim:
            raise ArtifactError(
                f"{self.path}: graph input {inputs} does not match metadata obs_dim {self.metadata.obs_dim}"
            )

    def check_compatible(self, obs_dim: int, action_dim: int) -> None:
        """Refuse to drive something of another shape, naming both sides."""
        if (self.metadata.obs_dim, self.metadata.action_dim) != (obs_dim, action_dim):
            raise ArtifactError(
                f"{self.path}: policy has obs_dim={self.metadata.obs_dim}, action_dim={self.metadata.action_dim}; "
                f"the target has obs_dim={obs_dim}, action_dim={action_dim}"
            )

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Native-unit action for one observation [obs_dim] or a batch [B, obs_dim]."""
        obs = np.asarray(obs, dtype=np.float32)
        batch = obs[None] if obs.ndim == 1 else obs
        action = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return action[0] if obs.ndim == 1 else action
