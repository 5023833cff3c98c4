"""Calibration procedures (encoder zero, direction, travel limits, dead zone), run by the agent through its supervisor.

Each step is a controller the agent runs as its policy, one trial per episode, with a task of its own: the observation
is the joint angles and velocities in the calibration being measured with, the reset between trials holds the motor at
0 V (a controller that needs the arm centred moves it there itself), and a trial ends when its controller says so. The
analysis works on what the agent recorded: the commands as sent, after the supervisor, and the angles it read back.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from calibration.encoders import EncoderCalibration, RobotCalibration, StepRecord
from robot_app.agent.policy_runner import PolicyKind
from robot_app.agent.runtime import Agent
from robot_app.agent.transition_log import TransitionRecorder, TransitionSink
from robot_app.common.logs import utc_now
from robot_app.hardware.robot_io import RobotIO
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import JointState, make_task

STEPS = ("zero", "direction", "travel", "dead_zone")
MAX_VOLTS = 1.5  # no procedure asks for more
SETTLE_S = 60.0  # a trial waits at most this long for the robot to come to rest (a pendulum swings for long)
STILL_RAD_S = 0.05  # a joint whose fitted speed over a window is under this is still
SEARCH_MARGIN_RAD = 0.5  # the travel search goes this far past the spec's hard stops, and no further


class ProcedureError(RuntimeError):
    """A step that could not start (a precondition failed), or whose measurement failed its checks: says which."""


def count_rad(spec: RobotSpec) -> np.ndarray:
    """Radians per encoder count, per sensor."""
    return np.array([2 * math.pi / s.counts_per_rev for s in spec.sensors])


def window_speed(positions: np.ndarray, period_s: float) -> float:
    """The least-squares slope of equally spaced positions: a speed that encoder noise barely moves."""
    t = np.arange(len(positions)) * period_s
    t -= t.mean()
    return float(np.dot(t, positions - np.mean(positions)) / np.dot(t, t))


@dataclasses.dataclass
class Trial:
    """One episode of a procedure as the agent recorded it, a row per tick."""

    phase: list[str]  # the controller's phase when it chose the tick's command
    position: np.ndarray  # [T, joints] rad, in the calibration measured with
    velocity: np.ndarray
    command: np.ndarray  # [T] V, as sent
    interventions: list[tuple[str, ...]]
    failure: str | None  # what the controller gave up on

    def ticks(self, phase: str) -> np.ndarray:
        return np.flatnonzero(np.array(self.phase) == phase)

    def interventions_during(self, ticks: np.ndarray) -> list[str]:
        """The supervisor's interventions on these ticks, by name."""
        return sorted({reason for i in ticks for reason in self.interventions[i]})


