"""The policies the agent runs, behind one `Policy` seam: exported ONNX actors (onnxruntime, metadata checked against
the robot), planning artifacts (agent.world_planner), the samplers that explore with them, and bring-up policies."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from robot_app.common.actions import ActionScaler
from robot_app.common.artifact import INPUT_NAME, MEAN_NAME, OUTPUT_NAME, STD_NAME, ArtifactError, PolicyMetadata


class PolicyKind(str, enum.Enum):
    BRING_UP = "bring-up"  # zero or random commands, for a robot's first power-on
    ONNX_ACTOR = "onnx-actor"  # an exported actor network, run deterministically or sampled
    PLANNING = "planning"  # a planning artifact: CEM-MPC over the learned model, pi's action when out of time


class Policy(Protocol):
    """What the agent runs: an observation in, a native-unit action out, once per tick. A policy may keep state between
    calls; `reset()` comes at every episode start. `sample_seed` is the seed of the last action's random draw, -1 when
    the action drew none; `fell_back`, whether a planner ran out of time on it and pi's action went instead. Both are
    recorded with the transition."""

    version: str
    kind: PolicyKind
    sample_seed: int
    fell_back: bool

    def reset(self) -> None: ...

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


def open_session(model: str | os.PathLike | bytes, source: str):
    """An onnxruntime session of one thread, for low-latency inference; ArtifactError for what is not a model."""
    import onnxruntime

    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ArtifactError(f"no policy file at {model}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise ArtifactError(f"{source}: not a loadable ONNX model: {error}") from None


class OnnxPolicy:
    """One policy artifact, loaded for single-threaded low-latency inference: its deterministic action."""

    kind, sample_seed, fell_back = PolicyKind.ONNX_ACTOR, -1, False

    def __init__(self, path: str | os.PathLike, data: bytes | None = None, session=None):
        """data: the file's bytes, when the caller has already read (and verified) them: exactly those are run.
        session: theirs, already open (open_session)."""
        import onnxruntime

        self.path = Path(path)
        self._session = session or open_session(self.path if data is None else data, str(self.path))
        props = self._session.get_modelmeta().custom_metadata_map
        self.metadata = PolicyMetadata.from_props(props, str(self.path))
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if INPUT_NAME not in inputs or inputs[INPUT_NAME][-1] != self.metadata.obs_dim:
            raise ArtifactError(
                f"{self.path}: graph input {inputs} does not match metadata obs_dim {self.metadata.obs_dim}"
            )
        # The control loop's single observation runs through preallocated, bound buffers: no per-call allocation or
        # name lookup. docs/BENCHMARKS.md has what that saves.
        outputs = {o.name for o in self._session.get_outputs()}
        # Artifacts exported before 2026-12 carry the deterministic action only.
        self.stochastic = {MEAN_NAME, STD_NAME} <= outputs
        self._obs = np.zeros((1, self.metadata.obs_dim), dtype=np.float32)
        self._action, self._mean, self._std = (np.zeros((1, self.metadata.action_dim), dtype=np.float32)
                                               for _ in range(3))
        self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(INPUT_NAME, onnxruntime.OrtValue.ortvalue_from_numpy(self._obs))
        bound = ((OUTPUT_NAME, self._action), (MEAN_NAME, self._mean), (STD_NAME, self._std))
        for name, buffer in bound[:3 if self.stochastic else 1]:
            self._binding.bind_ortvalue_output(name, onnxruntime.OrtValue.ortvalue_from_numpy(buffer))
        self.scaler = ActionScaler(self.metadata.action_low, self.metadata.action_high,
                                   as_array=lambda array: array.astype(np.float32))

    def reset(self) -> None:
        pass

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
        if obs.ndim == 1:
            self._obs[0] = obs
            self._session.run_with_iobinding(self._binding)
            return self._action[0].copy()
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0]

    def check_stochastic(self) -> None:
        if not self.stochastic:
            raise ArtifactError(f"{self.path} holds the deterministic action only; export it again to sample from it")

    def sample(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Native-unit action tanh(mean + std * noise) of the stochastic actor, for one observation and a standard
        normal draw [action_dim]: SAC's own exploration, with the temperature the learner tuned."""
        self.check_stochastic()
        self._obs[0] = obs
        self._session.run_with_iobinding(self._binding)
        return self.scaler.to_native(np.tanh(self._mean[0] + self._std[0] * noise))

    @property
    def version(self) -> str:
        return self.metadata.weights_sha256[:16]

    def check_robot(self, obs_layout, action_layout, command_low, command_high) -> None:
        """Refuse a policy trained for another robot or task: layouts and native action bounds must match exactly."""
        meta, problems = self.metadata, []
        if [tuple(field) for field in meta.obs_layout] != [tuple(field) for field in obs_layout]:
            problems.append(f"observation layout {meta.obs_layout} != the task's {list(obs_layout)}")
        if list(meta.action_layout) != list(action_layout):
            problems.append(f"action layout {meta.action_layout} != the robot's actuators {list(action_layout)}")
        if not (np.allclose(meta.action_low, command_low) and np.allclose(meta.action_high, command_high)):
            problems.append(f"action bounds [{meta.action_low}, {meta.action_high}] != the robot's command limits "
                            f"[{list(command_low)}, {list(command_high)}]")
        if problems:
            raise ArtifactError(f"{self.path} (trained on {meta.env}) does not fit this robot: " + "; ".join(problems))


