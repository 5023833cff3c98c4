"""One environment interface, named `<family>:<rest>`, over dm_control suite tasks and our own robots."""

from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

from robot_app.common.progress import Progress
from sim.env import Env, EnvSpec, StepResult, UnknownEnvironmentError

os.environ.setdefault("MUJOCO_GL", "disable")
log = logging.getLogger(__name__)

# Agent decisions are repeated this many simulator steps unless the caller says otherwise (PlaNet's choices).
DEFAULT_ACTION_REPEAT = {"cartpole": 8, "reacher": 4, "pendulum": 4, "cheetah": 4, "finger": 2, "walker": 2}


class DMControlEnv:
    """A dm_control suite task with flat float32 observations and actions in [-1, 1]."""

    def __init__(self, domain: str, task: str, seed: int, action_repeat: int | None = None):
        from dm_control import suite

        if (domain, task) not in suite.ALL_TASKS:
            known = ", ".join(f"dmc:{d}-{t}" for d, t in suite.ALL_TASKS)
            raise UnknownEnvironmentError(f"unknown dm_control task 'dmc:{domain}-{task}'; known: {known}")
        repeat = DEFAULT_ACTION_REPEAT.get(domain, 1) if action_repeat is None else action_repeat
        if repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        action_spec = self._env.action_spec()
        obs_layout = tuple((k, int(np.prod(v.shape))) for k, v in self._env.observation_spec().items())
        time_limit_steps = int(round(self._env._step_limit)) if np.isfinite(self._env._step_limit) else 1000
        self.spec = EnvSpec(
            name=f"dmc:{domain}-{task}",
            obs_layout=obs_layout,
            action_layout=tuple(f"action[{i}]" for i in range(action_spec.shape[0])),
            action_low=tuple(np.broadcast_to(action_spec.minimum, action_spec.shape).tolist()),
            action_high=tuple(np.broadcast_to(action_spec.maximum, action_spec.shape).tolist()),
            action_repeat=repeat,
            max_episode_steps=-(-time_limit_steps // repeat),
        )

    def _flatten(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])

    def reset(self) -> np.ndarray:
        return self._flatten(self._env.reset().observation)

    def step(self, action: np.ndarray) -> StepResult:
        native = self.spec.native_action(action)
        reward = 0.0
        for _ in range(self.spec.action_repeat):
            time_step = self._env.step(native)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        ended = time_step.last()
        terminated = ended and time_step.discount == 0.0
        return StepResult(self._flatten(time_step.observation), reward, terminated, ended and not terminated)

    def get_rng_state(self) -> dict:
        name, keys, pos, has_gauss, cached = self._env.task.random.get_state()
        return {"name": name, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached}

    def set_rng_state(self, state: dict) -> None:
        keys = np.asarray(state["keys"], dtype=np.uint32)
        self._env.task.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


def _make_dmc(rest: str, seed: int, action_repeat: int | None) -> Env:
    domain, sep, task = rest.partition("-")
    if not sep:
        raise UnknownEnvironmentError(f"dm_control names look like 'dmc:<domain>-<task>', got 'dmc:{rest}'")
    return DMControlEnv(domain, task, seed, action_repeat)


def _make_furuta(rest: str, seed: int, action_repeat: int | None) -> Env:
    from sim.furuta import FurutaEnv  # mujoco and the robot's model load only for this family

    return FurutaEnv(rest, seed, action_repeat)


# Environment families by prefix: dm_control suite tasks, and our own robots' tasks on their MuJoCo models.
ENV_FAMILIES: dict[str, Callable[[str, int, int | None], Env]] = {"dmc": _make_dmc, "furuta": _make_furuta}


def make_env(name: str, seed: int, action_repeat: int | None = None) -> Env:
    """Build an environment from its name, e.g. 'dmc:cartpole-swingup'."""
    family, sep, rest = name.partition(":")
    if not sep or family not in ENV_FAMILIES:
        raise UnknownEnvironmentError(
            f"unknown environment '{name}'; names look like '<family>:<task>' with family in {sorted(ENV_FAMILIES)}"
        )
    return ENV_FAMILIES[family](rest, seed, action_repeat)


def run_episode(env: Env, act: Callable[[np.ndarray], np.ndarray], reset: Callable[[], None] | None = None) -> float:
    """reset: called before the episode (a planner drops its warm start)."""
    if reset is not None:
        reset()
    obs, total, done = env.reset(), 0.0, False
    while not done:
        result = env.step(act(obs))
        obs, total, done = result.obs, total + result.reward, result.terminated or result.truncated
    return total


def evaluate_returns(env: Env, act: Callable[[np.ndarray], np.ndarray], episodes: int,
                     progress: str | None = None, reset: Callable[[], None] | None = None) -> list[float]:
    """Returns of `episodes` episodes, act(obs) giving actions in [-1, 1]. `progress` names the work for a bar on a
    terminal, or a log line per episode elsewhere. reset: called before each episode."""
    if progress is None:
        return [run_episode(env, act, reset) for _ in range(episodes)]
    returns: list[float] = []
    with Progress(episodes, progress, unit="episode", every_s=0, log=log) as bar:
        for _ in range(episodes):
            returns.append(run_episode(env, act, reset))
            bar.set_postfix(last_return=f"{returns[-1]:.1f}")
            bar.update()
    return returns


def evaluate_artifact(path, episodes: int, seed: int, progress: str | None = None) -> tuple[str, list[float]]:
    """The returns of an exported ONNX artifact on the nominal environment it was trained for: a policy's deterministic
    action, or a planning artifact's plan with no deadline. The name says which."""
    from robot_app.agent.policy_runner import OnnxPolicy, open_session
    from robot_app.agent.world_planner import WorldModelPlanner
    from robot_app.common.artifact import WORLD_METADATA_KEY, ArtifactError

    session = open_session(path, str(path))
    if WORLD_METADATA_KEY in session.get_modelmeta().custom_metadata_map:
        planner = WorldModelPlanner(session, seed, source=str(path))
        meta, act, reset, name = planner.metadata, planner.plan, planner.reset, f"{planner.metadata.env} (planned)"
    else:
        policy = OnnxPolicy(path, session=session)
        meta, reset, name = policy.metadata, None, policy.metadata.env
        act = lambda obs: policy.scaler.to_unit(policy(obs))  # noqa: E731
    env = make_env(meta.env, seed, meta.action_repeat)
    if (meta.obs_dim, meta.action_dim) != (env.spec.obs_dim, env.spec.action_dim):
        raise ArtifactError(f"{path}: obs_dim={meta.obs_dim}, action_dim={meta.action_dim}; {meta.env} has "
                            f"obs_dim={env.spec.obs_dim}, action_dim={env.spec.action_dim}")
    return name, evaluate_returns(env, act, episodes, progress, reset)
