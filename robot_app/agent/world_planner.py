"""The robot's planner: the exported planning graph on onnxruntime, with numpy for its noise and warm start; no torch.

One ORT call per decision: the graph holds every iteration and every model step, each over all N sequences at once,
so the call overhead is paid once rather than I * (H + 1) times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_app.common.artifact import PLAN_INPUTS, PLAN_OUTPUTS, ArtifactError, WorldModelMetadata
from robot_app.common.planning import noise_shapes, warm_start


def read_planning_artifact(path: str | Path):
    """(an onnxruntime session of one thread, its WorldModelMetadata); ArtifactError for anything else."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own kinds for a file that is not a model
        raise ArtifactError(f"{path}: not an ONNX model: {error}") from None
    metadata = WorldModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    if tuple(i.name for i in session.get_inputs()) != PLAN_INPUTS:
        raise ArtifactError(f"{path}: inputs {[i.name for i in session.get_inputs()]}, a planning graph takes "
                            f"{list(PLAN_INPUTS)}")
    return session, metadata


class WorldModelPlanner:
    """plan(obs) -> the first planned action in [-1, 1]. The noise comes from a numpy generator (or `noise`, a
    function of a shape, asked in `noise_shapes` order, as the learner's Planner asks it), so the same inputs and
    noise give the learner's action."""

    def __init__(self, path: str | Path, seed: int = 0, noise=None):
        self.session, self.metadata = read_planning_artifact(path)
        p = self.metadata.planner
        self.horizon = p["horizon"]
        self.shapes = noise_shapes(p["samples"], p["policy_samples"], p["iterations"], self.horizon,
                                   self.metadata.action_dim)
        rng = np.random.default_rng(seed)
        self.noise = noise or (lambda shape: rng.standard_normal(shape, dtype=np.float32))
        self.previous_mean: np.ndarray | None = None

    def reset(self) -> None:
        self.previous_mean = None

    def plan(self, obs: np.ndarray) -> np.ndarray:
        feeds = {"obs": np.asarray(obs, np.float32).reshape(-1),
                 "warm_mean": warm_start(self.previous_mean, self.horizon, self.metadata.action_dim)}
        feeds |= {name: np.asarray(self.noise(shape), np.float32) for name, shape in self.shapes.items()}
        action, self.previous_mean = self.session.run(list(PLAN_OUTPUTS), feeds)
        return action