class ConstantPolicy:
    """Bring-up policy `zero`: the robot's safe command on every tick."""

    version, kind, sample_seed, fell_back = "zero", PolicyKind.BRING_UP, -1, False

    def __init__(self, command):
        self._command = np.asarray(command, dtype=np.float32)

    def reset(self) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self._command.copy()


class RandomPolicy:
    """Bring-up policy `random`: uniform over the command limits on every tick (a full-rate stress test)."""

    version, kind, sample_seed, fell_back = "random", PolicyKind.BRING_UP, -1, False

    def __init__(self, low, high, seed: int = 0):
        self._low, self._high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self._rng.uniform(self._low, self._high).astype(np.float32)


class SeededDraws:
    """Standard normal draws, each from a seed of its own, the seeds from one seeded stream: the seed recorded with a
    transition replays exactly the draw that chose its action (np.random.default_rng(seed).standard_normal(n))."""

    def __init__(self, seed):
        self._seeds = np.random.default_rng(seed)

    def normal(self, size: int) -> tuple[np.ndarray, int]:
        seed = int(self._seeds.integers(1 << 62))
        return np.random.default_rng(seed).standard_normal(size).astype(np.float32), seed


def _stream_seed(seed: int, policy) -> list[int]:
    """Each policy its own stream: a new version does not replay the draws of the last one."""
    return [seed] if policy.kind == PolicyKind.BRING_UP else [seed, int(policy.version, 16)]


class SampledPolicy:
    """The behaviour policy for learning on the robot: a ~ pi(a|s), sampled from the exported stochastic actor (SAC's
    own exploration). Evaluation and the gate run the deterministic action instead. `sample_seed` is the last draw's."""

    def __init__(self, policy: OnnxPolicy, seed: int = 0):
        if not isinstance(policy, OnnxPolicy):
            raise ArtifactError(f"{getattr(policy, 'path', policy)} is not an actor to sample from (a planning "
                                "artifact plans deterministically)")
        policy.check_stochastic()  # refused at load, not at the first tick
        self.policy, self.version, self.kind, self.sample_seed = policy, policy.version, policy.kind, -1
        self.fell_back = False
        self._draws = SeededDraws(_stream_seed(seed, policy))

    def reset(self) -> None:
        self.policy.reset()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        noise, self.sample_seed = self._draws.normal(self.policy.metadata.action_dim)
        return self.policy.sample(obs, noise)


class ExploringPolicy:
    """A behaviour policy for bring-up: the policy's action plus Gaussian noise of `sigma` half-ranges. The supervisor
    still clamps the result; transitions keep the noisy action as what was done, and the seed of its draw."""

    def __init__(self, policy: Policy, sigma: float, low, high, seed: int = 0):
        self.policy, self.version, self.kind, self.sample_seed = policy, policy.version, policy.kind, -1
        self._scale = sigma * ActionScaler(low, high, as_array=lambda array: array.astype(np.float32)).half_range
        self._draws = SeededDraws(_stream_seed(seed, policy))

    @property
    def fell_back(self) -> bool:
        return self.policy.fell_back

    def reset(self) -> None:
        self.policy.reset()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = self.policy(obs)
        noise, self.sample_seed = self._draws.normal(len(action))
        return action + noise * self._scale
