"""Virtual units for calibration and identification tests: a lockstep virtual robot served on a thread, and
calibrations with the steps a test needs recorded as if they had run."""

from __future__ import annotations

import contextlib
import threading

from calibration.encoders import StepRecord
from robot_app.robot.spec import load_robot_spec
from sim.virtual_robot import VirtualRobot

SPEC = load_robot_spec("furuta")


@contextlib.contextmanager
def virtual_robot(variation, robot_id="furuta-7"):
    robot = VirtualRobot(SPEC, lockstep=True, seed=3, robot_id=robot_id, variation=variation)
    audit = {}
    thread = threading.Thread(target=lambda: audit.update(vars(robot.serve())), daemon=True)
    thread.start()
    try:
        yield robot, audit
    finally:
        robot.stop()
        thread.join(timeout=10)


def _step(robot_id, measured) -> StepRecord:
    return StepRecord(date="2026-12-03T00:00:00+00:00", robot_id=robot_id, firmware="", checks=[], spread={},
                      measured=measured)


def confirmed(calibration, robot_id="furuta-7"):
    """A calibration whose directions a direction check confirmed (as if it had run)."""
    directions = {name: encoder.direction for name, encoder in calibration.encoders.items()}
    record = _step(robot_id, {"confirmed": True, "directions": directions})
    return calibration.model_copy(update={"robot_id": robot_id, "steps": calibration.steps | {"direction": record}})


def with_breakaway(calibration, negative_v, positive_v, robot_id="furuta-7"):
    """A calibration whose dead-zone step measured these breakaway voltages."""
    record = _step(robot_id, {"breakaway_v": {"negative": {"mean_v": negative_v, "sd_v": 0.01},
                                              "positive": {"mean_v": positive_v, "sd_v": 0.01}}})
    return calibration.model_copy(update={"robot_id": robot_id, "steps": calibration.steps | {"dead_zone": record}})
