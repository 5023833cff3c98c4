"""System identification, the parts built so far: excitation logs read back, the fitted unknowns, and the model that
replays a log's volts in windows (the fit with mujoco.sysid comes next: docs/SYSID_NOTES.md)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import mujoco
import mujoco.rollout
import numpy as np

from calibration.encoders import RobotCalibration
from robot_app.agent.transition_log import TransitionLog
from robot_app.robot.spec import Parameter, RobotSpec
from sim.furuta import ASSETS, get_parameter, set_parameter

HELD_OUT = 0.2  # the last fifth of every log is held out of the fit, and judged on
FITTED = ("arm_damping", "pendulum_damping", "motor_gain", "arm_friction", "pendulum_friction", "cable_stiffness",
          "plant_latency_s")  # of the spec's randomisation table; its masses are weighed, not fitted (docs/SYSID_NOTES)
DEAD_ZONE = ("dead_zone_negative_v", "dead_zone_positive_v")
SPRING_ZERO = "arm_spring_zero_rad"  # where the cable spring rests, in the calibration's arm angle


class SysidError(ValueError):
    """A log or a request that identification cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class Recording:
    """One excitation: the calibrated joint angles (rad, unwrapped) at every control period, and the volts sent after
    each reading; sample k+1 is where command k left the robot."""

    path: Path
    robot_id: str
    period_s: float
    angles: np.ndarray  # [n, joints]
    volts: np.ndarray  # [n, actuators]
    calibration: RobotCalibration

    @property
    def still_noise_counts(self) -> float:
        """The encoders' noise, from the still start (before the first volt): counts' std about their mean."""
        moving = np.flatnonzero(np.abs(self.volts).max(axis=1) > 0)
        still = self.angles[:max(moving[0] if len(moving) else len(self.angles), 1)]
        scale = next(iter(self.calibration.encoders.values())).scale
        return float(np.sqrt(np.mean(np.var(still, axis=0))) / scale) if len(still) > 10 else 0.0


def load_recording(path: str | Path) -> Recording:
    """An excitation log from `robot-app excite` (its .json beside it says how it was made): its one excitation."""
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise SysidError(f"{path}: not an excitation log (needs the log and {meta_path.name}, as robot-app excite "
                         "writes them)")
    meta = json.loads(meta_path.read_text())
    log = TransitionLog(path)
    try:
        chunks = [chunk for _, chunk in log.read()]
    finally:
        log.close()
    if not chunks:
        raise SysidError(f"{path}: the log holds no transitions")
    columns = {name: np.concatenate([c.columns[name] for c in chunks]) for name in ("episode", "step", "obs", "action")}
    last = columns["episode"] == columns["episode"].max()  # the excitation trial (a log holds one)
    steps, obs, action = columns["step"][last], columns["obs"][last], columns["action"][last]
    if not np.array_equal(steps, np.arange(len(steps))):
        raise SysidError(f"{path}: the excitation's steps are not contiguous from 0 (rows lost or reordered)")
    joints = obs.shape[1] // 2
    angles = np.unwrap(obs[:, :joints], axis=0)
    if len(angles) < 100:
        raise SysidError(f"{path}: {len(angles)} samples; identification needs at least 100")
    return Recording(path, meta["robot_id"], float(meta["period_s"]), angles, action.astype(np.float64),
                     RobotCalibration.model_validate(meta["calibration"]))


# ---- the parameters: each a dimensionless variable the optimiser moves, and the physical value it means ----------

@dataclasses.dataclass(frozen=True)
class Unknown:
    """A fitted parameter. `log`: value = nominal * exp(x), for quantities known only to within decades; otherwise
    value = nominal * x (a scale), or, for a nominal of zero, value = unit * x."""

    name: str
    nominal: float
    low: float  # bounds of x
    high: float
    log: bool = False
    unit: float = 1.0

    def value(self, x: float) -> float:
        if self.log:
            return self.nominal * math.exp(x)
        return (self.nominal or self.unit) * x

    @property
    def start(self) -> float:
        return 0.0 if self.log else (1.0 if self.nominal else 0.0)


def unknowns(spec: RobotSpec, model: mujoco.MjModel, calibration: RobotCalibration) -> list[Unknown]:
    """What is fitted, from nominal values: the MJCF's for the physical ones, the control period for the latency,
    the calibration's breakaway for the dead zone."""
    found = []
    for name in FITTED:
        span = spec.randomisation[name]
        if span.parameter is Parameter.PLANT_LATENCY:
            found.append(Unknown(name, 0.0, 0.0, 0.5, unit=spec.period_s))  # up to half a period
            continue
        nominal = get_parameter(model, span.parameter, span.element)
        if span.log:  # the range's decades, and one more either side
            found.append(Unknown(name, nominal, math.log(span.low / nominal) - math.log(10),
                                 math.log(span.high / nominal) + math.log(10), log=True))
        else:  # the range, twice as wide
            found.append(Unknown(name, nominal, max(0.0, 2 * span.low / nominal - 1), 2 * span.high / nominal))
    breakaway = _breakaway(calibration)
    for name, side in zip(DEAD_ZONE, ("negative", "positive")):
        found.append(Unknown(name, breakaway[side], 0.0, 1.5))
    found.append(Unknown(SPRING_ZERO, 0.0, -0.3, 0.3))
    return found


