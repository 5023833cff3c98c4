"""The learner service: ingest server, online SAC-SVG(H) training and candidate publishing, until stopped."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from robot_app.learner.ingest import IngestServer, IngestStore
from robot_app.learner.online import OnlineLearner
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


def serve_learner(spec: RobotSpec, out: str | Path, listen: str, announce: str | None,
                  security_files: tuple[str, str] | None, push_candidates: bool, learner_options: dict,
                  stop: threading.Event, duration_s: float | None = None, progress_every_s: float = 10.0) -> dict:
    out = Path(out)
    store = IngestStore(out / "ingest.sqlite")
    server = IngestServer(store, listen, security_files, announce_endpoint=announce)
    server_thread = threading.Thread(target=server.serve, name="ingest", daemon=True)
    server_thread.start()
    returns = EpisodeReturns()
    learner = OnlineLearner(store, out, spec, on_chunk=returns.add, **learner_options)
    log.info("learner listening on %s, announcing on %s; %s", server.endpoint, server.announce_endpoint,
             "pushing candidates straight to robots" if push_candidates else "candidates wait for the gate")
    started = time.monotonic()
    next_progress = started + progress_every_s
    published = None
    try:
        while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
            if not learner.ingest(limit=500) + learner.train(max_updates=20):
                time.sleep(0.02)  # nothing arrived and nothing is owed
            if push_candidates and learner.candidates and learner.candidates[-1] != published:
                published = learner.candidates[-1]
                server.publish(published)
            if time.monotonic() >= next_progress:
                next_progress += progress_every_s
                _progress(out, time.monotonic() - started, learner, server, returns)
    finally:
        server.stop()
        server_thread.join(timeout=10)
        learner.checkpoint()
        store.close()
    return {"transitions": learner.transitions, "updates": learner.updates, "candidates": len(learner.candidates),
            "episodes": returns.finished, "rejected": dict(server.rejected)}


def _progress(out: Path, elapsed: float, learner: OnlineLearner, server: IngestServer, returns: EpisodeReturns):
    recent = [e["return"] for e in returns.finished[-10:]]
    row = {"elapsed_s": round(elapsed, 1), "transitions": learner.transitions, "updates": learner.updates,
           "candidates": len(learner.candidates), "episodes": len(returns.finished),
           "recent_return": round(sum(recent) / len(recent), 1) if recent else None,
           "robots": {robot: dict(stats) for robot, stats in server.robots.items()},
           "running": {robot: status.policy_version for robot, status in server.statuses.items()},
           "rejected": dict(server.rejected)}
    with open(out / "progress.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("t=%.0fs transitions=%d updates=%d candidates=%d episodes=%d return(last 10)=%s", elapsed,
             learner.transitions, learner.updates, len(learner.candidates), len(returns.finished),
             row["recent_return"])
