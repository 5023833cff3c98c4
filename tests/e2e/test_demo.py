"""End to end, briefly: learner, two lockstep virtual robots and their agents as processes over CURVE on tcp."""

import dataclasses
import json
import os
import signal
import threading
import urllib.request

from robot_app.demo import BRING_UP_POLICY, LEARNER_NICE, _planned_ticks, run_demo
from robot_app.learner.ingest import IngestStore
from robot_app.learner.registry import PolicyRegistry
from robot_app.transport.messages import TransitionBatch, TransitionChunk
from tests.conftest import outbox_state, stored_keys, wait_until
from tests.transport.test_transport import transition


def _count(store_path) -> int:
    store = IngestStore(store_path)
    try:
        return store.count()
    finally:
        store.close()


def test_the_demo_streams_every_transition_once_through_the_whole_stack_and_outlives_its_learner(tmp_path):
    """kill -9 of the learner once ended the demo with a traceback; now the learner is restarted and nothing is lost."""
    out = tmp_path / "demo"
    result = {}
    demo = threading.Thread(target=lambda: result.update(code=run_demo(out, robots=2, minutes=1.0, horizon=1,
                                                                        transitions=None)))
    demo.start()
    store_path, processes = out / "learner" / "ingest.sqlite", out / "processes.json"
    wait_until(lambda: store_path.exists() and _count(store_path) > 200, timeout_s=120)
    first = json.loads(processes.read_text())["learner"]
    assert os.getpriority(os.PRIO_PROCESS, first) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + LEARNER_NICE)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: json.loads(processes.read_text())["learner"] != first, timeout_s=60)
    at_restart = _count(store_path)
    wait_until(lambda: _count(store_path) > at_restart + 50, timeout_s=120)  # the new learner takes data again
    demo.join(timeout=300)
    assert result["code"] == 0
    store = IngestStore(out / "learner" / "ingest.sqlite")
    received = {robot: set(stored_keys(store, robot)) for robot in ("furuta-virtual-0", "furuta-virtual-1")}
    for robot, keys in received.items():
        ever, still_held = outbox_state(out / robot / "transitions.sqlite")
        assert len(keys) > 100
        assert len(keys | still_held) == ever  # delivered or still in the outbox: nothing lost
    assert store.count() == sum(len(k) for k in received.values())  # and nothing stored twice
    ran = {version for _, _, chunk in store.read(limit_rows=1 << 40) for version in chunk.policy_versions}
    store.close()
    registry = PolicyRegistry(out / "registry")
    candidates = sorted((out / "learner" / "candidates").glob("*.onnx"))
    assert len(registry.list()) == len(candidates)  # every candidate entered the registry ...
    deployed = {move["version"] for move in registry.history() if move["to_state"] == "deployed"}
    assert ran <= {"random"} | deployed  # ... and robots ran only what the gate validated and signed
    registry.close()
    assert (out / "plots" / "learning.png").stat().st_size > 0  # the curve, drawn at the end
    cpu = json.loads((out / "cpu.json").read_text())["cpu_s"]  # where the CPU went, by process
    assert cpu["learner"] > 0 and cpu["furuta-virtual-0-agent"] > 0


def test_the_demo_releases_the_best_policy_that_passes_the_full_gate(tmp_path):
    """The robots explored with what the exploring bars passed; at the end the full gate picks what is released."""
    from robot_app.common.signing import generate_signing_keys, load_signing_key
    from robot_app.demo import _release
    from sim.gate import gate_candidate, load_gate_config
    from tests.sim.test_gate import BALANCING, TRAINED

    _, secret = generate_signing_keys(tmp_path / "keys", "gate")
    registry = PolicyRegistry(tmp_path / "registry")
    exploring = load_gate_config(episodes=2, seed=7, max_tick_overrun_rate=1.0).for_exploring()
    swinging, balancing = (registry.add_candidate(path, "learner").version for path in (TRAINED, BALANCING))
    for version in (swinging, balancing):
        assert gate_candidate(registry, version, load_signing_key(secret), exploring).passed
    registry.deploy(swinging, "learner:auto-deploy")
    line = _release(tmp_path / "registry", load_gate_config(max_tick_overrun_rate=1.0))  # no wall-clock verdict
    assert line.startswith(f"released {balancing}: it passed the full gate, success 0.50")
    assert "deterministic nominal return" in line
    assert registry.deployed().version == balancing
    assert (tmp_path / "registry" / "reports" / f"{swinging}-release" / "report.json").is_file()  # judged too
    registry.close()


def _answers(request) -> bool:
    try:
        return urllib.request.urlopen(request, timeout=5).status == 200
    except OSError:
        return False


def test_sigterm_stops_the_demo_and_every_process_it_started(tmp_path):
    """`kill` (and docker) send SIGTERM: the demo once died of it and left its learner, robot and agent running."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, "-m", "robot_app.cli", "demo", "--out", str(out), "--transitions", "0",
                             "--minutes", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: whatever is left can be killed at once
    try:
        processes = out / "processes.json"
        url = next(line for line in demo.stdout if line.startswith("demo: dashboard on ")).split()[3]
        wait_until(lambda: processes.exists() and len(json.loads(processes.read_text())) == 4, timeout_s=120)
        base, _, token = url.partition("#token=")  # the operator's link works as printed
        request = urllib.request.Request(base + "api/whoami", headers={"Authorization": f"Bearer {token}"})
        wait_until(lambda: _answers(request), timeout_s=60)
        assert json.loads(urllib.request.urlopen(request, timeout=10).read())["role"] == "operator"
        started = json.loads(processes.read_text())
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=300) == 130, demo.stderr.read()  # it stops each child in turn, up to 60 s each
        outlived = []
        for role, pid in started.items():
            try:
                os.kill(pid, 0)
                outlived.append(role)
            except ProcessLookupError:
                pass
        assert not outlived, f"{outlived} outlived the demo"
    finally:
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        demo.wait()


def test_the_demo_counts_plan_fallbacks_among_the_ticks_a_deployed_policy_ran(tmp_path):
    rows = [dataclasses.replace(transition("robot-1", 0, i), policy_version=BRING_UP_POLICY if i < 40 else "v1",
                                plan_fallback=i % 20 == 0 and i >= 40) for i in range(100)]
    store = IngestStore(tmp_path / "ingest.sqlite")
    store.store_batches([TransitionBatch("robot-1", "outbox-1", 0, TransitionChunk.from_transitions(1, rows).pack())], 0)
    store.close()
    assert _planned_ticks(tmp_path / "ingest.sqlite") == (60, 3)

