"""End to end, briefly: learner, two lockstep virtual robots and their agents as processes over CURVE on tcp."""

from robot_app.demo import run_demo
from robot_app.learner.ingest import IngestStore
from robot_app.learner.registry import PolicyRegistry
from tests.conftest import outbox_state, stored_keys


def test_the_demo_streams_every_transition_once_through_the_whole_stack(tmp_path):
    out = tmp_path / "demo"
    assert run_demo(out, robots=2, minutes=0.5, horizon=1, transitions_per_s=120) == 0
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
