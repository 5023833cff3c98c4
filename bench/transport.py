"""Robot <-> learner transport over tcp loopback: throughput against raw pyzmq, end-to-end latency, policy push time.

1. Throughput. A robot process drains a pre-filled outbox (SQLite) through RobotLink (CURVE) to a learner process,
   which validates, commits to its ingest store (SQLite, synchronous=FULL) and acks; the robot deletes what was acked.
   Raw: the same encoded batches, PUSH to PULL, nothing else. Both in fresh processes in the same run, for chunks of
   256 rows (a backlog written at full speed) and of 10 rows (what a 500 Hz agent commits every 20 ms).
   Disk ceiling, in the same run: the link's batch bytes appended to a file, one fdatasync per full window of them
   (the most the learner commits at once): an upper bound for any receiver that makes what it acks durable.
2. Latency. A robot process logs transitions at 500 Hz through the agent's TransitionLog and ships them; the learner
   process moves them from its store into an OnlineLearner's replay. Latency is replay insertion time minus the
   transition's creation time (both CLOCK_MONOTONIC on one host).
3. Policy push. The learner publishes a 1 MB ONNX policy; 4 robot processes fetch, verify, write and load it.
   Time from publish() to the last robot's hand-over to its agent.

    .venv/bin/python bench/transport.py [--transitions 200000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "transport.json"
ROBOT = "robot-0"


def _transition(episode: int, step: int, created_ns: int = 0):
    from robot_app.agent.transition_log import Transition

    obs = np.full(6, step % 7, np.float32)
    return Transition(ROBOT, episode, step, obs, np.array([1.0], np.float32), 0.5, obs, False, False,
                      np.array([1.0], np.float32), "p1", (), created_ns, created_ns, created_ns, step)


def _keys(tmp: Path, robots: list[str]) -> Path:
    from robot_app.demo import _keys

    return _keys(tmp, robots)


def _security(keys: Path, robot: str) -> tuple[str, str]:
    return f"{keys}/{robot}.key_secret", f"{keys}/learner.key"


def _endpoint() -> str:
    from robot_app.demo import _free_port

    return f"tcp://127.0.0.1:{_free_port()}"


def _ingest_server(store_path: str, endpoint: str, keys: str):
    from robot_app.learner.ingest import IngestServer, IngestStore

    server = IngestServer(IngestStore(store_path), endpoint, (f"{keys}/learner.key_secret", f"{keys}/allowed"),
                          announce_endpoint=endpoint.rsplit(":", 1)[0] + ":0")
    threading.Thread(target=server.serve, daemon=True).start()
    return server


def _learner(store_path: str, endpoint: str, keys: str, ready, done) -> None:
    server = _ingest_server(store_path, endpoint, keys)
    ready.set()
    done.wait()
    server.stop()


def _link(outbox, endpoint: str, keys: str, robot: str = ROBOT, **kwargs):
    from robot_app.transport.robot_link import RobotLink

    link = RobotLink(outbox, endpoint, robot, _security(Path(keys), robot), **kwargs)
    threading.Thread(target=link.run, daemon=True).start()
    return link


def _drain(outbox_path: str, endpoint: str, keys: str, result) -> None:
    from robot_app.agent.transition_log import TransitionLog

    log = TransitionLog(outbox_path)
    start = time.perf_counter()
    link = _link(log, endpoint, keys)
    while log.held():
        time.sleep(0.002)
    result["seconds"] = time.perf_counter() - start
    result["resends"] = link.resends
    link.stop()
    log.close()


def measure_ours(n: int, chunk_rows: int, tmp: Path) -> dict:
    from robot_app.agent.transition_log import TransitionLog
    from robot_app.learner.ingest import IngestStore

    keys = _keys(tmp / "k", [ROBOT])
    outbox = TransitionLog(tmp / "outbox.sqlite", chunk_rows=chunk_rows)
    for i in range(n):
        outbox.append(_transition(i // 400, i % 400))
    outbox.close()
    endpoint = _endpoint()
    ready, done, result = mp.Event(), mp.Event(), mp.Manager().dict()
    learner = mp.Process(target=_learner, args=(str(tmp / "ingest.sqlite"), endpoint, str(keys), ready, done))
    learner.start()
    ready.wait(30)
    robot = mp.Process(target=_drain, args=(str(tmp / "outbox.sqlite"), endpoint, str(keys), result))
    robot.start()
    robot.join()
    done.set()
    learner.join(30)
    stored = IngestStore(tmp / "ingest.sqlite").count()
    return {"transitions": n, "chunk_rows": chunk_rows, "stored": stored, "resends": result["resends"],
            "seconds": result["seconds"], "per_s": n / result["seconds"]}


def _raw_pull(endpoint: str, messages: int, ready) -> None:
    import zmq

    socket = zmq.Context().socket(zmq.PULL)
    socket.bind(endpoint)
    ready.set()
    for _ in range(messages):
        socket.recv()


def _batch_bytes(rows: int) -> bytes:
    """One encoded TransitionBatch of `rows` transitions: the bytes the link puts on the wire."""
    from robot_app.transport.messages import TransitionBatch, TransitionChunk, encode

    chunk = TransitionChunk.from_transitions(1, [_transition(0, i) for i in range(rows)]).pack()
    return encode(TransitionBatch(ROBOT, "0" * 32, 0, chunk))


def measure_raw(n: int, chunk_rows: int) -> dict:
    """The same bytes ours puts on the wire per chunk, PUSH to PULL, plaintext, no acks, no storage."""
    import zmq

    payload = _batch_bytes(chunk_rows)
    messages = n // chunk_rows
    endpoint = _endpoint()
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
    return {"transitions": messages * chunk_rows, "payload_bytes": len(payload), "seconds": seconds,
            "per_s": messages * chunk_rows / seconds}


def measure_disk_ceiling(n: int, tmp: Path, batch_rows: int = 256, window: int = 8) -> dict:
    """Transitions/s that this disk can make durable: the bytes of a full window of the link's batches (the most the
    learner commits in one round) appended to a file, one fdatasync each. SQLite's WAL writes every byte twice."""
    block = _batch_bytes(batch_rows) * window
    syncs = max(1, n // (batch_rows * window))
    fd = os.open(tmp / "ceiling.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        start = time.perf_counter()
        for _ in range(syncs):
            os.write(fd, block)
            os.fdatasync(fd)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(tmp / "ceiling.bin")
    return {"transitions": syncs * window * batch_rows, "bytes_per_sync": len(block), "seconds": seconds,
            "per_s": syncs * window * batch_rows / seconds, "mb_per_s": syncs * len(block) / seconds / 1e6}


def _producer(outbox_path: str, endpoint: str, keys: str, seconds: float, rate_hz: float) -> None:
    from robot_app.agent.transition_log import TransitionLog

    log = TransitionLog(outbox_path)
    link = _link(log, endpoint, keys)
    period, start = 1.0 / rate_hz, time.monotonic()
    for i in range(int(seconds * rate_hz)):
        time.sleep(max(0.0, start + i * period - time.monotonic()))
        log.append(_transition(i // 400, i % 400, time.monotonic_ns()))
    time.sleep(0.1)  # past the writer's flush interval, so held() counts the last rows too
    while log.held():
        time.sleep(0.01)
    link.stop()
    log.close()


def _latency_learner(store_path: str, out: str, endpoint: str, keys: str, ready, done, result) -> None:
    from robot_app.learner.ingest import IngestStore
    from robot_app.learner.online import OnlineLearner
    from robot_app.robot.spec import load_robot_spec

    server = _ingest_server(store_path, endpoint, keys)
    latencies: list[np.ndarray] = []

    def on_chunk(robot_id, chunk):  # called as the chunk enters replay
        latencies.append((time.monotonic_ns() - chunk.columns["next_obs_time_ns"]) / 1e6)

    learner = OnlineLearner(IngestStore(store_path), out, load_robot_spec("furuta"), warmup=10**9, on_chunk=on_chunk)
    ready.set()
    while not done.is_set():  # the learner service's loop, with no updates owed
        if not learner.ingest(limit=500):
            time.sleep(0.02)
    learner.ingest(limit=10**9)
    server.stop()
    result["latency_ms"] = np.concatenate(latencies).tolist()


def measure_latency(tmp: Path, seconds: float, rate_hz: float = 500.0) -> dict:
    keys = _keys(tmp / "k", [ROBOT])
    endpoint = _endpoint()
    ready, done, result = mp.Event(), mp.Event(), mp.Manager().dict()
    learner = mp.Process(target=_latency_learner, args=(str(tmp / "ingest.sqlite"), str(tmp / "learner"), endpoint,
                                                         str(keys), ready, done, result))
    learner.start()
    ready.wait(60)
    robot = mp.Process(target=_producer, args=(str(tmp / "outbox.sqlite"), endpoint, str(keys), seconds, rate_hz))
    robot.start()
    robot.join()
    done.set()
    learner.join(60)
    latency = np.array(result["latency_ms"])
    return {"rate_hz": rate_hz, "transitions": len(latency), "p50_ms": float(np.percentile(latency, 50)),
            "p99_ms": float(np.percentile(latency, 99)), "max_ms": float(latency.max())}


def _policy_robot(robot: str, tmp: str, endpoint: str, announce: str, keys: str, ready, loaded) -> None:
    from robot_app.agent.loading import load_policy
    from robot_app.agent.transition_log import TransitionLog
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    spec = load_robot_spec("furuta")
    layout = make_task(spec).obs_layout
    got = threading.Event()
    link = _link(TransitionLog(Path(tmp) / f"{robot}.sqlite"), endpoint, keys, robot, announcements=announce,
                 policy_dir=Path(tmp) / robot, load_policy=lambda path: load_policy(path, spec, layout),
                 on_policy=lambda policy: (loaded.__setitem__(robot, time.monotonic()), got.set()))
    while not link.learner_alive:
        time.sleep(0.01)
    ready.release()
    got.wait(120)
    link.stop()


def _big_policy(path: Path) -> int:
    from policies.export import DeployedPolicy, export_onnx
    from policies.networks import SquashedGaussianActor
    from policies.normalizer import RunningNormalizer
    from robot_app.robot.spec import load_robot_spec
    from robot_app.robot.task import make_task

    layout = make_task(load_robot_spec("furuta")).obs_layout
    export_onnx(DeployedPolicy(RunningNormalizer(6), SquashedGaussianActor(6, 1, (512, 512)), [-5.0], [5.0]), path,
                env="furuta:swingup", obs_layout=list(layout), action_layout=["motor"], action_repeat=1,
                training_step=0, source_run="bench", horizon=0)
    return path.stat().st_size


def measure_policy_push(tmp: Path, robots: int = 4) -> dict:
    names = [f"robot-{i}" for i in range(robots)]
    keys = _keys(tmp / "k", names)
    size = _big_policy(tmp / "big.onnx")
    from robot_app.learner.ingest import IngestStore

    server = _ingest_server(str(tmp / "ingest.sqlite"), _endpoint(), str(keys))
    ready, loaded = mp.Semaphore(0), mp.Manager().dict()
    procs = [mp.Process(target=_policy_robot, args=(name, str(tmp), server.endpoint, server.announce_endpoint,
                                                    str(keys), ready, loaded)) for name in names]
    for proc in procs:
        proc.start()
    for _ in names:
        ready.acquire(timeout=60)
    time.sleep(0.5)  # let the SUB sockets finish subscribing
    start = time.monotonic()
    server.publish(tmp / "big.onnx")
    for proc in procs:
        proc.join(120)
    server.stop()
    IngestStore(tmp / "ingest.sqlite").close()
    times = sorted(t - start for t in loaded.values())
    return {"robots": robots, "artifact_bytes": size, "loaded": len(times), "first_s": times[0], "all_s": times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the 500 Hz latency run")
    args = parser.parse_args()
    results = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "date": time.strftime("%Y-%m-%d"),
               "throughput": []}
    results["disk_ceiling"] = measure_disk_ceiling(args.transitions, Path(tempfile.mkdtemp()))
    print(json.dumps(results["disk_ceiling"]), flush=True)
    for chunk_rows in (256, 10):
        n = args.transitions if chunk_rows == 256 else args.transitions // 4
        ours, raw = measure_ours(n, chunk_rows, Path(tempfile.mkdtemp())), measure_raw(n, chunk_rows)
        results["throughput"].append({"ours": ours, "raw_pyzmq_push_pull": raw, "ratio": ours["per_s"] / raw["per_s"],
                                      "disk_ceiling_over_raw": results["disk_ceiling"]["per_s"] / raw["per_s"]})
        print(json.dumps(results["throughput"][-1]), flush=True)
    results["latency"] = measure_latency(Path(tempfile.mkdtemp()), args.seconds)
    print(json.dumps(results["latency"]), flush=True)
    results["policy_push"] = measure_policy_push(Path(tempfile.mkdtemp()))
    print(json.dumps(results["policy_push"]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