def _breakaway(calibration: RobotCalibration) -> dict[str, float]:
    step = calibration.steps.get("dead_zone")
    if step is None:
        raise SysidError("the log's calibration has no dead_zone step: run `robot-app calibrate --step dead_zone` "
                         "before exciting, so the dead zone has a measured start")
    return {side: max(float(v["mean_v"]), 1e-3) for side, v in step.measured["breakaway_v"].items()}


# ---- the model and its rollout ---------------------------------------------------------------------------------

class Simulator:
    """The spec's MJCF with a set of parameter values, replaying recorded volts: the dead zone on each command, the
    latency as a delay of the held command, averaged over each physics step so the fit sees it smoothly."""

    def __init__(self, spec: RobotSpec, known: dict[str, float], unknowns: list[Unknown], stops: tuple | None):
        self.spec, self.unknowns = spec, unknowns
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / spec.mjcf))
        for name, value in known.items():
            span = spec.randomisation[name]
            set_parameter(self.model, span.parameter, span.element, value)
        self.stops = stops
        self.substeps = round(spec.period_s / self.model.opt.timestep)
        self._data = [mujoco.MjData(self.model)]

    def values(self, x) -> dict[str, float]:
        return {u.name: u.value(float(v)) for u, v in zip(self.unknowns, x)}

    def _model(self, values: dict[str, float]) -> mujoco.MjModel:
        model = copy.copy(self.model)
        for name, value in values.items():
            span = self.spec.randomisation.get(name)
            if span is not None and span.parameter.physical:
                set_parameter(model, span.parameter, span.element, value)
        if self.stops is not None:
            model.jnt_range[model.joint("arm").id] = np.add(self.stops, values[SPRING_ZERO])
        return model

    def _control(self, volts: np.ndarray, values: dict[str, float]) -> np.ndarray:
        """Volts per physics step: each command through the dead zone, then held from `latency` into its period and
        averaged over every physics step (exact, and smooth in the latency). Before the first command: 0 V."""
        negative, positive = values[DEAD_ZONE[0]], values[DEAD_ZONE[1]]
        driven = np.where(volts >= positive, volts - positive, np.where(volts <= -negative, volts + negative, 0.0))
        period, dt, delay = self.spec.period_s, self.model.opt.timestep, values["plant_latency_s"]
        area_at_switch = np.concatenate([np.zeros((1, driven.shape[1])), np.cumsum(driven * period, axis=0)])
        edges = np.arange(len(volts) * self.substeps + 1)[:, None] * dt
        k = np.clip(np.floor((edges[:, 0] - delay) / period).astype(np.int64), 0, len(volts) - 1)
        area = np.where(edges < delay, 0.0, area_at_switch[k] + (edges - (k[:, None] * period + delay)) * driven[k])
        return np.diff(area, axis=0) / dt

    def predict(self, recording: Recording, columns, starts: np.ndarray, length: int) -> np.ndarray:
        """Simulated angles [columns, windows, length, joints] in the calibration's frame. A column is a parameter
        vector and the windows' start states [windows, 4]: angle corrections (counts) and velocities (rad/s), from
        the recorded angles at each window's first sample."""
        if len(starts) and starts.max() + length > len(recording.angles):
            raise SysidError(f"a window of {length} samples from {starts.max()} runs past the recording's "
                             f"{len(recording.angles)} samples")
        scale = np.array([e.scale for e in recording.calibration.encoders.values()])
        models, controls, initial, frames = [], [], [], []
        data = self._data[0]
        for x, states in columns:
            values = self.values(x)
            model = self._model(values)
            control = self._control(recording.volts, values)
            frame = self._frame(values)
            for start, state in zip(starts, states):
                mujoco.mj_resetData(model, data)
                data.qpos[:] = recording.angles[start] + state[:2] * scale + frame
                data.qvel[:] = state[2:]
                models.append(model)
                controls.append(control[start * self.substeps:(start + length - 1) * self.substeps])
                initial.append(self._state(model, data))
                frames.append(frame)
        state, _ = mujoco.rollout.rollout(models, self._data, np.array(initial), np.array(controls))
        nq = self.model.nq
        first = np.array(initial)[:, None, 1:1 + nq]
        angles = np.concatenate([first, state[:, self.substeps - 1::self.substeps, 1:1 + nq]], axis=1)
        angles -= np.array(frames)[:, None, :]
        return angles.reshape(len(columns), len(starts), length, nq)

    @staticmethod
    def _state(model, data) -> np.ndarray:
        state = np.empty(mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS))
        mujoco.mj_getState(model, data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        return state

    @staticmethod
    def _frame(values: dict[str, float]) -> np.ndarray:
        """Physics angles less calibrated ones: the arm's spring rests at its zero; the pendulum's 0 hangs down."""
        return np.array([values[SPRING_ZERO], math.pi])