class Controller:
    """A procedure's live half: the policy the agent runs. Each trial waits for the robot to rest (`rest_s` of no
    swing beyond encoder noise and no drift), then runs the step's phases until it sets `finished`. With
    `centre_first` (the direction confirmed), a trial that finds the arm off centre first moves it there, slowly."""

    kind, sample_seed, fell_back = PolicyKind.BRING_UP, -1, False
    name: str
    trials: int
    rest_s = 0.5
    rest_joints = (0, 1)  # the joints that must rest before a trial: both, unless a step says otherwise
    trial_s = 120.0  # the most one trial may take, waiting included
    TARGET_RAD_S, KP, KI = 0.4, 0.5, 4.0  # the speed governor: rad/s, V/(rad/s), V/(rad/s)/s

    def __init__(self, spec: RobotSpec, centre_first: bool = False):
        self.version = f"calibrate-{self.name}"
        self.period, self.centre_first = spec.period_s, centre_first
        self.count_rad = count_rad(spec)
        self.trial, self.phases, self.failures = -1, [], []
        self.finished = True

    def ticks(self, seconds: float) -> int:
        return max(1, round(seconds / self.period))

    def reset(self) -> None:
        self.trial += 1
        self.phases.append([])
        self.failures.append(None)
        self.finished, self._history, self._integral = False, [], 0.0
        self.goto("centre" if self.centre_first else "settle")

    def goto(self, phase: str) -> None:
        self.phase, self.in_phase = phase, 0

    @property
    def side(self) -> int:
        """The direction of this trial's push: positive on even trials, negative on odd ones."""
        return 1 if self.trial % 2 == 0 else -1

    def fail(self, why: str) -> float:
        self.failures[-1], self.finished = why, True
        return 0.0

    def govern(self, side: int, target_rad_s: float, velocity) -> float:
        """The volts (at most MAX_VOLTS) that hold the arm's speed towards `side` at the target: a PI loop."""
        error = target_rad_s - side * float(velocity[0])
        self._integral = min(max(self._integral + self.KI * error * self.period, 0.0), MAX_VOLTS)
        return side * min(max(self._integral + self.KP * error, 0.0), MAX_VOLTS)

    def resting(self) -> bool:
        """The last rest_s: each resting joint's spread under 1.5 counts (no swing past noise), its drift under 1."""
        window = (np.array(self._history[-self.ticks(self.rest_s):]) / self.count_rad)[:, self.rest_joints]
        if len(window) < self.ticks(self.rest_s):
            return False
        drift = np.abs([window_speed(column, self.period) for column in window.T]) * self.rest_s
        return bool(np.all(window.std(axis=0) < 1.5) and np.all(drift < 1.0))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        position, velocity = obs[:2].astype(np.float64), obs[2:4].astype(np.float64)
        self._history.append(position)
        phase = self.phase
        if any(self.failures[:-1]):  # an earlier trial failed: the rest only let the agent count its episodes
            phase, volts, self.finished = "skipped", 0.0, True
        elif phase == "centre":
            arm = float(position[0])
            if abs(arm) < 0.03:
                volts = 0.0
                self.goto("settle")
            elif self.in_phase >= self.ticks(20.0):
                volts = self.fail(f"the arm did not reach the centre within 20 s (it is at {arm:.2f} rad)")
            else:
                volts = self.govern(-1 if arm > 0 else 1, min(max(2 * abs(arm), 0.1), self.TARGET_RAD_S), velocity)
        elif phase == "settle":
            volts = 0.0
            if self.resting():
                self.start(position)
            elif self.in_phase >= self.ticks(SETTLE_S):
                volts = self.fail(f"the robot did not come to rest within {SETTLE_S:g} s")
        else:
            volts = self.act(position, velocity)
        self.in_phase += 1
        self.phases[-1].append(phase)
        return np.array([volts])

    def start(self, position) -> None:
        raise NotImplementedError

    def act(self, position, velocity) -> float:
        raise NotImplementedError


class ScriptedController(Controller):
    """Phases of held voltages, (phase, volts, seconds), the volts' sign alternating from trial to trial."""

    script: tuple[tuple[str, float, float], ...]

    def start(self, position) -> None:
        self._step = 0
        self.goto(self.script[0][0])

    def act(self, position, velocity) -> float:
        name, volts, seconds = self.script[self._step]
        if self.in_phase >= self.ticks(seconds):
            self._step += 1
            if self._step == len(self.script):
                self.finished = True
                return 0.0
            name, volts, seconds = self.script[self._step]
            self.goto(name)
        return volts * self.side


class ZeroController(ScriptedController):
    """Encoder zero: the pendulum hangs still for 2 s, then an arm doublet (out and back, so the arm ends about where
    it began and the cable's spring barely moves it) sets the pendulum swinging freely."""

    name, trials, rest_s = "zero", 3, 2.0
    script = (("kick", MAX_VOLTS, 0.14), ("kick_back", -MAX_VOLTS, 0.14), ("swing", 0.0, 4.0))


class DirectionController(ScriptedController):
    """A short low-voltage pulse each way, then the free response."""

    name, trials = "direction", 2
    PULSE_V, PULSE_S, RESPONSE_S = 1.0, 0.1, 0.6
    script = (("pulse", PULSE_V, PULSE_S), ("response", 0.0, RESPONSE_S))


