"""End to end, briefly: learner, two lockstep virtual robots and their agents as processes over CURVE on tcp."""

import sqlite3

from robot_app.demo import run_demo
from robot_app.learner.ingest import IngestStore


def produced_keys(outbox_path):
    """(episode, step) of every transition an agent still holds, and how many it ever logged."""
    db = sqlite3.connect(outbox_path)
    try:
        (ever,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transitions'").fetchone()
        rows = db.execute("SELECT episode, step FROM transitions").fetchall()
    finally:
        db.close()
    return ever, set(rows)


def test_the_demo_streams_every_transition_once_through_the_whole_stack(tmp_path):
    out = tmp_path / "demo"
    assert run_demo(out, robots=2, minutes=0.5, horizon=1, transitions_per_s=120) == 0
    store = IngestStore(out / "learner" / "ingest.sqlite")
    received = {robot: {(r["episode"], r["step"]) for _, rid, r in store.read(limit=100_000) if rid == robot}
                for robot in ("furuta-virtual-0", "furuta-virtual-1")}
    for robot, keys in received.items():
        ever, still_held = produced_keys(out / robot / "transitions.sqlite")
        assert len(keys) > 100
        assert len(keys | still_held) == ever  # delivered or still in the outbox: nothing lost
    assert store.count() == sum(len(k) for k in received.values())  # and nothing stored twice
    store.close()
