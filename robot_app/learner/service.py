"""The learner service: ingest server, online SAC-SVG(H) training and candidate publishing, until stopped."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from robot_app.common.logs import shown
from robot_app.common.reports import DeploymentOptions, GateSummary, LearnerOptions, ProgressRow
from robot_app.learner.ingest import IngestServer, IngestStore, RowSchema
from robot_app.learner.online import OnlineLearner
from robot_app.learner.registry import RegistryError
from robot_app.learner.scalars import ScalarLog
from robot_app.robot.spec import RobotSpec
from robot_app.transport.messages import TransitionChunk

log = logging.getLogger(__name__)


class EpisodeReturns:
    """Episode returns per robot, summed from the transitions as they are ingested (the demo's learning curve)."""

    def __init__(self):
        self._open: dict[tuple[str, int], float] = {}
        self.finished: list[dict] = []

    def add(self, robot_id: str, chunk: TransitionChunk) -> None:
        c = chunk.columns
        for episode, reward, ended, version in zip(c["episode"].tolist(), c["reward"].tolist(),
                                                   (c["terminated"] | c["truncated"]).tolist(), chunk.row_policy_versions()):
            key = (robot_id, episode)
            self._open[key] = self._open.get(key, 0.0) + reward
            if ended:
                self.finished.append({"robot_id": robot_id, "episode": episode, "return": self._open.pop(key),
                                      "policy": version})


class GatedDeployment:
    """Between the learner's candidates and the robots: each candidate enters the registry; the sim-validation gate
    runs on the newest waiting one (one at a time, in a thread) when a signing key is given; a validated one is
    deployed only with auto_deploy; and whatever the registry says is deployed (by the gate or an operator's
    `robot-app policies deploy`/`rollback`) is what the robots are offered, with its signature."""

    def __init__(self, registry, server: IngestServer, robot: str, signing_key=None, gate_config=None,
                 auto_deploy: bool = False, check_every_s: float = 1.0):
        """check_every_s: how often the registry is asked what is deployed (an operator's deploy reaches the robots
        that soon)."""
        self.registry, self.server, self.robot = registry, server, robot
        self.signing_key, self.gate_config, self.auto_deploy = signing_key, gate_config, auto_deploy
        self.waiting: str | None = None  # the newest candidate not yet validated; older ones are skipped
        self.gate: threading.Thread | None = None
        self.published: str | None = None
        self.check_every_s, self._next_check = check_every_s, 0.0
        for version in registry.release_abandoned("learner"):
            log.warning("policy %s was left validating by a process that is gone: it is a candidate again", version)

    def offer(self, candidate: Path) -> None:
        record = self.registry.add_candidate(candidate, "learner")
        if record.state == "candidate":  # the same weights judged before (a restart) are not gated again
            self.waiting = record.version

    def poll(self) -> None:
        if self.signing_key is not None and self.waiting and not (self.gate and self.gate.is_alive()):
            version, self.waiting = self.waiting, None
            self.gate = threading.Thread(target=self._validate, args=(version,), name="gate", daemon=True)
            self.gate.start()
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.check_every_s
        deployed = self.registry.deployed()
        if deployed is not None and deployed.version != self.published:
            self.server.publish(deployed.path, deployed.signature)
            self.published = deployed.version

    def summary(self) -> GateSummary:
        """Policies by registry state, and the deployed version (for progress rows)."""
        states: dict[str, int] = {}
        for policy in self.registry.list():
            states[policy.state] = states.get(policy.state, 0) + 1
        return GateSummary(states=states, deployed=self.published)

    def _validate(self, version: str) -> None:
        from sim.gate import gate_candidate

        try:
            report = gate_candidate(self.registry, version, self.signing_key, self.gate_config, self.robot,
                                    "learner:gate")
            log.info("gate: %s %s %s", version, "passed" if report.passed else "rejected", report.reasons)
            if report.passed and self.auto_deploy:
                self.registry.deploy(version, "learner:auto-deploy")
        except RegistryError as error:  # another process moved it meanwhile (an operator's deploy, say)
            log.error("the gate or the deploy on %s was refused: %s", version, error)
        except Exception:  # the learner keeps training (a gate that did not finish put the candidate back)
            log.exception("the gate or the deploy failed on %s", version)


def load_deployment(options: DeploymentOptions, robot: str):
    """The registry, signing key and gate config the options name, loaded (so a bad one fails before anything starts);
    a function of the ingest server that builds the GatedDeployment."""
    from robot_app.common.signing import load_signing_key
    from robot_app.learner.registry import PolicyRegistry
    from sim.gate import load_gate_config

    config = load_gate_config(options.gate_config, episodes=options.gate_episodes)
    config = config.for_exploring() if options.explore_below_bar else config
    signing_key = load_signing_key(options.signing_key) if options.signing_key else None
    registry = PolicyRegistry(options.registry)
    return lambda server: GatedDeployment(registry, server, robot, signing_key, config, options.auto_deploy)


def serve_learner(spec: RobotSpec, out: str | Path, listen: str, announce: str | None,
                  security_files: tuple[str, str] | None, push_candidates: bool, learner_options: LearnerOptions,
                  stop: threading.Event, duration_s: float | None = None, progress_every_s: float = 10.0,
                  deployment_options: DeploymentOptions | None = None, dashboard_endpoint: str | None = None,
                  metrics_address: str | None = None) -> dict:
    """dashboard_endpoint: where operators' dashboards subscribe to telemetry and send software stops.
    metrics_address: HOST:PORT of a Prometheus /metrics."""
    out = Path(out)
    deploy = load_deployment(deployment_options, spec.name) if deployment_options else None
    store = IngestStore(out / "ingest.sqlite")
    returns = EpisodeReturns()
    learner = OnlineLearner(store, out, spec, on_chunk=returns.add, **learner_options.model_dump())
    server = IngestServer(store, listen, security_files, announce_endpoint=announce, rows=RowSchema.of(spec),
                          dashboard_endpoint=dashboard_endpoint)
    server.credit = learner.credit  # before the first robot is heard
    deployment = deploy(server) if deploy else None
    if metrics_address is not None:
        from robot_app.learner.metrics import LearnerCollector, start_metrics_server

        log.info("metrics on http://%s:%d/metrics", *start_metrics_server(
            metrics_address, LearnerCollector(learner, server, returns, deployment)))
    if server.dashboard is not None:
        log.info("dashboards subscribe on %s", server.dashboard.endpoint)
    server_thread = threading.Thread(target=server.serve, name="ingest", daemon=True)
    server_thread.start()
    log.info("learner listening on %s, announcing on %s; %s", server.endpoint, server.announce_endpoint,
             "pushing candidates straight to robots" if push_candidates else
             "candidates go through the registry" if deployment else "candidates are only exported")
    scalars = ScalarLog(out / "tensorboard", learner.transitions or None)  # a restart resumes the curves where it is
    started = time.monotonic()
    next_progress = started + progress_every_s
    published = offered = None
    last_progress = (0.0, learner.updates)
    try:
        while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
            if not learner.ingest(limit=500) + learner.train(max_updates=20):
                time.sleep(0.02)  # nothing arrived and nothing is owed
            newest = learner.candidates[-1] if learner.candidates else None
            if push_candidates and newest != published:
                published = newest
                server.publish(published)
            if deployment is not None:
                if newest != offered:
                    offered = newest
                    deployment.offer(newest)
                deployment.poll()
            if time.monotonic() >= next_progress:
                next_progress += progress_every_s
                elapsed = time.monotonic() - started
                rate = (learner.updates - last_progress[1]) / max(elapsed - last_progress[0], 1e-9)
                last_progress = (elapsed, learner.updates)
                _progress(out, elapsed, learner, server, returns, deployment, scalars, rate)
    finally:
        server.stop()
        server_thread.join(timeout=10)
        learner.checkpoint()
        store.close()
        scalars.close()
    return {"transitions": learner.transitions, "updates": learner.updates, "candidates": len(learner.candidates),
            "episodes": returns.finished, "rejected": dict(server.rejected),
            "quarantined": dict(server.quarantined) | learner.quarantined}


def _progress(out: Path, elapsed: float, learner: OnlineLearner, server: IngestServer, returns: EpisodeReturns,
              deployment: GatedDeployment | None, scalars: ScalarLog, updates_per_s: float):
    recent = [e["return"] for e in returns.finished[-10:]]
    past_warmup = learner.transitions - learner.warmup
    row = ProgressRow(
        elapsed_s=round(elapsed, 1), transitions=learner.transitions, updates=learner.updates,
        # what the learner kept up with, against what it was configured for: a realtime robot's shortfall
        updates_per_transition=round(learner.updates / past_warmup, 3) if past_warmup > 0 else None,
        configured_updates_per_transition=learner.ratio, owed_updates=learner.owed_updates,
        candidates=len(learner.candidates), episodes=len(returns.finished),
        recent_return=round(sum(recent) / len(recent), 1) if recent else None,
        robots={robot: dict(stats) for robot, stats in server.robots.items()},
        running={robot: status.policy_version for robot, status in server.statuses.items()},
        rejected=dict(server.rejected), quarantined=dict(server.quarantined) | learner.quarantined,
        gate=deployment.summary() if deployment else None, losses=learner.losses())
    with open(out / "progress.jsonl", "a") as f:
        f.write(row.model_dump_json() + "\n")
    scalars.add(learner.transitions, {"episode/recent_return": row.recent_return, "train/updates": learner.updates,
                                      "train/updates_per_s": updates_per_s,
                                      **{f"train/{name}": value for name, value in row.losses.items()}})
    log.info("t=%.0fs transitions=%d updates=%d (%s per transition, %d owed) candidates=%d episodes=%d "
             "return(last 10)=%s", elapsed, learner.transitions, learner.updates, shown(row.updates_per_transition),
             learner.owed_updates, len(learner.candidates), len(returns.finished), shown(row.recent_return))