class TravelController(Controller):
    """Towards each side in turn, at a governed speed and at most MAX_VOLTS, until the arm stalls: its speed under
    STILL_RAD_S for 200 ms while pushing at the cap. Then the motor lets go."""

    name, trials = "travel", 4
    rest_joints = (0,)  # the pendulum may swing on: the search only needs the arm at rest
    STALL_S, MIN_TRAVEL_RAD = 0.2, 0.3

    def start(self, position) -> None:
        self._start, self._integral = float(position[0]), 0.0
        self.goto("approach")

    def act(self, position, velocity) -> float:
        if self.phase == "release":
            self.finished = self.in_phase >= self.ticks(0.5)
            return 0.0
        if self.in_phase >= self.ticks(self.trial_s - SETTLE_S - 1.0):
            return self.fail(f"no stall on the {'+-'[self.side < 0]} side within {self.in_phase * self.period:.0f} s")
        volts = self.govern(self.side, self.TARGET_RAD_S, velocity)
        window = np.array(self._history[-self.ticks(self.STALL_S):])[:, 0]
        if (self._integral >= 0.95 * MAX_VOLTS and len(window) == self.ticks(self.STALL_S)
                and abs(window_speed(window, self.period)) < STILL_RAD_S):
            if self.side * (float(position[0]) - self._start) < self.MIN_TRAVEL_RAD:
                return self.fail(f"the arm stalled {abs(float(position[0]) - self._start):.2f} rad from where it "
                                 f"started, at {MAX_VOLTS:g} V: a brake, a jam, or a dead zone over {MAX_VOLTS:g} V")
            self.goto("release")
            return 0.0
        return volts


class DeadZoneController(Controller):
    """From rest, a voltage ramp each way in turn until the arm departs from where it rested by 3 counts, moving off
    at DEPARTURE_RAD_S. The first ramp each way is rough (ROUGH_V_S from 0 V); the others start ROUGH_MARGIN_V below
    the rough breakaway and ramp at FINE_V_S, so the arm departs soon after it breaks away: the lag of seeing it move
    costs little voltage."""

    name, trials, rest_s = "dead_zone", 8, 1.0
    ROUGH_V_S, FINE_V_S, ROUGH_MARGIN_V, DEPARTURE_COUNTS = 0.1, 0.02, 0.15, 3.0
    DEPARTURE_S, DEPARTURE_RAD_S = 0.2, 0.05  # and moving off at this speed: a creep under the cable's pull is not it

    def start(self, position) -> None:
        if self.trial < 2:
            self._from, self._rate = 0.0, self.ROUGH_V_S
        else:
            self._from, self._rate = max(0.0, self.rough[self.side] - self.ROUGH_MARGIN_V), self.FINE_V_S
        self._start = float(np.mean(np.array(self._history[-self.ticks(self.rest_s):])[:, 0]))
        self._volts = 0.0
        self.goto("ramp")

    def reset(self) -> None:
        if self.trial < 0:
            self.rough: dict[int, float] = {}
        super().reset()

    def act(self, position, velocity) -> float:
        if self.phase == "release":
            self.finished = self.in_phase >= self.ticks(0.3)
            return 0.0
        recent = np.array(self._history[-self.ticks(self.DEPARTURE_S):])[:, 0]
        departed = self.side * (float(np.mean(recent[-3:])) - self._start) >= self.DEPARTURE_COUNTS * self.count_rad[0]
        if departed and self.side * window_speed(recent, self.period) >= self.DEPARTURE_RAD_S:
            self.rough.setdefault(self.side, self._volts)
            self.goto("release")
            return 0.0
        self._volts = self._from + self._rate * (self.in_phase + 1) * self.period
        if self._volts > MAX_VOLTS:
            return self.fail(f"the arm did not move on the {'+-'[self.side < 0]} side up to {MAX_VOLTS:g} V")
        return self.side * self._volts


class ProcedureTask:
    """What an episode is to a procedure: a trial. Observations [angles, velocities]; no reward; the trial ends when
    its controller says so; between trials the motor holds 0 V (the controller centres the arm where it must)."""

    def __init__(self, spec: RobotSpec, controller: Controller):
        base = make_task(spec)
        self.sensors, self.joints = base.sensors, base.joints
        self.controller = controller
        self.max_episode_steps = round(controller.trial_s / spec.period_s)
        self._zero = np.zeros(len(spec.actuators))

    def observe(self, state: JointState) -> np.ndarray:
        return np.array([*state.position, *state.velocity], dtype=np.float64)

    def reward(self, state: JointState) -> float:
        return 0.0

    def terminated(self, state: JointState) -> bool:
        return self.controller.finished

    def reset_command(self, state: JointState) -> np.ndarray:
        return self._zero

    def ready(self, state: JointState) -> bool:
        return max(map(abs, state.velocity)) < 0.2


