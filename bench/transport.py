"""Robot -> learner throughput over tcp loopback: our whole path against raw pyzmq PUSH/PULL with the same payload.

Ours: a robot process ships a pre-filled outbox (SQLite) through RobotLink (CURVE) to a learner process, which
validates, commits to its ingest store (SQLite, synchronous=FULL) and acks; the robot deletes what was acked. Raw: the
same encoded batches, PUSH to PULL, nothing else. Both run in fresh processes in the same run.

    .venv/bin/python bench/transport.py [--transitions 50000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "transport.json"
BATCH = 256


def _transition(episode: int, step: int):
    from robot_app.agent.transition_log import Transition

    obs = np.full(6, step % 7, np.float32)
    return Transition("robot-0", episode, step, obs, np.array([1.0], np.float32), 0.5, obs, False, False,
                      np.array([1.0], np.float32), "p1", (), step, step, step, step)


def _fill_outbox(path: Path, n: int) -> None:
    from robot_app.agent.transition_log import TransitionLog

    log = TransitionLog(path)
    for i in range(n):
        log.append(_transition(i // 400, i % 400))
    log.close()


def _learner(store_path: str, endpoint: str, keys: str, ready, done) -> None:
    import threading

    from robot_app.learner.ingest import IngestServer, IngestStore

    server = IngestServer(IngestStore(store_path), endpoint, (f"{keys}/learner.key_secret", f"{keys}/allowed"))
    threading.Thread(target=lambda: (done.wait(), server.stop()), daemon=True).start()
    ready.set()
    server.serve()


def _robot(outbox: str, endpoint: str, keys: str, result) -> None:
    import threading

    from robot_app.agent.transition_log import TransitionLog
    from robot_app.transport.robot_link import RobotLink

    log = TransitionLog(outbox)
    link = RobotLink(log, endpoint, "robot-0", (f"{keys}/robot-0.key_secret", f"{keys}/learner.key"))
    thread = threading.Thread(target=link.run, daemon=True)
    start = time.perf_counter()
    thread.start()
    while log.held_upper_bound():
        time.sleep(0.01)
    result["seconds"] = time.perf_counter() - start
    link.stop()
    thread.join()
    log.close()


def measure_ours(n: int, tmp: Path) -> dict:
    from robot_app.demo import _free_port, _keys

    keys = _keys(tmp / "k", ["robot-0"])
    outbox = tmp / "outbox.sqlite"
    _fill_outbox(outbox, n)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ready, done, result = mp.Event(), mp.Event(), mp.Manager().dict()
    learner = mp.Process(target=_learner, args=(str(tmp / "ingest.sqlite"), endpoint, str(keys), ready, done))
    learner.start()
    ready.wait(30)
    robot = mp.Process(target=_robot, args=(str(outbox), endpoint, str(keys), result))
    robot.start()
    robot.join()
    done.set()
    learner.join(30)
    from robot_app.learner.ingest import IngestStore

    stored = IngestStore(tmp / "ingest.sqlite").count()
    return {"transitions": n, "stored": stored, "seconds": result["seconds"], "per_s": n / result["seconds"]}


def _raw_pull(endpoint: str, messages: int, ready) -> None:
    import zmq

    socket = zmq.Context().socket(zmq.PULL)
    socket.bind(endpoint)
    ready.set()
    for _ in range(messages):
        socket.recv()


def measure_raw(n: int) -> dict:
    import zmq

    from robot_app.demo import _free_port
    from robot_app.transport.messages import TransitionBatch, encode

    payload = encode(TransitionBatch.from_rows("robot-0", [(i + 1, _transition(0, i)) for i in range(BATCH)]))
    messages = n // BATCH
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ready = mp.Event()
    puller = mp.Process(target=_raw_pull, args=(endpoint, messages, ready))
    puller.start()
    ready.wait(30)
    socket = zmq.Context().socket(zmq.PUSH)
    socket.connect(endpoint)
    start = time.perf_counter()
    for _ in range(messages):
        socket.send(payload)
    puller.join()
    seconds = time.perf_counter() - start
    return {"transitions": messages * BATCH, "payload_bytes": len(payload), "seconds": seconds,
            "per_s": messages * BATCH / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=50_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    ours, raw = measure_ours(args.transitions, tmp), measure_raw(args.transitions)
    results = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d"),
               "batch_rows": BATCH, "ours": ours, "raw_pyzmq_push_pull": raw, "ratio": ours["per_s"] / raw["per_s"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
