"""The online learner: trains SAC-SVG(H) from the ingest store as robots stream transitions in, and exports candidates.

The ingest store is the record of everything received; the replay buffer is rebuilt from it on a restart, and the
networks, optimisers, normaliser and counters come back from the learner's checkpoint. Actions arrive in the robot's
native units (volts) and are mapped to [-1, 1] for the agent; exported candidates map back.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from policies.checkpoint import load_checkpoint, save_checkpoint
from policies.export import DeployedPolicy, export_onnx
from policies.learning import default_device, non_finite, sample_and_update
from policies.planner import PlannerConfig
from policies.replay import ReplayBuffer
from policies.sac_svg import SACSVG, SACSVGConfig
from policies.world_model import export_world_model
from robot_app.common.artifact import ArtifactError
from robot_app.common.transition_chunk import MAX_EPISODE
from robot_app.learner.ingest import IngestStore, RowSchema
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import make_task

log = logging.getLogger(__name__)
EPISODES_PER_ROBOT = MAX_EPISODE  # replay episode id = robot index * this + the robot's own episode number


class OnlineLearner:
    def __init__(self, store: IngestStore, out: str | Path, spec: RobotSpec, horizon: int = 3,
                 agent_overrides: dict | None = None, seed: int = 0, warmup: int = 1000,
                 updates_per_transition: float = 1.0, candidate_every: int = 1000, total_updates: int = 100_000,
                 replay_capacity: int = 1_000_000, on_chunk=None, credit_rows: int | None = None,
                 planner: dict | None = None):
        """on_chunk(robot_id, chunk) sees every TransitionChunk as it enters replay (for episode returns).
        planner: PlannerConfig settings, to export planning artifacts as candidates instead of actors.
        credit_rows: how far each lockstep robot may run ahead of the updates, besides the episode it may finish past
        its credit (default one episode; see credit)."""
        if updates_per_transition <= 0:
            raise ValueError(f"updates_per_transition must be positive, got {updates_per_transition}")
        self.store, self.out, self.spec = store, Path(out), spec
        task = make_task(spec)
        self.credit_rows = task.max_episode_steps if credit_rows is None else credit_rows
        if self.credit_rows < 1:
            raise ValueError(f"credit_rows must be at least 1, got {self.credit_rows}")
        self.obs_layout, self.action_layout = task.obs_layout, task.action_layout
        self.env_name = f"{spec.name}:{spec.task}"
        self.scaler = spec.action_scaler
        obs_dim = task.obs_dim
        self.device = default_device()
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.agent = SACSVG(obs_dim, len(self.action_layout), SACSVGConfig(horizon=horizon, **(agent_overrides or {})),
                            self.device)
        self.replay = ReplayBuffer(obs_dim, len(self.action_layout), replay_capacity, self.device)
        self.warmup, self.ratio = warmup, updates_per_transition
        self.candidate_every, self.total_updates = candidate_every, total_updates
        self.planner = None if planner is None else PlannerConfig(**planner)
        if self.planner is not None and not (self.planner.horizon or horizon):
            raise ValueError("planning candidates need a model: give horizon >= 1, or the planner's own horizon")
        self.cursor = 0  # the last ingest-store seq added to replay
        self.transitions = self.updates = 0
        self.robots: dict[str, int] = {}
        self.candidates: list[Path] = []
        self.export_failures = 0
        self.metrics: dict[str, torch.Tensor] = {}  # of the latest update, still on the device
        self.on_chunk = on_chunk
        self.schema = RowSchema.of(spec)
        self.quarantined: dict[str, int] = {}  # chunks found bad in the store (stored before it checked), by reason
        self.checkpoint_path = self.out / "checkpoints" / "learner.pt"
        if self.checkpoint_path.is_file():
            self._restore()

    def ingest(self, limit: int = 5000, update_normalizer: bool = True, until_seq: int | None = None) -> int:
        """Move about `limit` new rows (whole chunks, up to store seq until_seq) into replay; return how many."""
        chunks = self.store.read(after_seq=self.cursor, limit_rows=limit, until_seq=until_seq)
        if chunks:
            self.cursor = chunks[-1][0]
        chunks = [(seq, robot_id, chunk) for seq, robot_id, chunk in chunks if self._fit_for_training(seq, chunk)]
        for _, robot_id, chunk in chunks:
            robot = self.robots.setdefault(robot_id, len(self.robots))
            c = chunk.columns
            unit_action = np.clip(self.scaler.to_unit(c["action"]), -1.0, 1.0)
            self.replay.add_many(c["obs"], unit_action, c["reward"], c["next_obs"], c["terminated"],
                                 robot * EPISODES_PER_ROBOT + c["episode"], c["step"])
            if update_normalizer:
                self.agent.normalizer.update(torch.tensor(c["obs"], device=self.device))
                if self.on_chunk is not None:
                    self.on_chunk(robot_id, chunk)
        rows = sum(len(chunk) for _, _, chunk in chunks)
        self.transitions += rows
        return rows

    def credit(self, robots: int, received: int) -> int:
        """Lockstep pacing: how many more transitions `robots` robots may send, all together, when `received` are
        stored. They are granted in proportion to the updates made, at updates_per_transition, plus credit_rows each
        to run ahead with; a slow or busy learner then slows the robots, and the curve per transition is the same on
        any machine."""
        granted = self.warmup + math.ceil(self.updates / self.ratio) + robots * self.credit_rows
        return granted - received

    @property
    def owed_updates(self) -> int:
        """Updates due at updates_per_transition and not yet made: a realtime robot's lead over the learner."""
        return max(0, int((self.transitions - self.warmup) * self.ratio) - self.updates)

    def _fit_for_training(self, seq: int, chunk) -> bool:
        """A bad chunk already in the store (stored before the store checked rows) is quarantined, not trained on."""
        problem = self.schema.problem(chunk)
        if problem is None:
            return True
        self.store.quarantine(seq, problem)
        self.quarantined[problem[0]] = self.quarantined.get(problem[0], 0) + 1
        log.error("stored chunk %d quarantined (%s): %s", seq, *problem)
        return False

    def train(self, max_updates: int) -> int:
        """Run the updates owed (updates_per_transition per transition received), at most max_updates."""
        if len(self.replay) < self.warmup:
            return 0
        done = 0
        for _ in range(min(self.owed_updates, max_updates)):
            metrics = self.metrics = sample_and_update(self.agent, self.replay, self.rng, self.updates,
                                                       self.total_updates)
            self.updates += 1
            done += 1
            if self.updates % self.candidate_every == 0:
                self._check_finite(metrics)
                try:
                    self.export_candidate()
                except ArtifactError as error:  # a bad artifact is not shipped; training goes on
                    self.export_failures += 1
                    log.error("candidate at update %d not exported: %s", self.updates, error)
                self.checkpoint()
        return done

    def losses(self) -> dict[str, float]:
        """The latest update's losses, alpha and entropy (one host-device sync)."""
        return {name: round(float(value.detach()), 6) for name, value in self.metrics.items()}

    def _check_finite(self, metrics: dict[str, torch.Tensor]) -> None:
        bad = non_finite(metrics)
        if bad:
            raise FloatingPointError(f"non-finite {', '.join(bad)} at update {self.updates}; last checkpoint kept")

    def export_candidate(self) -> Path:
        path = self.out / "candidates" / f"candidate-{self.updates:08d}.onnx"
        provenance = dict(env=self.env_name, obs_layout=self.obs_layout, action_layout=self.action_layout,
                          action_repeat=1, training_step=self.transitions, source_run=str(self.out))
        if self.planner is not None:
            export_world_model(self.agent, path, action_low=self.scaler.low, action_high=self.scaler.high,
                               planner=self.planner, parity_decisions=2, **provenance)
        else:
            policy = DeployedPolicy(self.agent.normalizer, self.agent.actor, self.scaler.low, self.scaler.high)
            export_onnx(policy, path, horizon=self.agent.config.horizon, **provenance)
        self.candidates.append(path)
        log.info("candidate %s after %d updates on %d transitions", path.name, self.updates, self.transitions)
        return path

    def checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, {
            "format": "robot_app.online_learner/1", "agent": self.agent.training_state(),
            "counters": {"cursor": self.cursor, "transitions": self.transitions, "updates": self.updates},
            "robots": dict(self.robots), "rng": self.rng.bit_generator.state,
        })

    def _restore(self) -> None:
        payload = load_checkpoint(self.checkpoint_path, required=("format", "agent", "counters", "robots", "rng"))
        self.agent.load_training_state(payload["agent"])
        self.robots = dict(payload["robots"])
        self.rng.bit_generator.state = payload["rng"]
        saved = payload["counters"]
        # Rebuild replay from the store: rows up to the checkpoint were already in the saved normaliser.
        while self.cursor < saved["cursor"]:
            before = self.cursor
            self.ingest(update_normalizer=False, until_seq=saved["cursor"])
            if self.cursor == before:
                break
        self.transitions, self.updates = saved["transitions"], saved["updates"]
        self.candidates = sorted((self.out / "candidates").glob("candidate-*.onnx"))
        log.info("resumed at update %d with %d transitions in replay", self.updates, len(self.replay))