# ---- the analyses: trials in, (encoder updates, checks, spread, measured) out ---------------------------------------

@dataclasses.dataclass
class Outcome:
    encoders: dict[str, EncoderCalibration]  # the encoders this step changed
    checks: list[str]
    spread: dict[str, float]
    measured: dict
    stop: str | None = None  # set: saved, and then the run stops and says this


def swing_centre(counts: np.ndarray) -> tuple[float, float]:
    """The centre of a decaying free swing, by fitting it as a damped oscillation about a centre c, sampled evenly:
    x[k+1] - c = a1 (x[k] - c) + a2 (x[k-1] - c), linear least squares in (a1, a2, b = c (1 - a1 - a2)). A mean over
    whole periods would be biased by the decay within them; this is not, however fast the swing dies out. (Encoder
    noise biases a1 and a2, so they are no measure of the period or the damping; the centre it leaves alone.)
    Returns (the centre, the swing's amplitude about it), in counts."""
    x = np.asarray(counts, dtype=np.float64)
    design = np.stack([x[1:-1], x[:-2], np.ones(len(x) - 2)], axis=1)
    (a1, a2, b), *_ = np.linalg.lstsq(design, x[2:], rcond=None)
    centre = float(b / (1.0 - a1 - a2))
    return centre, float(np.max(np.abs(x - centre)))


def analyse_zero(trials: list[Trial], calibration: RobotCalibration, spec: RobotSpec) -> Outcome:
    sensor = spec.sensors[1]  # the pendulum's encoder
    encoders = calibration.for_sensors([s.name for s in spec.sensors])
    rest_ticks = round(ZeroController.rest_s / spec.period_s)
    centres, amplitudes, drifts = [], [], []
    for n, trial in enumerate(trials, 1):
        counts = np.array([encoders.raw_counts(p)[1] for p in trial.position])
        rest = counts[trial.ticks("settle")][-rest_ticks:]
        drifts.append(abs(window_speed(rest, spec.period_s)) * ZeroController.rest_s)
        centre, amplitude = swing_centre(counts[trial.ticks("swing")])
        if amplitude < 5:
            raise ProcedureError(f"zero, trial {n}: no free swing to centre on (amplitude {amplitude:.1f} counts; 5 "
                                 "are needed)")
        centres.append(centre)
        amplitudes.append(amplitude)
    spread = max(centres) - min(centres)
    if spread > 2.0:
        raise ProcedureError(f"zero: the pendulum's down position did not repeat: "
                             f"{', '.join(f'{c:.1f}' for c in centres)} counts, a spread of {spread:.1f} (2 at most)")
    down = float(np.mean(centres))
    offset = round(down + sensor.counts_per_rev / 2) % sensor.counts_per_rev  # down is half a turn from upright
    old = calibration.encoders[sensor.name]
    return Outcome(
        encoders={sensor.name: old.model_copy(update={"offset_counts": offset})},
        checks=[f"hung still before each swing: drift at most {max(drifts):.2f} counts over "
                f"{ZeroController.rest_s:g} s (under 1)",
                f"down repeated within {spread:.2f} counts over {len(trials)} swings (2 at most)"],
        spread={"down_counts": spread},
        measured={"down_counts": down, "swing_centres_counts": centres, "swing_amplitudes_counts": amplitudes,
                  "offset_counts": offset, "previous_offset_counts": old.offset_counts})


def response_signs(counts: np.ndarray, period_s: float) -> tuple[tuple[int, int], tuple[float, float]]:
    """A pulse response's signs and sizes, from counts [ticks, (arm, pendulum)] starting at the pulse: the arm's
    displacement 0.2 s in, and the pendulum's largest excursion in its first 0.3 s."""
    moved = counts - counts[0]
    arm = float(moved[min(len(moved) - 1, round(0.2 / period_s)), 0])
    early = moved[: round(0.3 / period_s) + 1, 1]
    pendulum = float(early[np.argmax(np.abs(early))])
    return (int(np.sign(arm)), int(np.sign(pendulum))), (abs(arm), abs(pendulum))


