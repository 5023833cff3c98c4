"""The robot's planner: the exported planning graph on onnxruntime, with numpy for its noise and warm start; no torch.

One ORT call per decision: the graph holds every iteration and every model step, each over all N sequences at once,
so the call overhead is paid once rather than I * (H + 1) times.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np

from robot_app.agent.policy_runner import OnnxPolicy, PolicyKind, open_session
from robot_app.common.artifact import PLAN_INPUTS, PLAN_OUTPUTS, ArtifactError, WorldModelMetadata, embedded_policy
from robot_app.common.planning import noise_shapes, warm_start


def read_planning_artifact(model, source: str | None = None):
    """(a one-threaded onnxruntime session, its WorldModelMetadata) of a file, its bytes or a session already open
    (open_session); ArtifactError for anything but a planning artifact."""
    source = source or str(model)
    session = model if hasattr(model, "get_modelmeta") else open_session(model, source)
    metadata = WorldModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source)
    if tuple(i.name for i in session.get_inputs()) != PLAN_INPUTS:
        raise ArtifactError(f"{source}: inputs {[i.name for i in session.get_inputs()]}, a planning graph takes "
                            f"{list(PLAN_INPUTS)}")
    return session, metadata


class WorldModelPlanner:
    """plan(obs) -> the first planned action in [-1, 1]. The noise comes from a numpy generator (or `noise`, a
    function of a shape, asked in `noise_shapes` order, as the learner's Planner asks it), so the same inputs and
    noise give the learner's action."""

    def __init__(self, model, seed: int = 0, noise=None, source: str | None = None):
        """model: what read_planning_artifact reads."""
        self.session, self.metadata = read_planning_artifact(model, source)
        p = self.metadata.planner
        self.horizon = p["horizon"]
        self.shapes = noise_shapes(p["samples"], p["policy_samples"], p["iterations"], self.horizon,
                                   self.metadata.action_dim)
        rng = np.random.default_rng(seed)
        self.noise = noise or (lambda shape: rng.standard_normal(shape, dtype=np.float32))
        self.previous_mean: np.ndarray | None = None

    def reset(self) -> None:
        self.previous_mean = None

    def skip(self) -> None:
        """A decision not planned (its time ran out): the warm start moves on one step all the same."""
        if self.previous_mean is not None:
            self.previous_mean = warm_start(self.previous_mean, self.horizon, self.metadata.action_dim)

    def plan(self, obs: np.ndarray, run_options=None) -> np.ndarray:
        feeds = {"obs": np.asarray(obs, np.float32).reshape(-1),
                 "warm_mean": warm_start(self.previous_mean, self.horizon, self.metadata.action_dim)}
        feeds |= {name: np.asarray(self.noise(shape), np.float32) for name, shape in self.shapes.items()}
        action, self.previous_mean = self.session.run(list(PLAN_OUTPUTS), feeds, run_options)
        return action


class PlanningPolicy:
    """CEM-MPC on the robot, inside the control period. Each call takes pi's deterministic action first, from the
    policy artifact the planning artifact carries, then plans until `deadline_s` after the call began. A plan not done
    by then is stopped (onnxruntime's terminate flag, which it checks between nodes) and pi's action goes instead:
    `fell_back` says so for the transition, and `fallbacks` counts them. Either action then meets the supervisor."""

    kind, sample_seed = PolicyKind.PLANNING, -1

    def __init__(self, path: str | Path, model, deadline_s: float, seed: int = 0, noise=None):
        """model: what read_planning_artifact reads."""
        import onnxruntime

        if not deadline_s > 0:
            raise ValueError(f"a planning deadline must be positive, got {deadline_s}")
        self.path = Path(path)
        self.planner = WorldModelPlanner(model, seed, noise, source=str(path))
        self.metadata = self.planner.metadata
        self.fallback = OnnxPolicy(f"{path} (its fallback policy)",
                                   embedded_policy(self.planner.session.get_modelmeta().custom_metadata_map, str(path)))
        fallback = self.fallback.metadata
        if (fallback.obs_layout, fallback.action_layout, fallback.action_low, fallback.action_high) != (
                self.metadata.obs_layout, self.metadata.action_layout, self.metadata.action_low,
                self.metadata.action_high):
            raise ArtifactError(f"{path}: its fallback policy's layouts or action bounds differ from the planner's")
        self.deadline_ns = round(deadline_s * 1e9)
        self._run_options = onnxruntime.RunOptions()
        self.fell_back = False
        self.decisions = self.fallbacks = 0

    @property
    def version(self) -> str:
        return self.metadata.weights_sha256[:16]

    def reset(self) -> None:
        self.planner.reset()

    def check_robot(self, obs_layout, action_layout, command_low, command_high) -> None:
        self.fallback.check_robot(obs_layout, action_layout, command_low, command_high)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        deadline = time.monotonic_ns() + self.deadline_ns
        pi = self.fallback(obs)
        warm = self.planner.previous_mean
        self._run_options.terminate = False
        watchdog = _watchdog()
        watchdog.arm(self._run_options, deadline)
        try:
            unit = self.planner.plan(obs, self._run_options)
        except Exception:
            if not self._run_options.terminate:
                raise  # not the deadline: the agent treats a policy that raises as a fault
            unit = None
        finally:
            watchdog.disarm()
        self.decisions += 1
        self.fell_back = unit is None or time.monotonic_ns() > deadline
        if self.fell_back:  # as if this decision had not been planned, though a late plan may have finished
            self.fallbacks += 1
            self.planner.previous_mean = warm
            self.planner.skip()
            return pi
        return self.fallback.scaler.to_native(unit)  # the same bounds as the planner's, checked above


class _Watchdog:
    """One thread that sets a run's terminate flag when its deadline passes, unless disarmed first."""

    def __init__(self):
        self._lock = threading.Condition()
        self._armed: tuple[object, int] | None = None
        threading.Thread(target=self._watch, name="plan-deadline", daemon=True).start()

    def arm(self, run_options, deadline_ns: int) -> None:
        with self._lock:
            self._armed = (run_options, deadline_ns)
            self._lock.notify()

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def _watch(self) -> None:
        with self._lock:
            while True:
                if self._armed is None:
                    self._lock.wait()
                    continue
                run_options, deadline = self._armed
                remaining = deadline - time.monotonic_ns()
                if remaining <= 0:
                    run_options.terminate = True
                    self._armed = None
                else:
                    self._lock.wait(remaining / 1e9)


@functools.cache
def _watchdog() -> _Watchdog:
    return _Watchdog()
