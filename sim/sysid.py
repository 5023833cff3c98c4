"""System identification: a unit's MuJoCo parameters fitted to its excitation logs with mujoco.sysid, by multiple
shooting over 1-s windows (docs/SYSID_NOTES.md)."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import json
import math
import time
from pathlib import Path

import mujoco
import mujoco.rollout
import numpy as np
from mujoco import sysid

from calibration.encoders import RobotCalibration
from robot_app.agent.transition_log import TransitionLog
from robot_app.robot.physics import FittedValue, PhysicsOverlay
from robot_app.robot.spec import Parameter, RobotSpec
from sim.furuta import ASSETS, get_parameter, set_parameter

QUANTISATION_FLOOR = 1 / math.sqrt(12)  # counts: the RMSE of rounding to whole counts alone
HELD_OUT = 0.2  # the last fifth of every log is held out of the fit, and judged on
FITTED = ("arm_damping", "pendulum_damping", "motor_gain", "arm_friction", "pendulum_friction", "cable_stiffness",
          "plant_latency_s")  # of the spec's randomisation table; its masses are weighed, not fitted (docs/SYSID_NOTES)
JITTER = "control_jitter_s"  # not fitted but found in the fit's residuals (jitter_width)
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



def load_recording(path: str | Path) -> Recording:
    """An excitation log from `robot-app excite` (its .json beside it says how it was made): its one excitation."""
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise SysidError(f"{path}: not an excitation log (needs the log and {meta_path.name}, as robot-app excite "
                         "writes them)")
    meta = json.loads(meta_path.read_text())
    missing = [key for key in ("robot_id", "period_s", "calibration") if key not in meta]
    if missing:
        raise SysidError(f"{meta_path}: no {', '.join(missing)}: not what robot-app excite writes")
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
    latency as a delay of the held command, averaged over each physics step so the fit sees it smoothly. Under
    jitter the latency it fits is the mean delay; `identify` splits it."""

    def __init__(self, spec: RobotSpec, known: dict[str, float], calibration: RobotCalibration):
        """`known`: values set, not fitted (the weighed masses); the unknowns start from `calibration`'s breakaway,
        and the arm's stops are where its travel step found them (none without one)."""
        self.spec = spec
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / spec.mjcf))
        for name, value in known.items():
            span = spec.randomisation[name]
            set_parameter(self.model, span.parameter, span.element, value)
        self.unknowns = unknowns(spec, self.model, calibration)
        travel = calibration.steps.get("travel")
        self.stops = travel.measured["stops_rad"] if travel is not None else None
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

    def _control(self, volts: np.ndarray, values: dict[str, float], early_s: np.ndarray | None = None) -> np.ndarray:
        """Volts per physics step: each command through the dead zone, then held from `latency` into its period (less
        `early_s[k]` for command k, where given: the landings must stay in order) and averaged over every physics
        step (exact, and smooth in the latency). Before the first command: 0 V."""
        negative, positive = values[DEAD_ZONE[0]], values[DEAD_ZONE[1]]
        driven = np.where(volts >= positive, volts - positive, np.where(volts <= -negative, volts + negative, 0.0))
        switch = np.arange(len(volts)) * self.spec.period_s + values["plant_latency_s"]
        if early_s is not None:
            switch = switch - early_s
        area_at_switch = np.concatenate([np.zeros((1, driven.shape[1])),
                                         np.cumsum(driven[:-1] * np.diff(switch)[:, None], axis=0)])
        edges = np.arange(len(volts) * self.substeps + 1) * self.model.opt.timestep
        k = np.searchsorted(switch, edges, side="right") - 1
        held = np.maximum(k, 0)
        area = np.where((k < 0)[:, None], 0.0, area_at_switch[held] + (edges - switch[held])[:, None] * driven[held])
        return np.diff(area, axis=0) / self.model.opt.timestep

    def predict(self, recording: Recording, columns, starts: np.ndarray, length: int) -> np.ndarray:
        """Simulated angles [columns, windows, length, joints] in the calibration's frame. A column is a parameter
        vector and the windows' start states [windows, 4]: angle corrections (counts) and velocities (rad/s), from
        the recorded angles at each window's first sample; optionally a third, how early each command lands (s)."""
        if len(starts) and starts.max() + length > len(recording.angles):
            raise SysidError(f"a window of {length} samples from {starts.max()} runs past the recording's "
                             f"{len(recording.angles)} samples")
        scale = count_rad(recording)
        models, controls, initial, frames = [], [], [], []
        data = self._data[0]
        for x, states, *early_s in columns:
            values = self.values(x)
            model = self._model(values)
            control = self._control(recording.volts, values, *early_s)
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


