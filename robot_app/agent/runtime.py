"""The agent's control loop: read, calibrate, observe, act, supervise, command and record, once per deadline.

Against a realtime device the loop is deadline-scheduled at the spec's control rate. Against a lockstep device (the
virtual robot in training mode) each command advances the device one period, so the loop runs as fast as it answers.
Between episodes a reset phase brings the robot back to rest; policy swaps and fault clears happen only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from calibration.encoders import RobotCalibration
from robot_app.agent.policy_runner import Policy, PolicyKind
from robot_app.agent.supervisor import SafetySupervisor
from robot_app.agent.transition_log import Transition, TransitionLog, TransitionLogError, TransitionSink
from robot_app.common.health import Heartbeat
from robot_app.common.logs import first_and_doubling, format_counts
from robot_app.common.reports import AgentSummary
from robot_app.common.schedule import DeadlineSchedule, LatencyWindow, tighten_timer_slack
from robot_app.hardware.protocol import Hello, SensorStatus
from robot_app.hardware.robot_io import HandshakeError, LinkLost, RobotIO, SensorReading
from robot_app.robot.spec import RobotSpec
from robot_app.robot.task import JointState, SensorPipeline, make_task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _OpenStep:
    """An action sent whose outcome (reward, next observation) the next tick will see."""

    obs: np.ndarray
    action: np.ndarray
    policy_action: np.ndarray
    step: int
    interventions: tuple[str, ...]
    obs_time_ns: int
    command_time_ns: int
    device_time_us: int
    sample_seed: int
    plan_fallback: bool


class Agent:
    """One robot's control loop. The transition log is the caller's: the agent appends to it and never closes it."""

    def __init__(self, robot: RobotIO, spec: RobotSpec, calibration: RobotCalibration, policy: Policy,
                 transitions: TransitionSink | None = None, status_every_s: float = 5.0, reset_timeout_s: float = 3.0,
                 expected_robot_id: str | None = None, lockstep_pace_hz: float | None = None,
                 outbox_limit: int | None = None, tick_error_limit: int = 50,
                 credit: Callable[[], int | None] | None = None, task=None, heartbeat: str | Path | None = None):
        """credit: lockstep pacing by a learner, () -> the last seq it lets this robot record (None until it says);
        an episode starts only while some credit is left. A realtime robot never waits for it. task: what an episode
        is (observation, reward, end, reset), the spec's task by default; a calibration procedure brings its own.
        heartbeat: a file touched on connecting and at every status line, for a healthcheck."""
        if calibration.robot != spec.name:
            raise ValueError(f"the calibration is robot {calibration.robot!r}'s; this agent drives {spec.name!r}")
        if (outbox_limit is not None or credit is not None) and not isinstance(transitions, TransitionLog):
            raise ValueError("an outbox limit and a learner's credit need the durable TransitionLog to count in")
        self.robot, self.spec, self.policy, self.transitions = robot, spec, policy, transitions
        self.expected_robot_id = expected_robot_id
        self.calibrated_unit = calibration.robot_id
        self.outbox_limit = outbox_limit  # rows held undelivered; past it no new episode starts until the learner drains it
        self._outbox_full = False
        # A lockstep device steps as fast as it is asked; a pace keeps a learner on the same CPU from starving.
        self._pace = DeadlineSchedule(1.0 / lockstep_pace_hz) if lockstep_pace_hz else None
        self.credit = credit
        self.credit_waits = 0  # episodes that waited for the learner's credit to start
        self._waiting_for_credit = False
        self._idle = DeadlineSchedule(spec.period_s, spin_s=0.0)  # lockstep, held at rest: ticks at the control rate
        self.task = task if task is not None else make_task(spec)
        self.pipeline = SensorPipeline(calibration.for_sensors(list(self.task.sensors)), spec.velocity_cutoff_rad_s)
        self.supervisor = SafetySupervisor(spec, list(self.task.joints), spec.period_s)
        self.status_every_s = status_every_s
        self.heartbeat = Heartbeat(heartbeat)
        self.reset_ticks = math.ceil(reset_timeout_s / spec.period_s)
        self.schedule: DeadlineSchedule | None = None
        self.robot_id = ""
        self.device: Hello | None = None  # the device's last HELLO
        self.episode = 0
        self.episodes_done = 0
        self.transitions_recorded = 0
        self.link_losses = 0
        self.policy_latency = LatencyWindow()
        self.plan_fallbacks = 0  # ticks a planning policy ran out of time on, and sent pi's action
        self.late_responses = 0  # lockstep: commands sent more than a control period after their sensor frame
        self.tick_errors = 0
        self.tick_error_limit = tick_error_limit
        self.failure: str | None = None  # why the agent stopped itself, if it did
        self._tick_errors_unrecovered = self._good_ticks = 0
        self._session_ns = 0  # host time the device's session opened
        self._clock: tuple[float, float] | None = None  # (device s, host s) of the last frame the state took
        self._hello_backoff_s, self._next_hello_ns = 0.05, 0
        self._ticks_since_gc = 0
        self._stop_reason: str | None = None
        self._estop_request: str | None = None
        self._estop_reset = False
        self._estop_released_ns = 0
        self._next_policy: Policy | None = None
        # The loop's cursor: phase ('reset' between episodes, 'run' in one), the action awaiting its outcome, the state.
        self._phase, self._phase_ticks, self._step = "reset", 0, 0
        self._open: _OpenStep | None = None
        self._state: JointState | None = None
        self._state_obs: np.ndarray | None = None
        self._last_seq: int | None = None

    # ---- requests from other threads and signal handlers: flags the loop applies at its next tick ----------------

    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason

    def request_estop(self, reason: str) -> None:
        self._estop_request = reason

    def request_estop_reset(self) -> None:
        self._estop_reset = True

    def request_policy(self, policy: Policy) -> None:
        """Swap to `policy` at the next episode boundary (it must already be loaded and checked)."""
        self._next_policy = policy

    # ---- the loop -------------------------------------------------------------------------------------------------

    def run(self, episodes: int | None = None, duration_s: float | None = None) -> AgentSummary:
        tighten_timer_slack()
        started, cpu_started = time.monotonic(), time.process_time()
        with _collector_between_ticks():
            self._connect()
            deadline = None if duration_s is None else started + duration_s
            next_status = started + self.status_every_s
            try:
                while self._stop_reason is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        self.request_stop("duration reached")
                        break
                    try:
                        try:
                            self._tick(episodes)
                            self._tick_succeeded()
                        except LinkLost as error:
                            log.error("link lost: %s", error)
                            self.link_losses += 1
                            self._abandon_episode("link_lost", episodes)
                            self._reconnect(deadline)
                    except TransitionLogError:
                        raise  # nothing more could be recorded: stop (safely, below)
                    except Exception as error:  # a bug or an input nothing else caught: never a silent end
                        self._tick_failed(error, episodes)
                    if self._gc_due():
                        gc.collect(1)
                    if time.monotonic() >= next_status:
                        next_status += self.status_every_s
                        log.info("%s", self.status_line(self._phase))
                        self.heartbeat.beat()
            finally:
                self._shutdown()
        summary = self.summary(time.monotonic() - started, time.process_time() - cpu_started)
        log.info("stopped (%s): %s", self._stop_reason, self.status_line("stopped"))
        return summary

    def _gc_due(self) -> bool:
        self._ticks_since_gc += 1
        if self._ticks_since_gc < 100:
            return False
        self._ticks_since_gc = 0
        return True

    def _tick(self, episodes: int | None) -> None:
        """One control period: read, close the last transition, maybe end or start an episode, command, record."""
        reading = self._read()
        now = time.monotonic_ns()
        self._apply_requests()
        if reading is not None and reading.seq != self._last_seq:
            self._state = self._update_state(reading)
            self._state_obs = None  # observed when first needed: the next action's obs is the last one's next_obs
            self._last_seq = reading.seq
            if reading.frame.status & SensorStatus.WATCHDOG_TRIPPED:  # the device cut the motor: ramp from 0 V too
                self.supervisor.motor_was_off()
        self._reopen_lost_session(reading, now, episodes)
        state = self._state
        age = math.inf if reading is None else (now - reading.received_ns) / 1e9

        if self._phase == "run" and self._open is not None:
            ended = self._close_open_step()
            if ended or not self.supervisor.safe_to_run:
                self._end_episode(episodes)
        if self._phase == "reset":
            self._phase_ticks += 1
            if self._stop_reason is None and self._ready_to_start(state, age):
                self._phase, self._step = "run", 0
                if self._next_policy is not None:
                    self.policy, self._next_policy = self._next_policy, None
                    log.info("policy swapped to %s at the start of episode %d", self.policy.version, self.episode)
        if self._phase == "run" and state is not None:
            obs = self._observation()
            started = time.perf_counter_ns()
            try:
                if self._step == 0:
                    self.policy.reset()  # a new episode
                policy_action = np.asarray(self.policy(obs), dtype=np.float64)
                sample_seed, fell_back = self.policy.sample_seed, self.policy.fell_back
            except Exception as error:  # a broken policy is a fault, never a crash with the motor on
                log.error("policy raised: %s", error)
                policy_action, sample_seed, fell_back = np.full(len(self.spec.actuators), np.nan), -1, False
            self.plan_fallbacks += fell_back
            self.policy_latency.add(time.perf_counter_ns() - started)
            verdict = self.supervisor.check(policy_action, state, age)
            self.robot.send_command(verdict.command, verdict.enable)
            sent_ns = time.monotonic_ns()
            if self.schedule is None and sent_ns - reading.received_ns > self.spec.period_s * 1e9:
                self.late_responses += 1  # on a real robot at this rate, a missed deadline
            self._open = _OpenStep(obs, verdict.command, policy_action, self._step, verdict.reasons,
                                   reading.received_ns, sent_ns, reading.frame.device_time_us, sample_seed, fell_back)
            self._step += 1
        else:
            target = self.task.reset_command(state) if state is not None else self.supervisor.safe
            verdict = self.supervisor.check(target, state, age)
            self.robot.send_command(verdict.command, verdict.enable)

    def _connect(self) -> None:
        self._check_device(self.robot.connect())
        self.heartbeat.beat()

    def _check_device(self, device) -> None:
        """Refuse a device that is not the robot the spec describes; then start from a fresh state."""
        problem = None
        if (device.n_encoders, device.n_motors) != (len(self.spec.sensors), len(self.spec.actuators)):
            problem = (f"device {device.robot_id} has {device.n_encoders} encoders and {device.n_motors} motors; robot "
                       f"{self.spec.name} has {len(self.spec.sensors)} and {len(self.spec.actuators)}")
        elif self.expected_robot_id is not None and device.robot_id != self.expected_robot_id:
            problem = (f"the device on {self.robot.port} is {device.robot_id!r}, not {self.expected_robot_id!r} (the "
                       "agent's --robot-id; a virtual robot reports what its own --robot-id says)")
        elif self.calibrated_unit is not None and device.robot_id != self.calibrated_unit:
            problem = (f"the calibration was measured on {self.calibrated_unit!r}, and the device on {self.robot.port} "
                       f"is {device.robot_id!r}: calibrate this unit (robot-app calibrate) or pass its own calibration")
        elif not self.robot.lockstep and not math.isclose(device.rate_hz, self.spec.control_rate_hz, rel_tol=1e-6):
            problem = (f"device {device.robot_id} streams at {device.rate_hz:g} Hz, the agent runs at "
                       f"{self.spec.control_rate_hz:g} Hz")
        if problem:
            self.robot.close()
            raise HandshakeError(problem)
        self.device = device
        self.pipeline.reset()
        self._state, self._state_obs, self._last_seq, self._clock = None, None, None, None
        self._session_ns = time.monotonic_ns()
        if device.robot_id != self.robot_id:
            self.robot_id = device.robot_id
            self.episode = self.transitions.next_episode(self.robot_id) if self.transitions else 0
        if self.robot.lockstep:
            self.schedule = None
        elif self.schedule is None:
            self.schedule = DeadlineSchedule(self.spec.period_s)

    def _reconnect(self, deadline: float | None) -> None:
        delay = 0.1
        while self._stop_reason is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(delay)
            try:
                self._connect()
                log.info("reconnected to %s", self.robot_id)
                return
            except (LinkLost, HandshakeError) as error:
                log.warning("reconnect failed (%s); next try in %.1f s", error, min(2 * delay, 2.0))
                delay = min(2 * delay, 2.0)

    def _reopen_lost_session(self, reading: SensorReading | None, now: int, episodes: int | None) -> None:
        """A device that rebooted has no session: it says so (FAULT NO_SESSION) or goes silent. Either way the supervisor
        has the motor off, and the agent sends HELLO again, with backoff, until a session opens (the port stays open)."""
        heard_ns = max(reading.received_ns if reading is not None else 0, self._session_ns)
        silent = now - heard_ns > self.spec.watchdog_timeout_s * 1e9
        if not (self.robot.session_lost or silent) or now < self._next_hello_ns:
            return
        self._abandon_episode("session_lost", episodes)
        verdict = self.supervisor.motor_off(["session_lost"])  # before the handshake's wait, not after it
        self.robot.send_command(verdict.command, verdict.enable)
        try:
            self._check_device(self.robot.handshake(timeout_s=0.25))
        except HandshakeError as error:
            self._next_hello_ns = time.monotonic_ns() + round(self._hello_backoff_s * 1e9)
            self.robot.counters["failed_hellos"] += 1
            if first_and_doubling(self.robot.counters["failed_hellos"]):
                log.warning("device session lost; no answer to HELLO (%s); next try in %.2f s", error,
                            self._hello_backoff_s)
            self._hello_backoff_s = min(2 * self._hello_backoff_s, 2.0)
            return
        self._hello_backoff_s, self._next_hello_ns = 0.05, 0
        self.robot.counters["session_restarts"] += 1
        log.warning("device session lost and opened again (%d times so far)", self.robot.counters["session_restarts"])

    def _update_state(self, reading: SensorReading):
        """The state at this frame. Its device time is used for the derivative only where consistent with the host's
        receive clock: forward, and (realtime) advancing as the host's clock did, within the watchdog timeout. A
        backwards or implausible jump is a fault, latched and counted; the state then follows the counts anyway, on
        the nominal period, so nothing freezes."""
        device_s, host_s = reading.frame.device_time_us * 1e-6, reading.received_ns * 1e-9
        if self._clock is not None and not device_time_is_consistent(
                device_s - self._clock[0], host_s - self._clock[1], self.spec.watchdog_timeout_s, self.robot.lockstep):
            self.robot.counters["device_clock_jumps"] += 1
            if first_and_doubling(self.robot.counters["device_clock_jumps"]):
                log.warning("device time jumped by %.6f s while %.6f s passed here (%d times so far): safe stop",
                            device_s - self._clock[0], host_s - self._clock[1],
                            self.robot.counters["device_clock_jumps"])
            self.supervisor.latch_fault("device_clock")
            self.pipeline.rebase(device_s - self.spec.period_s)
        self._clock = (device_s, host_s)
        return self.pipeline.update(reading.frame.counts, device_s)

    def _read(self) -> SensorReading | None:
        if self.schedule is not None:
            self.schedule.wait()
            self.robot.poll()
            return self.robot.latest
        # Lockstep: the device answers each command with one frame; a missing answer goes stale like a silent link.
        if self._pace is not None:
            self._pace.wait()
        elif self._waiting_for_credit:
            self._idle.wait()
        return self.robot.wait_sensor(self._last_seq, self.spec.watchdog_timeout_s) or self.robot.latest

    def _apply_requests(self) -> None:
        if self.robot.device_estop is not None:
            self.supervisor.engage_estop(f"device e-stop {self.robot.device_estop.reason}".strip())
            self.robot.device_estop = None
        latest = self.robot.latest
        if (latest is not None and latest.frame.status & SensorStatus.ESTOP_LATCHED
                and self.supervisor.estop_reason is None
                and latest.received_ns > self._estop_released_ns + self.spec.watchdog_timeout_s * 1e9):
            # The ESTOP frame itself was lost on the line, but the device's status bit says it is latched.
            self.supervisor.engage_estop("device e-stop (from its status bit)")
        if self._estop_request is not None:
            self.supervisor.engage_estop(self._estop_request)
            self.robot.send_estop(True, self._estop_request)
            self._estop_request = None
        if self._estop_reset:
            self._estop_reset = False
            self.supervisor.reset_estop()
            self.robot.send_estop(False, "reset")
            self._estop_released_ns = time.monotonic_ns()

    def _ready_to_start(self, state: JointState | None, age: float) -> bool:
        if state is None or self.supervisor.estop_reason is not None or age > self.spec.watchdog_timeout_s:
            return False
        if self._outbox_is_full() or self._lacks_credit():
            return False
        settled = self.task.ready(state) or self._phase_ticks >= self.reset_ticks
        if settled and self.supervisor.fault is not None:
            self.supervisor.clear_fault()
            return False  # one more reset tick under the cleared supervisor
        return settled

    def _outbox_is_full(self) -> bool:
        """Nothing recorded may be lost, so a full outbox pauses learning: the robot waits at rest between episodes."""
        if self.transitions is None or self.outbox_limit is None:
            return False
        full = self.transitions.held() >= self.outbox_limit
        if full != self._outbox_full:
            (log.warning if full else log.info)("outbox %s (limit %d rows)", "full: holding at rest until the learner "
                                                "drains it" if full else "drained: episodes resume", self.outbox_limit)
            self._outbox_full = full
        return full

    def _lacks_credit(self) -> bool:
        """Lockstep: an episode starts only while the learner's credit lasts, so the robot runs ahead of a slow learner
        by at most the credit and one episode, however busy the machine."""
        if self.credit is None or self.transitions is None or not self.robot.lockstep:
            return False
        through = self.credit()
        lacks = through is None or self.transitions.appended_through >= through
        if lacks and not self._waiting_for_credit:
            self.credit_waits += 1
            if first_and_doubling(self.credit_waits):
                log.info("waiting for the learner's credit: it covers seqs through %s, %d are recorded (%d waits so "
                         "far)", through, self.transitions.appended_through, self.credit_waits)
        self._waiting_for_credit = lacks
        return lacks

    def _end_episode(self, episodes: int | None) -> None:
        self._phase, self._phase_ticks = "reset", 0
        self.episode += 1
        self.episodes_done += 1
        if episodes is not None and self.episodes_done >= episodes:
            self.request_stop(f"{episodes} episodes done")

    def _abandon_episode(self, fault: str, episodes: int | None) -> None:
        """A fault mid-episode: latch it, record the open step as truncated, and end the episode."""
        self.supervisor.latch_fault(fault)
        if self._phase == "run":
            try:
                self._close_open_step()
            finally:
                self._open = None
                self._end_episode(episodes)
        self._phase_ticks = 0

    def _tick_succeeded(self) -> None:
        """An episode's length of good ticks in a row: whatever failed before has passed."""
        self._good_ticks += 1
        if self._good_ticks >= self.task.max_episode_steps:
            self._tick_errors_unrecovered = 0

    def _tick_failed(self, error: Exception, episodes: int | None) -> None:
        """An exception inside a tick: the motor off at once, the episode ended, the fault latched and reported; the
        loop goes on in the reset phase. After tick_error_limit failures with never an episode's length of good ticks
        between them, the agent stops, saying why: the error is not passing."""
        self.tick_errors += 1
        self._tick_errors_unrecovered += 1
        self._good_ticks = 0
        if first_and_doubling(self.tick_errors):
            log.error("a tick failed (%d so far): %s: %s", self.tick_errors, type(error).__name__, error,
                      exc_info=error)
        try:
            verdict = self.supervisor.motor_off(["tick_error"])
            self.robot.send_command(verdict.command, verdict.enable)
        except LinkLost:
            pass  # the next tick finds the link lost and reconnects
        try:
            self._abandon_episode("tick_error", episodes)
        except TransitionLogError:
            raise
        except Exception as record_error:  # the open step itself is what fails: it is dropped, and said so
            log.error("the open transition could not be recorded: %s", record_error)
        if self._tick_errors_unrecovered >= self.tick_error_limit:
            self.failure = (f"{self._tick_errors_unrecovered} ticks failed, never an episode's length of good ticks "
                            f"between them; the last: {type(error).__name__}: {error}")
            self.request_stop(f"fault: {self.failure}")

    def _close_open_step(self) -> bool:
        """Record the transition the last action started, ending at the current state. True if the episode ended."""
        open_step, state, self._open = self._open, self._state, None
        if open_step is None or state is None:
            return False
        terminated = self.task.terminated(state)
        truncated = not terminated and (
            open_step.step + 1 >= self.task.max_episode_steps or not self.supervisor.safe_to_run
            or self._stop_reason is not None
        )
        received_ns = self.robot.latest.received_ns if self.robot.latest else open_step.command_time_ns
        interventions = open_step.interventions
        if truncated and not self.supervisor.safe_to_run:  # what cut the episode short is on its last transition
            latch = "estop" if self.supervisor.estop_reason is not None else self.supervisor.fault
            interventions = tuple(dict.fromkeys((*interventions, latch)))
        if self.transitions is not None:
            self.transitions.append(Transition(
                robot_id=self.robot_id, episode=self.episode, step=open_step.step, obs=open_step.obs,
                action=open_step.action.astype(np.float32), reward=self.task.reward(state),
                next_obs=self._observation(), terminated=terminated, truncated=truncated,
                policy_action=open_step.policy_action.astype(np.float32), policy_version=self.policy.version,
                interventions=interventions, obs_time_ns=open_step.obs_time_ns,
                command_time_ns=open_step.command_time_ns, next_obs_time_ns=received_ns,
                device_time_us=open_step.device_time_us, sample_seed=open_step.sample_seed,
                plan_fallback=open_step.plan_fallback,
            ))
        self.transitions_recorded += 1
        return terminated or truncated

    def _observation(self) -> np.ndarray:
        if self._state_obs is None:
            self._state_obs = self.task.observe(self._state)
        return self._state_obs

    def _shutdown(self) -> None:
        """Safe stop: send the safe command with the driver off, then record the open transition and let go of the
        port. The command goes first, so that nothing (a transition log that stopped writing) can keep it off the wire.
        The transition log stays open: whoever opened it closes it, once nothing else reads it."""
        try:
            verdict = self.supervisor.release_motor()
            self.robot.send_command(verdict.command, enable=False)
            log.info("safe stop: sent %s with the motor disabled", verdict.command.tolist())
        except LinkLost as error:
            log.error("could not send the safe stop: %s (the firmware watchdog will cut the motor)", error)
        finally:
            try:
                self._close_open_step()
            finally:
                self.robot.close()

    # ---- reporting ------------------------------------------------------------------------------------------------

    def safety_state(self) -> tuple[str, str]:
        """(the e-stop's reason, the latched fault), "" for none: cheap enough to ask every few milliseconds."""
        return self.supervisor.estop_reason or "", self.supervisor.fault or ""

    def report(self) -> dict:
        """The episode, the schedule's jitter p99 and the interventions so far, for the link's status."""
        jitter = self.schedule.jitter.quantiles_us(0.99)[0] if self.schedule is not None else 0.0
        return {"episode": self.episode, "jitter_p99_us": jitter, "interventions": dict(self.supervisor.counts)}

    def status_line(self, phase: str) -> str:
        jitter = ""
        if self.schedule is not None:
            p50, p99 = self.schedule.jitter.quantiles_us(0.5, 0.99)
            jitter = (f" jitter p50={p50:.0f}us p99={p99:.0f}us max={self.schedule.jitter.max_ns / 1e3:.0f}us"
                      f" overruns={self.schedule.overruns}")
        link = self.robot.link_counters
        bad = {k: v for k, v in link.items() if k not in ("frames", "sessions") and v}
        return (f"{self.robot_id} {phase} ep={self.episode} transitions={self.transitions_recorded}{jitter} "
                f"interventions={format_counts(self.supervisor.counts, compact=True)} "
                f"link_frames={link.get('frames', 0)} link_errors={format_counts(bad, compact=True)} "
                f"tick_errors={self.tick_errors} "
                f"{f'plan_fallbacks={self.plan_fallbacks} ' if self.policy.kind == PolicyKind.PLANNING else ''}"
                f"estop={self.supervisor.estop_reason or 'off'} fault={self.supervisor.fault or 'none'}")

    def summary(self, wall_s: float, cpu_s: float) -> AgentSummary:
        out = {
            "robot_id": self.robot_id, "episodes": self.episodes_done, "transitions": self.transitions_recorded,
            "wall_s": wall_s, "cpu_share": cpu_s / wall_s if wall_s > 0 else 0.0,
            "interventions": dict(self.supervisor.counts), "faults": dict(self.supervisor.latches),
            "link": self.robot.link_counters,
            "link_losses": self.link_losses,
            "credit_waits": self.credit_waits,
            "plan_fallbacks": self.plan_fallbacks,
            "tick_errors": self.tick_errors,
            "stop_reason": self._stop_reason,
            "failure": self.failure,
        }
        windows = {"policy": self.policy_latency}
        if self.schedule is not None:
            windows |= {"jitter": self.schedule.jitter, "tick_work": self.schedule.work}
            out |= {"ticks": self.schedule.ticks, "overruns": self.schedule.overruns,
                    "skipped_periods": self.schedule.skipped}
        else:  # lockstep has no deadlines; a response slower than a period would have missed one
            out["overruns"] = self.late_responses
        for name, window in windows.items():
            p50, p99 = window.quantiles_us(0.5, 0.99)
            out |= {f"{name}_p50_us": p50, f"{name}_p99_us": p99, f"{name}_max_us": window.max_ns / 1e3}
        return AgentSummary(**out)


def device_time_is_consistent(device_dt: float, host_dt: float, tolerance_s: float, lockstep: bool) -> bool:
    """Whether a device clock's step between two frames is believable. It must go forward, and by no more than the
    host's own clock did plus the tolerance; a realtime device's clock must also keep up with the host's (a lockstep
    device's time is simulated, and the host may take as long as it likes between steps)."""
    if not 0 < device_dt <= host_dt + tolerance_s:
        return False
    return lockstep or device_dt >= host_dt - tolerance_s


@contextlib.contextmanager
def _collector_between_ticks():
    """The cyclic garbage collector would pause a tick at a random moment, so the loop runs it between ticks
    (`_gc_due`, the young generations only) instead. The full collection comes before the handshake, so the device's
    first frame does not wait behind it. A caller that runs many agents may gc.freeze() its long-lived heap first; that
    collection then skips it."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
