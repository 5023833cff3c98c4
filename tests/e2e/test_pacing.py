"""Lockstep pacing: a robot runs ahead of a slow learner only by its credit, so updates per transition hold."""

import json
import threading
import time

from calibration.encoders import load_calibration
from robot_app.agent.policy_runner import RandomPolicy
from robot_app.agent.runtime import Agent
from robot_app.agent.transition_log import TransitionLog
from robot_app.common.reports import LearnerOptions
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.learner import online
from robot_app.learner.service import serve_learner
from robot_app.robot.spec import RobotSpec, load_robot_spec
from robot_app.transport.robot_link import RobotLink
from sim.virtual_robot import VirtualRobot
from tests.conftest import TINY_AGENT, wait_until

WARMUP, TRANSITIONS = 100, 1500


def test_credit_keeps_the_ratio_when_the_learner_is_slowed(tmp_path, monkeypatch):
    real_update = online.sample_and_update

    def slow_update(*args, **kwargs):  # the learner on a loaded machine: each update takes 4 ms longer
        time.sleep(0.004)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(online, "sample_and_update", slow_update)
    furuta = load_robot_spec("furuta")
    spec = RobotSpec.model_validate(furuta.model_dump() | {"episode_s": 0.3})  # 15-step episodes: quick to pace
    listen, announce = f"ipc://{tmp_path}/ingest", f"ipc://{tmp_path}/announce"
    stop = threading.Event()
    learner = threading.Thread(target=serve_learner, args=(
        spec, tmp_path / "learner", listen, announce, None, False,
        LearnerOptions(horizon=0, agent_overrides=dict(TINY_AGENT), warmup=WARMUP, candidate_every=1 << 30), stop),
        kwargs={"progress_every_s": 0.2})
    learner.start()
    device = VirtualRobot(spec, lockstep=True)
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    try:
        with TransitionLog(tmp_path / "outbox.sqlite") as log:
            link = RobotLink(log, listen, "furuta-virtual-0", None, heartbeat_s=0.05)
            linking = threading.Thread(target=link.run, daemon=True)
            linking.start()
            agent = Agent(SerialRobot(device.port), spec, load_calibration("furuta"),
                          RandomPolicy(*spec.command_limits), log, status_every_s=60,
                          credit=lambda: link.credit_through)
            stopper = threading.Thread(target=lambda: (wait_until(lambda: log.appended_through >= TRANSITIONS, 120),
                                                       agent.request_stop("test done")))
            stopper.start()
            summary = agent.run()
            stopper.join()
            link.stop()
            linking.join(timeout=10)
    finally:
        stop.set()
        learner.join(timeout=30)
        device.stop()
    rows = [json.loads(line) for line in (tmp_path / "learner" / "progress.jsonl").read_text().splitlines()]
    paced = [row for row in rows if row["transitions"] - WARMUP >= 800]
    assert summary.credit_waits > 10  # the robot was held back, again and again
    assert paced, rows[-1]
    # Never more than the ratio (updates are owed only by transitions), and within 5% below it, the credit's bound.
    assert all(0.95 <= row["updates_per_transition"] <= 1.0 for row in paced), [
        (row["transitions"], row["updates_per_transition"]) for row in paced]
    # The same curves for TensorBoard, at the transition count
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "learner" / "tensorboard"))
    events.Reload()
    assert {"episode/recent_return", "train/updates", "train/updates_per_s", "train/alpha"} <= set(
        events.Tags()["scalars"])
    assert events.Scalars("train/updates")[-1].value == rows[-1]["updates"]