def analyse_direction(trials: list[Trial], calibration: RobotCalibration, spec: RobotSpec,
                      expected: tuple[int, int]) -> Outcome:
    """expected: the model's response signs to a positive pulse (sim.furuta.pulse_response through response_signs)."""
    names = [s.name for s in spec.sensors]
    verdicts, sizes = [], []
    for n, trial in enumerate(trials, 1):
        start = trial.ticks("pulse")[0]
        signs, size = response_signs(trial.position[start:] / count_rad(spec), spec.period_s)
        if min(size) < 5:
            raise ProcedureError(f"direction, trial {n}: the response was too small to judge (arm {size[0]:.0f}, "
                                 f"pendulum {size[1]:.0f} counts; 5 are needed): is the motor powered?")
        pulse = 1 if trial.command[start] > 0 else -1
        verdicts.append(tuple(sign == pulse * e for sign, e in zip(signs, expected)))
        sizes.append(size)
    if len(set(verdicts)) > 1:
        raise ProcedureError(f"direction: the two pulses disagree ({verdicts}): the response is not consistent "
                             "(a collision, backlash, or the robot was moving)")
    agree = verdicts[0]
    old = {name: calibration.encoders[name] for name in names}
    flipped = {name: old[name].model_copy(update={"direction": -old[name].direction})
               for name, ok in zip(names, agree) if not ok}
    measured = {"agree": dict(zip(names, agree)), "confirmed": all(agree),
                "directions": {name: (flipped.get(name) or old[name]).direction for name in names},
                "response_counts": [list(s) for s in sizes], "model_signs": list(expected)}
    stop = None
    if flipped:
        stop = (f"direction mismatch on {', '.join(flipped)}: it reads the model's positive way reversed. The "
                f"calibration now says direction {', '.join(str(e.direction) for e in flipped.values())}; run "
                "`robot-app calibrate --step direction` again to confirm it before the other steps. Reversed on "
                "both is what a reversed motor looks like.")
    return Outcome(encoders=flipped,
                   checks=[] if flipped else ["the arm moved the model's positive way on a +1 V pulse",
                                              "the pendulum answered with the model's sign",
                                              "a -1 V pulse mirrored it"],
                   spread={"response_counts": float(np.ptp(np.array(sizes), axis=0).max())},
                   measured=measured, stop=stop)


def analyse_travel(trials: list[Trial], calibration: RobotCalibration, spec: RobotSpec) -> Outcome:
    arm, sensor = spec.joint("arm"), spec.sensors[0]
    encoders = calibration.for_sensors([s.name for s in spec.sensors])
    stall_ticks = round(TravelController.STALL_S / spec.period_s)
    stops: dict[int, list[float]] = {1: [], -1: []}
    speeds = []
    for n, trial in enumerate(trials, 1):
        approach = trial.ticks("approach")
        side = 1 if np.sum(trial.command[approach]) > 0 else -1
        held = trial.interventions_during(approach)
        if held:
            raise ProcedureError(f"travel, trial {n}: the supervisor intervened ({', '.join(held)}) on the "
                                 f"{'+-'[side < 0]} side: no stop within the search bound")
        stops[side].append(float(np.mean(trial.position[approach[-stall_ticks:], 0])))
        window = round(0.1 / spec.period_s)  # speed fitted over 0.1 s windows: the filtered velocity is noisy
        speeds.append(max(side * window_speed(trial.position[i:i + window, 0], spec.period_s)
                          for i in range(approach[0], approach[-1] - window + 2)))
    low, high = np.mean(stops[-1]), np.mean(stops[1])
    centre_counts = float(encoders.raw_counts((0.5 * (low + high), 0.0))[0])
    old = calibration.encoders[sensor.name]
    new = old.model_copy(update={"offset_counts": round(centre_counts)})
    shift = (new.offset_counts - old.offset_counts) * old.direction * old.scale  # old angle - new angle
    measured_stops = [float(low - shift), float(high - shift)]
    margins = (arm.position_limit[0] - arm.hard_stop[0], arm.hard_stop[1] - arm.position_limit[1])
    proposed = [measured_stops[0] + margins[0], measured_stops[1] - margins[1]]
    spread = max(np.ptp(stops[1]), np.ptp(stops[-1]))
    notes = [f"the spec's software limit on the {side} side ({limit:g} rad) lies past the proposed one "
             f"({mine:.3f} rad): narrow it before learning" for side, limit, mine, beyond in (
                 ("-", arm.position_limit[0], proposed[0], arm.position_limit[0] < proposed[0]),
                 ("+", arm.position_limit[1], proposed[1], arm.position_limit[1] > proposed[1])) if beyond]
    return Outcome(
        encoders={sensor.name: new},
        checks=[f"stalled against a stop on both sides at {MAX_VOLTS:g} V",
                f"approached at most {max(speeds):.2f} rad/s (the spec allows {arm.max_hard_stop_speed:g} at a stop)",
                f"the stops repeated within {spread:.4f} rad"],
        spread={"stops_rad": float(spread)},
        measured={"stops_rad": measured_stops, "proposed_limits_rad": proposed,
                  "spec_hard_stop_rad": list(arm.hard_stop), "spec_position_limit_rad": list(arm.position_limit),
                  "stops_minus_spec_rad": [measured_stops[0] - arm.hard_stop[0], measured_stops[1] - arm.hard_stop[1]],
                  "max_approach_rad_s": max(speeds), "arm_offset_counts": new.offset_counts,
                  "previous_arm_offset_counts": old.offset_counts, "notes": notes})


