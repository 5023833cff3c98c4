"""The agent against the virtual robot over a real pty (and TCP): both modes, watchdogs, adversarial policies, e-stop,
SIGTERM."""

import contextlib
import csv
import itertools
import json
import math
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from calibration.encoders import load_calibration
from robot_app.agent.loading import load_policy
from robot_app.agent.policy_runner import ConstantPolicy, PolicyKind
from robot_app.agent.runtime import Agent
from robot_app.agent.transition_log import TransitionLog, TransitionRecorder
from robot_app.common.artifact import ArtifactError
from robot_app.episodes import export
from robot_app.hardware.protocol import Fault, FaultCode, MessageType, SensorStatus
from robot_app.hardware.robot_io import HandshakeError
from robot_app.hardware.serial_robot import SerialRobot
from robot_app.robot.spec import load_robot_spec
from tests.conftest import wait_until
from tests.fake_device import FakeDevice

SPEC = load_robot_spec("furuta")
CLI = [sys.executable, "-m", "robot_app.cli"]


def _read_line(stream, timeout_s: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    if not selector.select(timeout_s):
        raise TimeoutError("the process printed nothing in time")
    return stream.readline().strip()


@contextlib.contextmanager
def virtual_robot(tmp_path, *flags):
    """A virtual-robot process; `.stop()` ends it and returns its device-side audit."""
    audit_path = tmp_path / "audit.json"
    proc = subprocess.Popen([*CLI, "virtual-robot", "--audit-out", str(audit_path), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop() -> dict:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        return json.loads(audit_path.read_text())

    try:
        yield types.SimpleNamespace(port=_read_line(proc.stdout, 30), stop=stop, proc=proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class FnPolicy:
    kind, sample_seed, fell_back = PolicyKind.BRING_UP, -1, False

    def __init__(self, fn, version):
        self.fn, self.version = fn, version

    def reset(self):
        pass

    def __call__(self, obs):
        return self.fn(obs)


def make_agent(port, policy, log=None, rate=None):
    return Agent(SerialRobot(port), SPEC.with_rate(rate), load_calibration("furuta"), policy, log, status_every_s=60)


def logged(log):
    """Everything a transition log holds: its robot ids, its columns joined, and the policy version of each row."""
    chunks = log.read()
    columns = {name: np.concatenate([c.columns[name] for _, c in chunks]) for name in chunks[0][1].columns}
    return {robot for robot, _ in chunks}, columns, [v for _, c in chunks for v in c.row_policy_versions()]


def assert_device_saw_only_safe_commands(audit):
    assert audit["commands"] > 0
    assert audit["limit_violations"] == 0 and audit["rate_violations"] == 0
    assert all(speed <= SPEC.joint("arm").max_hard_stop_speed for speed in audit["hard_stop_speeds"])


class ResetCounting(FnPolicy):
    def __init__(self, fn, version, fail=False):
        super().__init__(fn, version)
        self.resets, self.fail = 0, fail

    def reset(self):
        self.resets += 1
        if self.fail:
            raise RuntimeError("a planner that cannot start")


@pytest.mark.parametrize("fail", [False, True], ids=["resets", "a reset that raises"])
def test_the_policy_is_reset_at_every_episode_start_and_a_reset_that_raises_is_a_policy_fault(tmp_path, fail):
    policy = ResetCounting(lambda obs: np.zeros(1), "counting", fail)
    with virtual_robot(tmp_path, "--lockstep") as robot:
        summary = make_agent(robot.port, policy).run(episodes=2)
    assert summary.episodes == 2 and policy.resets == 2
    if fail:  # the episode's first action is NaN: a latched safe stop, and the loop goes on; no tick error
        assert summary.faults == {"non_finite_action": 2} and summary.tick_errors == 0 and summary.transitions == 2
    else:
        assert summary.faults == {} and summary.transitions == 2 * SPEC.episode_steps


def test_an_agent_drives_a_virtual_robot_over_tcp_as_over_a_pty(tmp_path):
    """The sim profile's link across containers: `virtual-robot --listen`, and the agent's --port socket://..."""
    with virtual_robot(tmp_path, "--lockstep", "--listen", "127.0.0.1:0") as robot:
        assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", robot.port) and not robot.port.endswith(":0")
        agent = Agent(SerialRobot(robot.port), SPEC, load_calibration("furuta"), ConstantPolicy([0.0]),
                      status_every_s=0.05, heartbeat=tmp_path / "alive")
        beats = []
        agent.heartbeat.beat = lambda: beats.append(time.monotonic())
        summary = agent.run(episodes=2)
        audit = robot.stop()
    assert summary.episodes == 2 and summary.transitions == 2 * SPEC.episode_steps and summary.link_losses == 0
    assert len(beats) > 1  # on connecting, and at the status lines after
    assert audit["commands"] >= summary.transitions and audit["bad_frames"] == 0


def test_lockstep_episodes_are_logged_with_calibrated_observations(tmp_path):
    log_path = tmp_path / "t.sqlite"
    with virtual_robot(tmp_path, "--lockstep") as robot, TransitionLog(log_path) as log:
        summary = make_agent(robot.port, ConstantPolicy([0.0]), log).run(episodes=2)
        audit = robot.stop()
        assert not log.closed  # the log is the caller's: a link may still be shipping from it
    assert summary.episodes == 2 and summary.transitions == 2 * SPEC.episode_steps
    log = TransitionLog(log_path)
    robots, rows, versions = logged(log)
    assert log.next_episode("furuta-virtual-0") == 2  # a restarted agent continues the numbering
    log.close()
    assert robots == {"furuta-virtual-0"} and set(versions) == {"zero"}
    np.testing.assert_array_equal(rows["seq"], np.arange(1, 2 * SPEC.episode_steps + 1))
    for episode in (0, 1):
        mine = rows["episode"] == episode
        assert rows["step"][mine].tolist() == list(range(SPEC.episode_steps))
        assert rows["truncated"][mine][-1] and not rows["terminated"][mine].any()
        np.testing.assert_array_equal(rows["next_obs"][mine][:-1], rows["obs"][mine][1:])
    first = {name: column[0] for name, column in rows.items()}
    assert first["obs"][2] < -0.99 and first["obs"][0] > 0.99  # calibrated: pendulum hanging (alpha = pi), arm centred
    assert first["obs_time_ns"] < first["command_time_ns"] <= first["next_obs_time_ns"]
    assert_device_saw_only_safe_commands(audit)


def test_realtime_mode_runs_on_deadlines(tmp_path):
    with virtual_robot(tmp_path) as robot:
        summary = make_agent(robot.port, ConstantPolicy([0.0])).run(duration_s=1.5)
        audit = robot.stop()
    # 75 periods at 50 Hz; the bound is loose because the handshake may wait out a HELLO retry on a loaded machine
    assert summary.ticks >= 25 and summary.transitions > 0
    assert summary.link["frames"] >= 25 and summary.jitter_p99_us is not None
    assert_device_saw_only_safe_commands(audit)


ADVERSARIES = {
    "nan": lambda obs: np.array([np.nan]),
    # Full push, reversed every 6 ticks (about 8 Hz at 50 Hz): counted in ticks, so a busy machine sees the same.
    "bang_bang": (lambda ticks: lambda obs: np.array([5.0 if next(ticks) // 6 % 2 else -5.0]))(itertools.count()),
    "pump_towards_the_stops": lambda obs: np.array([5.0 if obs[4] >= 0 else -5.0]),
    "saturated": lambda obs: np.array([1e6]),
    "steady_push": lambda obs: np.array([5.0]),
    "random": (lambda rng: lambda obs: rng.uniform(-5.0, 5.0, 1))(np.random.default_rng(0)),
}


@pytest.mark.parametrize("name", ADVERSARIES)
def test_adversarial_policies_never_put_an_unsafe_command_on_the_wire(tmp_path, name):
    with virtual_robot(tmp_path, "--lockstep") as robot:
        summary = make_agent(robot.port, FnPolicy(ADVERSARIES[name], name)).run(episodes=2)
        audit = robot.stop()
    assert_device_saw_only_safe_commands(audit)
    assert audit["hard_stop_speeds"] == []  # the arm never even reached a stop
    if name == "nan":
        # Each episode ends at its first action: the fault latches, the arm is brought to rest, the next one starts.
        assert summary.transitions == 2 and summary.interventions["non_finite_action"] >= 2
    else:
        assert summary.transitions == 2 * SPEC.episode_steps  # braking kept it inside the software limit


def test_a_steady_push_into_a_limit_is_held_off_smoothly_not_chattered(tmp_path):
    """Braking once turned a steady +5 V push into ±5 V chatter: 31-36% of consecutive commands flipped sign."""
    log = TransitionRecorder()
    with virtual_robot(tmp_path, "--lockstep") as robot:
        make_agent(robot.port, FnPolicy(ADVERSARIES["steady_push"], "push"), log).run(episodes=2)
        audit = robot.stop()
    commands = np.array([t.action[0] for t in log.rows])
    flips = np.mean(np.sign(commands[1:]) * np.sign(commands[:-1]) < 0)
    assert len(commands) == 2 * SPEC.episode_steps and flips < 0.1
    assert audit["max_command_step"] <= SPEC.actuators[0].rate_limit * SPEC.period_s + 1e-6
    assert audit["max_abs_position"][0] < SPEC.joint("arm").position_limit[1]  # held inside the software limit


def test_the_device_audit_judges_every_step_and_writes_strict_json(tmp_path):
    """After a NaN the next step went unchecked, and a non-finite command made audit.json non-JSON (Infinity)."""
    from sim.virtual_robot import VirtualRobot, write_audit

    spec = SPEC.with_rate(500.0)  # 0.5 V a period
    device = VirtualRobot(spec, lockstep=True)
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    host = SerialRobot(device.port)
    host.connect()
    for volts in (0.4, float("nan"), 1.0, 1.2, float("inf")):  # NaN drives 0 V: 1.0 is a 1 V step from it
        answered = host.latest.seq if host.latest is not None else None  # the lockstep answer is newer than this
        host.send_command([volts])
        assert host.wait_sensor(answered, 5.0) is not None
    host.close()
    device.stop()
    serving.join(timeout=10)
    write_audit(device.audit, tmp_path / "audit.json")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    audit = json.loads((tmp_path / "audit.json").read_text(), parse_constant=refuse)
    assert audit["limit_violations"] == 2 and audit["non_finite_commands"] == 2
    assert audit["rate_violations"] == 3  # NaN, the 1 V step after it, and inf
    assert audit["last_command"] == ["inf"] and audit["max_command_step"] == pytest.approx(1.0)


def test_agent_watchdog_stops_safely_on_stale_sensor_data(tmp_path):
    with virtual_robot(tmp_path, "--hang-after", "2.0") as robot:  # time enough to connect on a busy machine
        summary = make_agent(robot.port, ConstantPolicy([0.0])).run(duration_s=3.0)
    assert summary.interventions.get("stale_sensors", 0) > 0
    assert summary.stop_reason == "duration reached"


def test_a_device_that_stops_reading_never_blocks_a_send(tmp_path):
    frames = 5000  # about 100 kB: several times what the pty buffers (about 20 kB here)
    with virtual_robot(tmp_path, "--hang-after", "2.0") as robot:  # time enough to connect on a slow machine
        host = SerialRobot(robot.port)
        host.connect()
        wait_until(lambda: host.poll(0.5) == 0, timeout_s=30)  # half a second without a frame: the device has hung
        sender = threading.Thread(target=lambda: [host.send_command([0.0]) for _ in range(frames)], daemon=True)
        sender.start()
        sender.join(timeout=30)
        blocked = sender.is_alive()
        host.close()
    assert not blocked, "send_command blocked on a device that stopped reading"
    assert 0 < host.counters["tx_short"] < frames  # the frames that did not fit were counted as lost


def test_firmware_watchdog_cuts_the_motor_when_the_host_goes_silent(tmp_path):
    with virtual_robot(tmp_path) as robot:
        host = SerialRobot(robot.port)
        host.connect()
        for _ in range(5):
            host.send_command([1.0])
            host.poll(0.02)
        def faults_reported():  # the host only listens from here on
            host.poll(0.05)
            return host.faults

        wait_until(faults_reported, timeout_s=10)
        host.poll(0.05)
        status, applied = host.latest.frame.status, host.latest.frame.applied
        host.close()
        audit = robot.stop()
    assert [f.code for f in host.faults] == [FaultCode.WATCHDOG]
    assert status & SensorStatus.WATCHDOG_TRIPPED and not status & SensorStatus.MOTOR_ENABLED
    assert applied == (0.0,) and audit["watchdog_trips"] == 1


class _Later:
    """The summary a thread's agent.run() returns, read once the thread has ended."""

    summary = None

    def __getattr__(self, name):
        return getattr(self.summary, name)


def _run_in_thread(agent, **kwargs):
    result = _Later()
    thread = threading.Thread(target=lambda: setattr(result, "summary", agent.run(**kwargs)))
    thread.start()
    return thread, result


def test_estop_latches_until_an_explicit_reset(tmp_path):
    log = TransitionLog(tmp_path / "t.sqlite")
    with virtual_robot(tmp_path) as robot:
        agent = make_agent(robot.port, ConstantPolicy([0.0]), log)
        thread, summary = _run_in_thread(agent, duration_s=3.0)
        wait_until(lambda: agent.transitions_recorded > 0, timeout_s=30)
        agent.request_estop("test operator")
        estop_ticks = agent.supervisor.counts.__getitem__
        wait_until(lambda: estop_ticks("estop") >= 5, timeout_s=10)  # latched, and the open step closed
        latched = agent.supervisor.estop_reason
        transitions_while_latched = agent.transitions_recorded
        wait_until(lambda: estop_ticks("estop") >= 25, timeout_s=10)
        assert agent.transitions_recorded == transitions_while_latched  # nothing runs while latched
        agent.request_estop_reset()
        thread.join(timeout=10)
        audit = robot.stop()
    assert latched == "test operator" and agent.supervisor.estop_reason is None
    assert summary.transitions > transitions_while_latched  # it ran again after the reset
    assert audit["estops"] == 1 and audit["limit_violations"] == 0
    log.close()
    _, episodes, _, _ = export(tmp_path / "t.sqlite", tmp_path / "table", SPEC)
    with open(episodes) as f:
        first = next(csv.DictReader(f))
    assert first["ended"] == "cut short (estop)" and int(first["steps"]) == transitions_while_latched  # and why


def test_the_device_estop_button_reaches_the_agent_and_latches(tmp_path):
    with virtual_robot(tmp_path, "--estop-after", "0.5") as robot:
        agent = make_agent(robot.port, ConstantPolicy([0.0]))
        summary = agent.run(duration_s=1.5)
    assert summary.interventions["estop"] >= 1
    assert agent.supervisor.estop_reason.startswith("device e-stop")


def test_estop_from_the_cli_then_sigterm_brings_a_safe_stop(tmp_path):
    with virtual_robot(tmp_path) as robot:
        agent = subprocess.Popen([*CLI, "agent", "--port", robot.port, "--policy", "random", "--log",
                                  str(tmp_path / "t.sqlite")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while "connected to" not in _read_line(agent.stderr, 30) and time.monotonic() < deadline:
            pass
        estop = subprocess.run([*CLI, "estop", str(agent.pid)], capture_output=True, text=True, timeout=60)
        seen = []  # the agent's log up to the e-stop it applied (and passed on to the device in the same tick)
        while "E-STOP engaged" not in (seen or [""])[-1]:
            seen.append(_read_line(agent.stderr, 30))
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=20)
        err = "\n".join(seen) + "\n" + err
        audit = robot.stop()
    assert estop.returncode == 0 and "E-STOP engaged: signal SIGUSR1" in err
    assert audit["estops"] == 1  # the agent passed the e-stop on to the device
    assert agent.returncode == 0, err
    assert "agent stopped (SIGTERM)" in out and "safe stop" in err
    assert audit["last_command"] == [0.0] and audit["last_enabled"] is False
    assert audit["motor_enabled_at_exit"] is False and audit["watchdog_trips"] == 0
    assert_device_saw_only_safe_commands(audit)


def test_a_transition_log_that_stops_writing_still_gets_the_safe_stop_onto_the_wire(tmp_path):
    """The disk fails, then a stop is asked for: recording the last transition fails, but only after the safe command
    with the motor disabled has gone out."""
    import sqlite3

    log = TransitionLog(tmp_path / "t.sqlite", flush_interval_s=0.005, retry_s=0.05)

    def disk_failed(batch):
        raise sqlite3.OperationalError("disk I/O error")

    def policy(obs):
        policy.calls += 1
        if policy.calls == 10:
            log._commit = disk_failed
            wait_until(lambda: log.error is not None, timeout_s=10)  # the writer gave up on steps 0-8
            agent.request_stop("operator")  # this step's transition is recorded at shutdown, and that fails
        return np.array([0.5])

    policy.calls = 0
    with virtual_robot(tmp_path, "--lockstep") as robot, log:
        agent = Agent(SerialRobot(robot.port), SPEC, load_calibration("furuta"), FnPolicy(policy, "v"), log,
                      status_every_s=60)
        with pytest.raises(OSError, match="the transition log stopped writing"):
            agent.run(episodes=1)
        audit = robot.stop()
    assert policy.calls == 10
    assert audit["last_command"] == [0.0] and audit["last_enabled"] is False
    assert audit["motor_enabled_at_exit"] is False
    assert_device_saw_only_safe_commands(audit)


def test_corrupted_and_dropped_frames_are_counted_and_survived(tmp_path):
    with virtual_robot(tmp_path, "--corrupt-rate", "0.003", "--drop-rate", "0.05", "--seed", "1") as robot:
        summary = make_agent(robot.port, FnPolicy(ADVERSARIES["random"], "random")).run(duration_s=2.0)
        audit = robot.stop()
    link = summary.link
    assert link.get("bad_crc", 0) + link.get("garbage_bytes", 0) + link.get("oversized", 0) > 0
    assert summary.transitions > 20
    assert_device_saw_only_safe_commands(audit)


def test_a_disconnect_is_reported_and_nothing_hangs(tmp_path):
    with virtual_robot(tmp_path, "--disconnect-after", "0.5") as robot:
        started = time.monotonic()
        summary = make_agent(robot.port, ConstantPolicy([0.0])).run(duration_s=2.0)
    assert summary.link_losses == 1 and time.monotonic() - started < 10
    assert summary.stop_reason == "duration reached"


def test_a_new_policy_takes_over_only_at_an_episode_boundary(tmp_path):
    log_path = tmp_path / "t.sqlite"
    agent = None

    def first(obs):
        agent.request_policy(ConstantPolicy([0.0]))  # asked for mid-episode, every tick
        return np.array([0.5])

    with virtual_robot(tmp_path, "--lockstep") as robot, TransitionLog(log_path) as log:
        agent = make_agent(robot.port, FnPolicy(first, "first"), log)
        agent.run(episodes=2)
    log = TransitionLog(log_path)
    _, rows, versions = logged(log)
    log.close()
    assert {v for v, e in zip(versions, rows["episode"]) if e == 0} == {"first"}
    assert {v for v, e in zip(versions, rows["episode"]) if e == 1} == {"zero"}


def test_onnx_policies_are_checked_against_the_robot(tmp_path):
    from policies.export import DeployedPolicy, export_onnx
    from policies.networks import SquashedGaussianActor
    from policies.normalizer import RunningNormalizer
    from robot_app.robot.task import make_task

    layout = make_task(SPEC).obs_layout

    def export(name, obs_layout, low, high):
        path = tmp_path / f"{name}.onnx"
        dim = sum(w for _, w in obs_layout)
        export_onnx(DeployedPolicy(RunningNormalizer(dim), SquashedGaussianActor(dim, 1, (8,)), low, high), path,
                    env="furuta:swingup", obs_layout=list(obs_layout), action_layout=["motor"], action_repeat=1,
                    training_step=0, source_run="test", horizon=0)
        return str(path)

    path = export("good", layout, [-5.0], [5.0])
    policy = load_policy(path, SPEC, layout)
    action = policy(np.zeros(6, np.float32))
    assert action.shape == (1,) and abs(action[0]) <= 5.0 and math.isfinite(action[0]) and len(policy.version) == 16
    actuator_names, low, high = ["motor"], [-5.0], [5.0]
    with pytest.raises(ArtifactError, match="observation layout"):
        policy.check_robot([("position", 3)], actuator_names, low, high)
    with pytest.raises(ArtifactError, match="action layout"):
        policy.check_robot(layout, ["left_wheel"], low, high)
    with pytest.raises(ArtifactError, match="action bounds"):
        policy.check_robot(layout, actuator_names, [-10.0], [10.0])


def test_a_lost_estop_frame_is_caught_by_the_device_status_bit(tmp_path):
    class DeafToEStopFrames(SerialRobot):
        def poll(self, timeout_s=0.0):
            frames = super().poll(timeout_s)
            self.device_estop = None  # as if every ESTOP frame were lost on the line
            return frames

    with virtual_robot(tmp_path, "--estop-after", "0.5") as robot:
        agent = Agent(DeafToEStopFrames(robot.port), SPEC, load_calibration("furuta"), ConstantPolicy([0.0]),
                      status_every_s=60)
        agent.run(duration_s=1.5)
    assert agent.supervisor.estop_reason == "device e-stop (from its status bit)"


def test_a_full_outbox_holds_the_robot_at_rest_instead_of_losing_data(tmp_path):
    log_path = tmp_path / "t.sqlite"
    with virtual_robot(tmp_path, "--lockstep") as robot, TransitionLog(log_path) as log:
        agent = Agent(SerialRobot(robot.port), SPEC, load_calibration("furuta"), ConstantPolicy([0.0]), log,
                      status_every_s=60, outbox_limit=300, lockstep_pace_hz=2000)
        summary = agent.run(duration_s=3.0)
    log = TransitionLog(log_path)
    held = log.held()
    log.close()
    assert summary.episodes == 1 and held == SPEC.episode_steps  # the second episode never started
    assert agent._outbox_full


# ---- hostile devices: a scripted lockstep device on a pty ----------------------------------------------------------

COUNTS_PER_RAD = 2048 / (2 * math.pi)
HANGING = 2048  # pendulum counts with the pendulum hanging (the calibration puts upright at 1024)


def arm_counts(step):
    """The scripted arm: centred and still for 20 steps (an episode starts), then swinging slowly."""
    return round(0.6 * math.sin(max(0, step - 20) / 15) * COUNTS_PER_RAD)


def run_against(device, policy=None, steps=200, recorder=None, **agent_options):
    """An agent on the fake device's port until the device has answered `steps` commands."""
    agent = Agent(SerialRobot(device.port), SPEC, load_calibration("furuta"), policy or ConstantPolicy([0.0]),
                  recorder, status_every_s=60, **agent_options)
    device.agent = agent
    thread, summary = _run_in_thread(agent, duration_s=60)
    wait_until(lambda: len(device.commands) >= steps or not thread.is_alive(), timeout_s=60)
    agent.request_stop("script done")
    thread.join(timeout=20)
    assert not thread.is_alive()
    return agent, summary


@pytest.mark.parametrize("jump_us", [1_000_000_000, "restart"], ids=["forward 1000 s", "restart at 0"])
def test_a_device_clock_jump_is_a_latched_fault_and_the_state_keeps_following_the_counts(jump_us):
    """A jump once froze the state (frames with an earlier device time were ignored) while the agent kept commanding."""
    def script(device, command):
        step = len(device.commands)
        time_us = step * 20_000
        if step >= 60:  # the device clock jumps, then runs on from there
            time_us = time_us + jump_us if jump_us != "restart" else (step - 60) * 20_000 + 1
        return device.sensor(time_us, (arm_counts(step), HANGING))

    recorder = TransitionRecorder()
    with FakeDevice(script) as device:
        agent, summary = run_against(device, steps=240, recorder=recorder)  # the reset times out at step 210
    assert agent.robot.counters["device_clock_jumps"] == 1 and agent.supervisor.latches["device_clock"] == 1
    assert summary.stop_reason == "script done" and summary.episodes >= 1  # the fault cleared in the reset
    assert {0, 1} <= {row.episode for row in recorder.rows} and summary.transitions > 60
    last_frame = agent.robot.latest.frame  # what the last tick read, 180 or more steps after the jump
    assert agent.pipeline.state.position[0] == pytest.approx(last_frame.counts[0] / COUNTS_PER_RAD)  # not frozen
    assert abs(agent.pipeline.state.velocity[0]) < 3.0  # nor a spike in the velocity (the arm moves at <= 2 rad/s)
    cut = [row for row in recorder.rows if row.episode == 0][-1]
    assert cut.truncated and not any(t.terminated for t in recorder.rows)  # the episode was cut


def test_device_time_is_trusted_only_where_it_agrees_with_the_host_clock():
    from robot_app.agent.runtime import device_time_is_consistent as consistent

    assert consistent(0.02, 0.02, 0.2, lockstep=False) and consistent(0.02, 0.001, 0.2, lockstep=False)  # bunched
    assert not consistent(0.0, 0.02, 0.2, lockstep=False) and not consistent(-5.0, 0.02, 0.2, lockstep=False)
    assert not consistent(1000.0, 0.02, 0.2, lockstep=False)
    assert not consistent(0.02, 3.0, 0.2, lockstep=False)  # a realtime clock that stalled
    assert consistent(0.02, 3.0, 0.2, lockstep=True)  # a lockstep device waits for a slow host
    assert not consistent(1000.0, 0.0005, 0.2, lockstep=True)


def test_a_calibration_measured_on_another_unit_is_refused_at_the_handshake():
    def script(device, command):
        return device.sensor(len(device.commands) * 20_000 + 1, (0, HANGING))

    def agent_for(device, unit):
        calibration = load_calibration("furuta").model_copy(update={"robot_id": unit})
        return Agent(SerialRobot(device.port), SPEC, calibration, ConstantPolicy([0.0]), None, status_every_s=60)

    with FakeDevice(script, robot_id="furuta-3") as device:
        with pytest.raises(HandshakeError, match="the calibration was measured on 'furuta-7'.*is 'furuta-3'"):
            agent_for(device, "furuta-7").run(episodes=1)
        assert not device.commands  # refused before any command
    with FakeDevice(script, robot_id="furuta-3") as device:
        assert agent_for(device, "furuta-3").run(episodes=1).episodes == 1


def test_a_sensor_frame_with_the_wrong_number_of_values_is_dropped_and_counted():
    """One valid-CRC frame with 0, 1 or 3 encoder values used to end the agent."""
    def script(device, command):
        step = len(device.commands)
        bad = {30: (), 31: (5,), 32: (5, HANGING, 7)}.get(step)
        frames = device.sensor(step * 20_000, bad) if bad is not None else b""
        return frames + device.sensor(step * 20_000 + 10, (0, HANGING))

    with FakeDevice(script) as device:
        agent, summary = run_against(device, recorder=TransitionRecorder(), steps=100)
    assert summary.stop_reason == "script done" and summary.tick_errors == 0
    assert summary.link["sensor_wrong_shape"] == 3 and summary.transitions > 50


def test_a_device_that_loses_its_session_is_handshaken_again_with_the_motor_off_meanwhile():
    """After a reboot the device answers nothing until a HELLO: the agent once sat there commanding 0 V with the
    driver enabled, and never said HELLO again."""
    def script(device, command):
        rebooted = len(device.commands) >= 40
        if command is None:  # a HELLO: unanswered while the device boots, then a session with a clock from 0
            if rebooted and len(device.commands) < 50:
                return None
            device.session_start = len(device.commands)
            return device.sensor(1, (0, HANGING))
        if rebooted and device.session_start < 40:
            return b""  # rebooted: silent until a HELLO opens a session
        return device.sensor((len(device.commands) - device.session_start) * 20_000 + 1, (0, HANGING))

    with FakeDevice(script) as device:
        agent, summary = run_against(device, recorder=TransitionRecorder(), steps=150)
        received = list(device.received)
    answered = [i for i, (kind, _) in enumerate(received) if kind == MessageType.HELLO][-1]
    assert device.hellos() > 2 and summary.link["session_restarts"] == 1  # asked again until answered
    booting = [m for kind, m in received[:answered] if kind == MessageType.COMMAND][40:]
    assert len(booting) >= 10 and not any(c.enable for c in booting)  # driver off while there was no session
    after = [m for kind, m in received[answered:] if kind == MessageType.COMMAND]
    assert any(c.enable for c in after)  # and on again once a session is open


def test_a_device_that_says_it_has_no_session_is_handshaken_again_at_once():
    def script(device, command):
        if command is None:
            device.session_start = len(device.commands)
            return device.sensor(1, (0, HANGING))
        if device.session_start < 40 <= len(device.commands):
            return device.frame(MessageType.FAULT, Fault(FaultCode.NO_SESSION, "no session").pack())
        return device.sensor((len(device.commands) - device.session_start) * 20_000 + 1, (0, HANGING))

    with FakeDevice(script) as device:
        agent, summary = run_against(device, recorder=TransitionRecorder(), steps=80)
    assert device.hellos() == 2 and summary.link["session_restarts"] == 1
    assert "failed_hellos" not in summary.link  # it asked once, at once: the device had said why it was silent


def test_the_virtual_robot_rebooting_mid_run_is_recovered_from(tmp_path):
    with virtual_robot(tmp_path, "--lockstep", "--reboot-after", "1.0") as robot:
        agent = make_agent(robot.port, FnPolicy(ADVERSARIES["random"], "random"), TransitionRecorder())
        agent.lockstep_pace = None
        thread, summary = _run_in_thread(agent, duration_s=4.0)
        thread.join(timeout=30)
        audit = robot.stop()
    assert summary.link["session_restarts"] >= 1 and summary.transitions > 100
    assert_device_saw_only_safe_commands(audit)


class FailingRecorder(TransitionRecorder):
    def __init__(self, fail_on):
        super().__init__()
        self.fail_on, self.calls = fail_on, 0

    def append(self, transition):
        self.calls += 1
        if self.fail_on(self.calls):
            raise RuntimeError(f"append {self.calls} failed")
        super().append(transition)


def test_an_exception_in_a_tick_stops_the_motor_ends_the_episode_and_the_agent_recovers():
    """Anything a tick raises used to end the agent (exit 2). Now: motor off, fault latched and reported, reset phase."""
    recorder = FailingRecorder(lambda call: call == 30)
    with FakeDevice(lambda device, command: device.sensor(len(device.commands) * 20_000 + 1, (0, HANGING))) as device:
        agent, summary = run_against(device, recorder=recorder, steps=300)
        commands = list(device.commands)
    assert summary.tick_errors == 1 and summary.failure is None and summary.stop_reason == "script done"
    assert summary.faults["tick_error"] == 1 and summary.episodes >= 1
    assert not all(c.enable for c in commands) and len(recorder.rows) > 30  # the motor went off, and it ran on
    assert len({t.episode for t in recorder.rows}) >= 2


def test_a_tick_that_fails_every_time_stops_the_agent_with_a_diagnostic():
    recorder = FailingRecorder(lambda call: call >= 5)
    with FakeDevice(lambda device, command: device.sensor(len(device.commands) * 20_000 + 1, (0, HANGING))) as device:
        agent = Agent(SerialRobot(device.port), SPEC, load_calibration("furuta"), ConstantPolicy([0.0]), recorder,
                      status_every_s=60, tick_error_limit=3, reset_timeout_s=0.0)
        summary = agent.run(duration_s=60)
        wait_until(lambda: not device.commands[-1].enable, timeout_s=10)  # the safe stop went out, last
    assert re.match("3 ticks failed, never an episode.s length of good ticks between them; the last: RuntimeError: "
                    "append", summary.failure)
    assert summary.stop_reason.startswith("fault: ")


def test_a_sampling_agent_records_each_sampled_action_with_the_seed_that_replays_it(tmp_path):
    from policies.export import DeployedPolicy, export_onnx
    from policies.networks import SquashedGaussianActor
    from policies.normalizer import RunningNormalizer
    from robot_app.agent.policy_runner import OnnxPolicy, SampledPolicy
    from robot_app.robot.task import make_task

    layout = make_task(SPEC).obs_layout
    path = tmp_path / "policy.onnx"
    export_onnx(DeployedPolicy(RunningNormalizer(6), SquashedGaussianActor(6, 1, (8,)), [-5.0], [5.0]), path,
                env="furuta:swingup", obs_layout=list(layout), action_layout=["motor"], action_repeat=1,
                training_step=0, source_run="test", horizon=0)
    policy = load_policy(str(path), SPEC, layout)
    with virtual_robot(tmp_path, "--lockstep") as robot, TransitionLog(tmp_path / "t.sqlite") as log:
        make_agent(robot.port, SampledPolicy(policy, seed=5), log).run(episodes=1)
        _, rows, _ = logged(log)
    seeds = rows["sample_seed"]
    assert len(seeds) > 10 and (seeds >= 0).all() and len(set(seeds.tolist())) == len(seeds)
    replay = OnnxPolicy(path)
    for i in (0, len(seeds) // 2, len(seeds) - 1):  # each seed replays exactly the draw that chose the action
        noise = np.random.default_rng(int(seeds[i])).standard_normal(1).astype(np.float32)
        np.testing.assert_allclose(replay.sample(rows["obs"][i], noise), rows["policy_action"][i], atol=1e-5)
    assert not np.allclose(rows["policy_action"], [replay(obs) for obs in rows["obs"]])  # sampled, not the mean


def test_a_randomised_virtual_robot_draws_new_physics_when_it_comes_to_rest_between_episodes(tmp_path):
    from sim.virtual_robot import VirtualRobot

    device = VirtualRobot(SPEC, lockstep=True, randomise=True, seed=3)
    nominal = device.physics.model.dof_damping.copy()
    serving = threading.Thread(target=device.serve, daemon=True)
    serving.start()
    kicks = iter([4.0] * 10 + [0.0] * 10_000)  # each episode starts with a kick: the robot moves, then settles
    make_agent(device.port, FnPolicy(lambda obs: np.array([next(kicks)]), "kick")).run(episodes=3)
    device.stop()
    serving.join(timeout=10)
    span = SPEC.randomisation["pendulum_damping"]
    assert device.counters["physics_draws"] >= 2  # at rest before the first episode, and again after a settle
    damping = device.physics.model.dof_damping[device.physics.model.joint("pendulum").dofadr[0]]
    assert span.low <= damping <= span.high and not np.allclose(device.physics.model.dof_damping, nominal)
