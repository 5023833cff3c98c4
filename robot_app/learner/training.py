"""A SAC-SVG(H) training run on a simulated task: acting, replay, updates, evaluation, metrics and resumable checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from policies.export import DeployedPolicy, export_onnx
from policies.learning import default_device, non_finite, sample_and_update
from policies.planner import Planner, PlannerConfig
from policies.replay import ReplayBuffer
from policies.sac_svg import SACSVG, SACSVGConfig
from robot_app.common.files import load_json_model, write_atomic
from robot_app.common.progress import Progress
from robot_app.learner.scalars import ScalarLog
from sim.env import Env, EnvSpec
from sim.envs import evaluate_returns, make_env

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "robot_app.checkpoint/1"
EVAL_SEED_OFFSET = 1_000_003


class RunError(RuntimeError):
    """A run folder cannot be used as asked."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainConfig(BaseModel):
    """Everything that defines a run. Saved as config.json in the run folder; steps count simulator env steps."""

    model_config = ConfigDict(extra="forbid")

    env: str
    horizon: int = Field(3, ge=0)
    steps: int = Field(50_000, ge=1)
    seed: int = 0
    action_repeat: int | None = Field(None, ge=1)
    random_steps: int | None = Field(None, ge=0)  # env steps of random actions first; default min(4000, steps / 4)
    eval_every: int = Field(5_000, ge=1)
    eval_episodes: int = Field(10, ge=1)
    log_every: int = Field(500, ge=1)  # updates between metric rows
    checkpoint_every: int = Field(10_000, ge=1)  # env steps; taken at the next episode boundary
    replay_capacity: int = Field(1_000_000, ge=1)
    agent: dict = Field(default_factory=dict)  # overrides of SACSVGConfig fields
    plan_eval: bool = False  # evaluate with the CEM-MPC planner too, beside the policy, at every evaluation
    planner: dict = Field(default_factory=dict)  # overrides of PlannerConfig fields

    @model_validator(mode="after")
    def _learns(self) -> "TrainConfig":
        if self.random_steps is None:
            self.random_steps = min(4_000, self.steps // 4)
        if self.plan_eval and self.horizon == 0 and not self.planner.get("horizon"):
            raise ValueError("plan_eval needs a model to plan with: SAC (horizon 0) trains none (give --horizon 1 or "
                             "more)")
        try:
            PlannerConfig(**self.planner)  # a bad planner setting fails before the run starts
        except TypeError as error:
            raise ValueError(f"planner: {error}") from None
        if self.random_steps >= self.steps:
            raise ValueError(f"random_steps {self.random_steps} is not below steps {self.steps}: the run would end "
                             "before its first update (give --random-steps below --steps)")
        return self

    def agent_config(self) -> SACSVGConfig:
        return SACSVGConfig(**{"horizon": self.horizon, **self.agent})


def build_agent(env: Env, config: TrainConfig, device: torch.device) -> SACSVG:
    return SACSVG(env.spec.obs_dim, env.spec.action_dim, config.agent_config(), device)


def resolve_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (give a run folder or a .pt file)")
    return path


class LoadedRun(NamedTuple):
    agent: SACSVG
    config: TrainConfig
    payload: dict
    spec: EnvSpec


def load_agent(run_or_checkpoint: str | os.PathLike, device: torch.device | None = None) -> LoadedRun:
    """The agent of a run folder or checkpoint file, ready to act or export, with its config and env spec."""
    path = resolve_checkpoint(run_or_checkpoint)
    payload = load_checkpoint(path, required=("format", "config", "agent", "counters"))
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is format {payload['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    config = TrainConfig.model_validate(payload["config"])
    env = make_env(config.env, config.seed, config.action_repeat)
    agent = build_agent(env, config, device or default_device())
    try:
        agent.load_training_state(payload["agent"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: weights do not fit the saved config: {error}") from None
    return LoadedRun(agent, config, payload, env.spec)


def export_run(run_or_checkpoint: str | os.PathLike, out: str | os.PathLike, planning: PlannerConfig | None = None):
    """The run's deterministic actor, or with `planning` its planning artifact (policies.world_model)."""
    agent, config, payload, spec = load_agent(run_or_checkpoint, torch.device("cpu"))
    if planning is not None:
        from policies.world_model import export_world_model

        return export_world_model(agent, out, env=config.env, obs_layout=spec.obs_layout,
                                  action_layout=spec.action_layout, action_low=spec.action_low,
                                  action_high=spec.action_high, action_repeat=spec.action_repeat,
                                  training_step=payload["counters"]["env_steps"], source_run=payload["run"],
                                  planner=planning)
    policy = DeployedPolicy(agent.normalizer, agent.actor, spec.action_low, spec.action_high)
    return export_onnx(
        policy,
        out,
        env=config.env,
        obs_layout=spec.obs_layout,
        action_layout=spec.action_layout,
        action_repeat=spec.action_repeat,
        training_step=payload["counters"]["env_steps"],
        source_run=payload["run"],
        horizon=config.horizon,
    )


class Trainer:
    """Owns one run folder: config.json, metrics.jsonl, eval.jsonl and checkpoints/{last.pt, replay.npz}."""

    def __init__(self, config: TrainConfig, out: str | os.PathLike, restore: bool = False):
        self.config, self.out = config, Path(out)
        self.checkpoint_path = self.out / "checkpoints" / "last.pt"
        self.replay_path = self.out / "checkpoints" / "replay.npz"
        self.device = default_device()
        self.env = make_env(config.env, config.seed, config.action_repeat)
        self.eval_env = make_env(config.env, config.seed + EVAL_SEED_OFFSET, config.action_repeat)
        self.spec = self.env.spec
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.agent = build_agent(self.env, config, self.device)
        self.replay = ReplayBuffer(self.spec.obs_dim, self.spec.action_dim, config.replay_capacity, self.device)
        self.env_steps = self.updates = self.episodes = 0
        self.last_checkpoint_step = 0
        self.last_eval: float | None = None
        self.metrics: dict[str, torch.Tensor] = {}  # of the latest update, still on the device
        self._obs: np.ndarray | None = None  # the open episode's latest observation; None between episodes
        self._step_in_episode = 0
        if restore:
            self._restore()
            if self.env_steps >= config.steps:
                raise RunError(f"run {self.out} is at env step {self.env_steps} already, so --steps {config.steps} "
                               f"would train nothing: give more than {self.env_steps}")
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / "config.json", config.model_dump_json(indent=2).encode())  # written once it holds
        self.scalars = ScalarLog(self.out / "tensorboard", self.env_steps if restore else None)

    @classmethod
    def open(cls, out: str | os.PathLike, settings: dict, resume: bool = False, overwrite: bool = False) -> "Trainer":
        """A new run from `settings`, or (resume) the run in `out`, where only `steps` may differ from what it saved."""
        out = Path(out)
        if resume:
            saved_path = out / "config.json"
            if not saved_path.is_file():
                raise RunError(f"cannot resume: {saved_path} does not exist")
            saved = load_json_model(TrainConfig, saved_path, "run config").model_dump()
            differing = [f"{k} ({saved[k]!r} saved, {v!r} given)" for k, v in settings.items()
                         if k != "steps" and saved.get(k) != v]
            if differing:
                raise RunError(f"cannot resume {out} with different settings: {'; '.join(differing)}")
            return cls(TrainConfig.model_validate({**saved, **settings}), out, restore=True)
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise RunError(f"run folder {out} already holds a run; use --resume or --overwrite")
            shutil.rmtree(out)
        return cls(TrainConfig.model_validate(settings), out)

    # ----- the loop -----
    @property
    def total_updates(self) -> int:
        return math.ceil(self.config.steps / self.spec.action_repeat)

    def run(self) -> dict:
        c = self.config
        started, updates_at_start = time.perf_counter(), self.updates
        with (Progress(c.steps, "training", "env step", initial=self.env_steps, log=log) as bar,
              contextlib.closing(self.scalars)):
            while self.env_steps < c.steps:
                previous, updates_before = self.env_steps, self.updates
                episode_ended = self.decide_and_learn()
                bar.update(self.env_steps - previous)
                logged_update = self.updates > updates_before and self.updates % c.log_every == 0
                if logged_update or (self.env_steps >= c.steps and self.metrics):
                    self._log_metrics(self.metrics, (self.updates - updates_at_start) / (time.perf_counter() - started))
                if self.env_steps // c.eval_every > previous // c.eval_every or self.env_steps >= c.steps:
                    self._evaluate(bar)
                if self.env_steps >= c.steps and not episode_ended:
                    self._end_episode()  # the budget cuts this episode short; a resume starts a fresh one
                    episode_ended = True
                if episode_ended and (self.env_steps - self.last_checkpoint_step >= c.checkpoint_every
                                      or self.env_steps >= c.steps):
                    self._check_finite(self.metrics)
                    self._save()
        return {"env_steps": self.env_steps, "updates": self.updates, "eval_return": self.last_eval}

    def decide_and_learn(self) -> bool:
        """One agent decision: act (uniformly at random until random_steps), step, store, and, once learning, update.

        Opens an episode when none is open; returns True when this decision ended it.
        """
        if self._obs is None:
            self._obs, self._step_in_episode = self.env.reset(), 0
            self.agent.normalizer.update(torch.as_tensor(self._obs, device=self.device))
        obs = self._obs
        if self.env_steps < self.config.random_steps:
            action = self.rng.uniform(-1.0, 1.0, self.spec.action_dim).astype(np.float32)
        else:
            action = self.agent.act(obs, deterministic=False)
            if not np.isfinite(action).all():  # already on the host: checking costs no sync
                self._check_finite({**self.metrics, "action": torch.as_tensor(action)})
        result = self.env.step(action)
        self.replay.add(obs, action, result.reward, result.obs, result.terminated, self.episodes, self._step_in_episode)
        self.agent.normalizer.update(torch.as_tensor(result.obs, device=self.device))
        self.env_steps += self.spec.action_repeat
        if self.env_steps >= self.config.random_steps:
            self.metrics = self._update()
        self._obs, self._step_in_episode = result.obs, self._step_in_episode + 1
        if result.terminated or result.truncated:
            self._end_episode()
            return True
        return False

    def _end_episode(self) -> None:
        self.episodes += 1
        self._obs = None

    def _update(self) -> dict[str, torch.Tensor]:
        metrics = sample_and_update(self.agent, self.replay, self.rng, self.updates, self.total_updates)
        self.updates += 1
        return metrics

    def _check_finite(self, metrics: dict[str, torch.Tensor]) -> None:
        if not metrics:
            return
        bad = non_finite(metrics)
        if bad:
            raise TrainingDiverged(
                f"non-finite {', '.join(bad)} at env step {self.env_steps} (update {self.updates}); "
                f"stopped, last good checkpoint kept at {self.checkpoint_path}"
            )

    def _log_metrics(self, metrics: dict[str, torch.Tensor], rate: float) -> None:
        self._check_finite(metrics)  # one host-device sync per log row, none per update
        row = {"env_step": self.env_steps, "update": self.updates, "updates_per_s": round(rate, 2)}
        row.update({k: float(v) for k, v in zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist())})
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self.scalars.add(self.env_steps, {f"train/{k}": v for k, v in row.items() if k not in ("env_step", "update")})

    def _evaluate(self, bar: Progress) -> None:
        returns = evaluate_returns(
            self.eval_env, lambda o: self.agent.act(o, deterministic=True), self.config.eval_episodes
        )
        self.last_eval = float(np.mean(returns))
        row = {"env_step": self.env_steps, "return_mean": self.last_eval, "return_std": float(np.std(returns)),
               "return_min": float(np.min(returns)), "return_max": float(np.max(returns)), "returns": returns}
        if self.config.plan_eval:  # the same checkpoint, planned: episodes of their own, after the policy's
            planner = Planner(self.agent, PlannerConfig(**self.config.planner), seed=self.config.seed + self.env_steps)
            planned = evaluate_returns(self.eval_env, planner.plan, self.config.eval_episodes, reset=planner.reset)
            row |= {"plan_return_mean": float(np.mean(planned)), "plan_return_std": float(np.std(planned)),
                    "plan_returns": planned}
            self.scalars.add(self.env_steps, {"eval/plan_return_mean": row["plan_return_mean"]})
            log.info("env step %d: planned eval return %.1f ± %.1f", self.env_steps, row["plan_return_mean"],
                     row["plan_return_std"])
        with open(self.out / "eval.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self.scalars.add(self.env_steps, {"eval/return_mean": self.last_eval, "eval/return_min": row["return_min"]})
        bar.set_postfix(eval_return=f"{self.last_eval:.1f}")
        log.info("env step %d: eval return %.1f ± %.1f", self.env_steps, self.last_eval, row["return_std"])

    # ----- checkpoints -----
    def _save(self) -> None:
        """Taken at an episode boundary, so the environments' RNGs are all the state a resume needs."""
        self.replay.save(self.replay_path)
        save_checkpoint(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.model_dump(mode="json"),
            "run": str(self.out),
            "agent": self.agent.training_state(),
            "counters": {"env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes,
                         "replay_size": self.replay.size, "replay_cursor": self.replay.cursor},
            "last_eval": self.last_eval,
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "env": self.env.get_rng_state(), "eval_env": self.eval_env.get_rng_state()},
        })
        self.last_checkpoint_step = self.env_steps

    def _restore(self) -> None:
        payload = load_checkpoint(self.checkpoint_path, required=("format", "agent", "counters", "rng"))
        counters = payload["counters"]
        self.replay.load(self.replay_path)
        if (self.replay.size, self.replay.cursor) != (counters["replay_size"], counters["replay_cursor"]):
            raise CheckpointError(f"{self.replay_path} does not match {self.checkpoint_path}; the pair is inconsistent")
        self.agent.load_training_state(payload["agent"])
        self.env_steps, self.updates, self.episodes = counters["env_steps"], counters["updates"], counters["episodes"]
        self.last_checkpoint_step, self.last_eval = self.env_steps, payload["last_eval"]
        rng = payload["rng"]
        self.rng.bit_generator.state = rng["numpy"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.env.set_rng_state(rng["env"])
        self.eval_env.set_rng_state(rng["eval_env"])
        log.info("resumed %s at env step %d", self.out, self.env_steps)