# ---- the fit: multiple shooting, the physics shared, each window's start state its own ---------------------------

@dataclasses.dataclass
class Fit:
    values: dict[str, float]  # physical units; the plant latency, not the mean delay the windows were simulated at
    nominal: dict[str, float]  # where each started
    intervals: dict[str, float]  # 95% half-widths, physical units (white residuals assumed)
    fit_rmse_counts: list[float]  # per joint
    held_out_rmse_counts: list[float]
    nominal_held_out_rmse_counts: list[float]
    seconds: float
    window: int  # samples per window
    held_out_starts: list[np.ndarray]  # per recording
    held_out_errors: list[np.ndarray]  # per recording, counts [windows, window, joints]: simulated less measured
    nominal_held_out_errors: list[np.ndarray]


def window_starts(first: int, end: int, length: int) -> np.ndarray:
    """Windows of `length` samples sharing their edge samples, inside [first, end)."""
    return np.arange(first, end - length + 1, length - 1)


def _windows(recording: Recording, starts: np.ndarray, length: int) -> np.ndarray:
    return np.stack([recording.angles[s:s + length] for s in starts])


def count_rad(recording: Recording) -> np.ndarray:
    """One encoder count of each joint, in rad."""
    return np.array([e.scale for e in recording.calibration.encoders.values()])


def _first_states(recording: Recording, starts: np.ndarray) -> np.ndarray:
    velocity = np.gradient(recording.angles, recording.period_s, axis=0)
    return np.concatenate([np.zeros((len(starts), velocity.shape[1])), velocity[starts]], axis=1)