def analyse_dead_zone(trials: list[Trial], calibration: RobotCalibration, spec: RobotSpec) -> Outcome:
    breakaway: dict[str, list[float]] = {"positive": [], "negative": []}
    rough: dict[str, float] = {}
    rest: dict[str, list[float]] = {"positive": [], "negative": []}  # rad: where each fine ramp began
    for n, trial in enumerate(trials, 1):
        ramp = trial.ticks("ramp")
        held = trial.interventions_during(ramp)
        if held:
            raise ProcedureError(f"dead_zone, trial {n}: the supervisor intervened ({', '.join(held)})")
        volts = trial.command[ramp]  # the ramp's last tick is where it saw the arm depart, and sent 0 V
        if not np.any(volts):
            raise ProcedureError(f"dead_zone, trial {n}: the arm departed before the ramp began: it was not at rest")
        side = "positive" if volts.sum() > 0 else "negative"
        if n <= 2:
            rough[side] = float(np.abs(volts).max())
        else:
            breakaway[side].append(float(np.abs(volts).max()))
            rest[side].append(float(trial.position[ramp[0], 0]))
    stats = {side: {"mean_v": float(np.mean(v)), "sd_v": float(np.std(v, ddof=1)), "trials_v": v,
                    "rough_v": rough[side], "from_rad": rest[side]} for side, v in breakaway.items()}
    fine = DeadZoneController
    return Outcome(
        encoders={},
        checks=[f"the arm broke away under {MAX_VOLTS:g} V in all {len(trials)} ramps",
                f"{len(breakaway['positive'])} ramps each way at {fine.FINE_V_S:g} V/s from {fine.ROUGH_MARGIN_V:g} V "
                f"below a rough one at {fine.ROUGH_V_S:g} V/s; breakaway is where the arm had departed "
                f"{fine.DEPARTURE_COUNTS:g} counts"],
        spread={f"breakaway_{side}_sd_v": s["sd_v"] for side, s in stats.items()},
        measured={"breakaway_v": stats})


# ---- running a step --------------------------------------------------------------------------------------------------

CONTROLLERS = {c.name: c for c in (ZeroController, DirectionController, TravelController, DeadZoneController)}


def direction_confirmed(calibration: RobotCalibration, names: list[str]) -> bool:
    record = calibration.steps.get("direction")
    return bool(record and record.measured.get("confirmed") and all(
        record.measured["directions"].get(name) == calibration.encoders[name].direction for name in names))


