"""Process faults on the robot-learner link: kill -9 the learner, kill -9 the agent; nothing lost, nothing twice."""

import json
import signal
import subprocess
import sys
import time

from robot_app.demo import _free_port, _keys
from robot_app.learner.ingest import IngestStore
from tests.conftest import outbox_state, stored_keys, wait_until

CLI = [sys.executable, "-m", "robot_app.cli"]


def test_kill_9_of_learner_and_agent_loses_nothing_and_duplicates_nothing(tmp_path):
    keys = _keys(tmp_path, ["furuta-virtual-0"])
    listen, announce = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    outbox = tmp_path / "robot" / "transitions.sqlite"
    learner_args = [*CLI, "learner", "--out", str(tmp_path / "learner"), "--listen", listen, "--announce", announce,
                    "--keys", str(keys), "--warmup", "1000000"]
    device = subprocess.Popen([*CLI, "virtual-robot", "--lockstep", "--robot-id", "furuta-virtual-0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = device.stdout.readline().strip()
    agent_args = [*CLI, "agent", "--port", port, "--robot-id", "furuta-virtual-0", "--policy", "random", "--pace",
                  "300", "--accept-unsigned", "--learner", listen, "--announcements", announce, "--keys", str(keys), "--log", str(outbox)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    learner = subprocess.Popen(learner_args, **quiet)
    agent = subprocess.Popen(agent_args, **quiet)
    try:
        store_path = tmp_path / "learner" / "ingest.sqlite"
        wait_until(lambda: store_path.exists() and IngestStore(store_path).count() > 200)
        learner.send_signal(signal.SIGKILL)  # the learner dies mid-stream; the agent keeps controlling and logging
        learner.wait()
        time.sleep(1.5)
        learner = subprocess.Popen(learner_args, **quiet)
        wait_until(lambda: IngestStore(store_path).count() > outbox_state(outbox)[0] - 300 > 800)
        learner.send_signal(signal.SIGSTOP)  # acks stop, so the agent holds rows it has sent ...
        wait_until(lambda: len(outbox_state(outbox)[1]) > 100)
        agent.send_signal(signal.SIGKILL)  # ... when it dies
        agent.wait()
        learner.send_signal(signal.SIGCONT)
        _, held_at_kill = outbox_state(outbox)
        assert held_at_kill  # rows the learner had not acknowledged when the agent died
        agent = subprocess.Popen([*agent_args, "--duration", "4"], **quiet)  # a restart delivers what was left
        agent.wait(timeout=60)
    finally:
        for proc in (agent, learner, device):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    produced, held = outbox_state(outbox)
    store = IngestStore(store_path)
    stored = set(stored_keys(store))
    assert held_at_kill <= stored  # what the killed agent had not had acknowledged arrived after its restart
    assert len(stored | held) == produced  # every row the agent ever logged is stored or still held for next time
    assert len(stored) == store.count() > produced - 400  # nothing stored twice; the tail of the last run may wait
    store.close()


def test_a_paused_learner_leaves_the_robot_safe_its_outbox_bounded_and_everything_delivered_after(tmp_path):
    keys = _keys(tmp_path, ["furuta-virtual-0"])
    listen, announce = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    outbox, limit = tmp_path / "robot" / "transitions.sqlite", 600
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    learner = subprocess.Popen([*CLI, "learner", "--out", str(tmp_path / "learner"), "--listen", listen, "--announce",
                                announce, "--keys", str(keys), "--warmup", "1000000"], **quiet)
    device = subprocess.Popen([*CLI, "virtual-robot", "--lockstep", "--robot-id", "furuta-virtual-0",
                               "--audit-out", str(tmp_path / "audit.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    agent = subprocess.Popen([*CLI, "agent", "--port", device.stdout.readline().strip(), "--robot-id",
                              "furuta-virtual-0", "--policy", "random", "--pace", "300", "--outbox-limit", str(limit), "--accept-unsigned",
                              "--learner", listen, "--announcements", announce, "--keys", str(keys), "--log",
                              str(outbox)], **quiet)
    try:
        store_path = tmp_path / "learner" / "ingest.sqlite"
        wait_until(lambda: store_path.exists() and IngestStore(store_path).count() > 100)
        learner.send_signal(signal.SIGSTOP)
        held_during_pause, produced_before = [], outbox_state(outbox)[0]
        for _ in range(25):  # 5 s paused
            time.sleep(0.2)
            held_during_pause.append(len(outbox_state(outbox)[1]))
        produced_during = outbox_state(outbox)[0] - produced_before
        learner.send_signal(signal.SIGCONT)
        wait_until(lambda: len(outbox_state(outbox)[1]) < 100)  # it drains once the learner is back
        assert agent.poll() is None  # the agent kept running (and controlling) through the pause
    finally:
        for proc in (agent, device, learner):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    assert produced_during > 300  # the robot kept working while the learner was stopped ...
    assert max(held_during_pause) <= limit + 400  # ... until its outbox hit the bound (plus the episode in progress)
    produced, held = outbox_state(outbox)
    store = IngestStore(store_path)
    stored = set(stored_keys(store))
    assert len(stored | held) == produced and len(stored) == store.count()
    store.close()
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["limit_violations"] == 0 and audit["rate_violations"] == 0