class Problem:
    """Residuals (counts) and their Jacobian for the physics vector and the windows' states of every recording."""

    def __init__(self, simulator: Simulator, recordings: list[Recording], starts: list[np.ndarray], length: int,
                 ends: list[int], eps: float, upper: np.ndarray):
        self.simulator, self.recordings, self.starts, self.length, self.eps = simulator, recordings, starts, length, eps
        self.ends = ends  # where each recording's held-out fifth begins
        self.upper = upper  # of x: a difference step that would cross it goes the other way
        self.physics_size = len(simulator.unknowns)
        self.measured = [_windows(r, st, length) for r, st in zip(recordings, starts)]
        self.counts = [count_rad(r) for r in recordings]

    def split(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        physics, rest, states = x[:self.physics_size], x[self.physics_size:], []
        for st in self.starts:
            states.append(rest[:4 * len(st)].reshape(len(st), 4))
            rest = rest[4 * len(st):]
        return physics, states

    def _errors(self, index: int, predicted: np.ndarray) -> np.ndarray:
        return (predicted - self.measured[index]) / self.counts[index]

    def residual(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        columns = x.reshape(len(x), -1).T
        out = []
        for column in columns:
            physics, states = self.split(column)
            out.append(np.concatenate([
                self._errors(i, self.simulator.predict(r, [(physics, states[i])], self.starts[i], self.length)[0]
                             ).ravel() for i, r in enumerate(self.recordings)]))
        out = np.stack(out, axis=1)
        return out[:, 0] if x.ndim == 1 else out

    def jacobian(self, x: np.ndarray, r=None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        physics, states = self.split(x)
        state_offset = self.physics_size
        rows = []
        for i, recording in enumerate(self.recordings):
            steps = [self.eps if x[k] + self.eps <= self.upper[k] else -self.eps for k in range(self.physics_size)]
            columns = [(physics, states[i])]
            for k, step in enumerate(steps):
                moved = physics.copy()
                moved[k] += step
                columns.append((moved, states[i]))
            for j in range(4):
                moved = states[i].copy()
                moved[:, j] += self.eps
                columns.append((physics, moved))
            errors = self._errors(i, self.simulator.predict(recording, columns, self.starts[i], self.length))
            base = errors[0]
            block = np.zeros((base.size, len(x)))
            for k, step in enumerate(steps):
                block[:, k] = ((errors[1 + k] - base) / step).ravel()
            per_window = base[0].size
            for j in range(4):
                change = (errors[1 + self.physics_size + j] - base) / self.eps  # [windows, length, joints]
                for w in range(len(self.starts[i])):
                    block[w * per_window:(w + 1) * per_window, state_offset + 4 * w + j] = change[w].ravel()
            state_offset += 4 * len(self.starts[i])
            rows.append(block)
        return np.concatenate(rows)


def _state_columns(physics: np.ndarray, states: np.ndarray, eps: float) -> list:
    """Predict's columns for the windows' states, then with each of their 4 components moved by `eps`."""
    return [(physics, states)] + [(physics, states + eps * np.eye(4)[j]) for j in range(4)]


def refit_states(simulator: Simulator, recording: Recording, physics: np.ndarray, starts: np.ndarray, length: int,
                 iterations: int = 4, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Each window's start state alone, the physics held: Gauss-Newton on 4 numbers per window. Returns the states
    and the errors (counts) [windows, length, joints] at the end."""
    states = _first_states(recording, starts)
    measured, counts = _windows(recording, starts, length), count_rad(recording)
    for _ in range(iterations):
        columns = _state_columns(physics, states, eps)
        errors = (simulator.predict(recording, columns, starts, length) - measured) / counts
        change = (errors[1:] - errors[:1]) / eps
        for w in range(len(starts)):
            jac = change[:, w].reshape(4, -1).T
            states[w] -= np.linalg.lstsq(jac, errors[0, w].ravel(), rcond=None)[0]
    return states, (simulator.predict(recording, [(physics, states)], starts, length)[0] - measured) / counts


def jitter_width(simulator: Simulator, recordings: list[Recording], physics: np.ndarray, states: list[np.ndarray],
                 starts: list[np.ndarray], length: int, probes: int = 8, shift_s: float = 1e-4,
                 seed: int = 0) -> tuple[float, float]:
    """The spread in when commands land, which the fixed latency cannot model, from the fit's residuals: the width
    (s) of a uniform spread of that variance, and how far above it the upper end of a 95% interval lies (from
    resampling the windows).

    A command landing e early moves the window by e * g, g its landing response. So the residual power left after
    each window's own state directions (projection P) is v * sum|Pg|^2 plus white noise, whose variance the
    residuals' second differences give (jitter barely reaches them). sum|Pg|^2 comes from a few rollouts of
    random-sign landing shifts, each the sum of every command's g (Hutchinson's trace estimate). docs/SYSID_NOTES.md."""
    rng = np.random.default_rng(seed)
    terms = np.concatenate([_jitter_terms(simulator, r, physics, st, s, length, probes, shift_s, rng)
                            for r, st, s in zip(recordings, states, starts)])

    def variance(rows: np.ndarray) -> float:
        noise = rows[:, 2].sum() / rows[:, 3].sum()
        return float((rows[:, 0].sum() - noise * rows[:, 1].sum()) / rows[:, 4].sum())

    def width(var: float) -> float:
        return math.sqrt(12 * max(var, 0.0))

    spread = np.std([variance(terms[rng.integers(0, len(terms), len(terms))]) for _ in range(200)])
    found = variance(terms)
    return width(found), width(max(found, 0.0) + 1.96 * spread) - width(found)


def _jitter_terms(simulator: Simulator, recording: Recording, physics: np.ndarray, states: np.ndarray,
                  starts: np.ndarray, length: int, probes: int, shift_s: float, rng) -> np.ndarray:
    """Per window: the residual power outside its state directions and its degrees of freedom, the second
    differences' power / 6 and their count, and the landing responses' power there (per s^2 of variance)."""
    eps, counts = 1e-3, count_rad(recording)
    columns = _state_columns(physics, states, eps)
    columns += [(physics, states, rng.choice([-shift_s, shift_s], len(recording.volts))) for _ in range(probes)]
    predicted = simulator.predict(recording, columns, starts, length) / counts
    errors = predicted[0] - _windows(recording, starts, length) / counts
    rows = []
    for w in range(len(starts)):
        basis, _ = np.linalg.qr(((predicted[1:5, w] - predicted[0, w]) / eps).reshape(4, -1).T)

        def outside(y: np.ndarray) -> np.ndarray:
            return y - basis @ (basis.T @ y)

        responses = (predicted[5:, w] - predicted[0, w]).reshape(probes, -1) / shift_s
        second = errors[w, 2:] - 2 * errors[w, 1:-1] + errors[w, :-2]
        rows.append([np.sum(outside(errors[w].ravel()) ** 2), errors[w].size - 4, np.sum(second ** 2) / 6,
                     second.size, np.mean([np.sum(outside(g) ** 2) for g in responses])])
    return np.array(rows)


def build_problem(spec: RobotSpec, recordings: list[Recording], known: dict[str, float], window_s: float = 1.0,
                  eps: float = 1e-3) -> tuple[Problem, sysid.ParameterDict]:
    """The fit's residual and its parameters (the physics, then every window's start state), on the first 80% of
    every recording, in 1-s windows."""
    simulator = Simulator(spec, known, recordings[0].calibration)
    length = max(3, round(window_s / spec.period_s) + 1)
    ends = [int(len(r.angles) * (1 - HELD_OUT)) for r in recordings]
    starts = [window_starts(0, end, length) for end in ends]
    params = sysid.ParameterDict()
    for u in simulator.unknowns:
        params.add(sysid.Parameter(u.name, u.start, u.low, u.high))
    for index, (r, st) in enumerate(zip(recordings, starts)):
        first = _first_states(r, st)
        spread = np.tile([3.0, 3.0, 3.0, 3.0], (len(st), 1))
        params.add(sysid.Parameter(f"recording {index} windows", first.ravel(), (first - spread).ravel(),
                                   (first + spread).ravel()))
    params.move_off_bounds()  # the latency starts at its bound, 0
    return Problem(simulator, recordings, starts, length, ends, eps, params.get_bounds()[1]), params


class _Converged(Exception):
    def __init__(self, x: np.ndarray):
        self.x = x


def solve(params: sysid.ParameterDict, residual, jacobian, max_iter: int, ftol: float = 1e-6) -> np.ndarray:
    """mujoco.sysid's box-constrained Gauss-Newton (its mujoco backend) from `params`' values: the optimum x. It
    stops where an iteration lowers the cost by under `ftol` of it (the backend has only a step test, which the
    finite-difference Jacobian's noise keeps from firing)."""
    def converged(trace) -> None:
        if 0 <= trace[-1].reduction < ftol * trace[-1].objective:
            raise _Converged(trace[-1].candidate)

    try:
        _, result = sysid.optimize(params, lambda x, p: ([residual(x)], None, None), optimizer="mujoco",
                                   verbose=False, jacobian=jacobian, max_iters=max_iter, xtol=1e-6,
                                   iter_callback=converged, output=io.StringIO())
    except _Converged as stop:
        return np.asarray(stop.x, dtype=np.float64).reshape(-1)
    return np.asarray(result.x).reshape(-1)


def identify(spec: RobotSpec, recordings: list[Recording], known: dict[str, float], window_s: float = 1.0,
             max_iter: int = 30, eps: float = 1e-3) -> Fit:
    """Fit the unknowns to the first 80% of every recording (its windows' start states beside them); judge on the
    rest, each held-out window's start state refitted alone, for the fit and for the datasheet's physics."""
    started = time.perf_counter()
    problem, params = build_problem(spec, recordings, known, window_s, eps)
    simulator, length, ends = problem.simulator, problem.length, problem.ends
    x = solve(params, problem.residual, problem.jacobian, max_iter)
    residual = problem.residual(x)
    _, intervals = sysid.calculate_intervals([residual], problem.jacobian(x))
    physics, states = problem.split(x)
    values = simulator.values(physics)
    widths = {}
    for u, v, half in zip(simulator.unknowns, physics, intervals):
        widths[u.name] = abs(u.value(v + half) - u.value(v))
    jitter, jitter_95 = jitter_width(simulator, recordings, physics, states, problem.starts, length)
    jitter = min(jitter, 2 * values["plant_latency_s"])  # no spread lands a command before it is sent
    values |= {"plant_latency_s": values["plant_latency_s"] - jitter / 2, JITTER: jitter}  # from the mean delay
    widths |= {"plant_latency_s": math.hypot(widths["plant_latency_s"], jitter_95 / 2), JITTER: jitter_95}
    start = np.array([u.start for u in simulator.unknowns])
    held_starts = [window_starts(end, len(r.angles), length) for r, end in zip(recordings, ends)]
    held = [refit_states(simulator, r, physics, st, length)[1] for r, st in zip(recordings, held_starts)]
    nominal = [refit_states(simulator, r, start, st, length)[1] for r, st in zip(recordings, held_starts)]
    nominal_values = simulator.values(start) | {JITTER: 0.0}
    return Fit(values, nominal_values, widths, _rms([residual.reshape(-1, recordings[0].angles.shape[1])]),
               _rms(held), _rms(nominal), time.perf_counter() - started, length, held_starts, held, nominal)


def _rms(errors: list[np.ndarray]) -> list[float]:
    return np.sqrt(np.mean(np.concatenate([e.reshape(-1, e.shape[-1]) for e in errors]) ** 2, axis=0)).tolist()


def overlay(spec: RobotSpec, recordings: list[Recording], known: dict[str, float], fit: Fit) -> PhysicsOverlay:
    """The fit as the spec overlay the gate and sim training draw around; weighed values with no interval."""
    model = mujoco.MjModel.from_xml_path(str(ASSETS / spec.mjcf))
    parameters = {name: FittedValue(nominal=get_parameter(model, spec.randomisation[name].parameter,
                                                          spec.randomisation[name].element),
                                    value=value, interval_95=0.0) for name, value in known.items()}
    parameters |= {name: FittedValue(nominal=fit.nominal[name], value=fit.values[name],
                                     interval_95=fit.intervals[name]) for name in (*FITTED, JITTER)}
    return PhysicsOverlay(
        robot=spec.name, robot_id=recordings[0].robot_id,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        method=f"mujoco.sysid Gauss-Newton, multiple shooting over {fit.window - 1}-period windows; the last "
               f"{HELD_OUT:.0%} of every log held out",
        logs=[str(r.path) for r in recordings], parameters=parameters,
        dead_zone_v=(fit.values[DEAD_ZONE[0]], fit.values[DEAD_ZONE[1]]), arm_spring_zero_rad=fit.values[SPRING_ZERO],
        held_out_rmse_counts=fit.held_out_rmse_counts, datasheet_held_out_rmse_counts=fit.nominal_held_out_rmse_counts,
        quantisation_floor_counts=QUANTISATION_FLOOR, fit_seconds=fit.seconds)