def preconditions(step: str, calibration: RobotCalibration, spec: RobotSpec) -> list[str]:
    """Why `step` may not start on this calibration; empty when it may."""
    if step not in CONTROLLERS:
        return [f"unknown step {step!r}; the steps are {', '.join(STEPS)}"]
    problems = []
    if calibration.robot != spec.name:
        problems.append(f"the calibration is robot {calibration.robot!r}'s, not {spec.name!r}'s")
    if step in ("travel", "dead_zone") and not direction_confirmed(calibration, [s.name for s in spec.sensors]):
        problems.append(f"{step} drives the arm far or for long, so it needs the encoder directions confirmed on this "
                        "unit first: run `robot-app calibrate --step direction` (until it passes)")
    return problems


def search_spec(spec: RobotSpec) -> RobotSpec:
    """The spec the travel search runs under: the arm's software limit SEARCH_MARGIN_RAD past its spec's hard stops."""
    data = spec.model_dump()
    for joint in data["joints"]:
        if joint["name"] == "arm":
            low, high = joint["hard_stop"]
            joint["position_limit"] = [low - SEARCH_MARGIN_RAD, high + SEARCH_MARGIN_RAD]
            joint["hard_stop"] = [low - 2 * SEARCH_MARGIN_RAD, high + 2 * SEARCH_MARGIN_RAD]
    return RobotSpec.model_validate(data)


def drive(controller: Controller, robot: RobotIO, spec: RobotSpec, calibration: RobotCalibration,
          sink: TransitionSink) -> Agent:
    """Run a controller's trials on the robot through an agent, each command through its supervisor, recording into
    `sink`; the agent, once it has stopped. ProcedureError if it stopped before the trials were done, or on a fault."""
    agent = Agent(robot, spec, calibration, controller, sink, status_every_s=1e9, reset_timeout_s=5.0,
                  task=ProcedureTask(spec, controller))
    summary = agent.run(episodes=controller.trials)
    if summary.stop_reason != f"{controller.trials} episodes done" or summary.faults:
        raise ProcedureError(f"{controller.name} stopped early ({summary.stop_reason}; faults "
                             f"{summary.faults or 'none'}); nothing was written")
    return agent


def run_step(step: str, robot: RobotIO, spec: RobotSpec, calibration: RobotCalibration,
             expected_response: tuple[int, int] | None = None) -> tuple[RobotCalibration, Outcome]:
    """Run one step on the robot through an agent; the calibration it produces, with the step's record, and what it
    measured. ProcedureError when it may not start or its checks fail; on a direction mismatch, after the update."""
    problems = preconditions(step, calibration, spec)
    if step == "direction" and expected_response is None:
        problems.append("the direction check needs the model's response to compare with (sim.furuta.pulse_response)")
    if problems:
        raise ProcedureError(f"{step} cannot start: " + "; ".join(problems))
    controller = CONTROLLERS[step](spec, centre_first=step == "dead_zone")
    recorder = TransitionRecorder()
    agent = drive(controller, robot, search_spec(spec) if step == "travel" else spec, calibration, recorder)
    trials = [Trial(phase=controller.phases[e], position=np.array([t.obs[:2] for t in rows], dtype=np.float64),
                    velocity=np.array([t.obs[2:4] for t in rows], dtype=np.float64),
                    command=np.array([float(t.action[0]) for t in rows]),
                    interventions=[t.interventions for t in rows], failure=controller.failures[e])
              for e in range(controller.trials) for rows in [[t for t in recorder.rows if t.episode == e]]]
    for n, trial in enumerate(trials, 1):
        if trial.failure:
            raise ProcedureError(f"{step}, trial {n}: {trial.failure}")
    analyse = {"zero": analyse_zero, "travel": analyse_travel, "dead_zone": analyse_dead_zone}.get(step)
    outcome = (analyse(trials, calibration, spec) if analyse else
               analyse_direction(trials, calibration, spec, expected_response))
    record = StepRecord(date=utc_now(),
                        robot_id=agent.device.robot_id, firmware=agent.device.firmware, checks=outcome.checks,
                        spread=outcome.spread, measured=outcome.measured)
    updated = calibration.model_copy(update={"robot_id": agent.device.robot_id,
                                             "encoders": calibration.encoders | outcome.encoders,
                                             "steps": calibration.steps | {step: record}})
    return updated, outcome
