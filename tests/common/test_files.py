"""write_atomic: a reader finds the old file or the whole new one; a failed or killed write leaves nothing behind."""

import os
import threading
import time

import pytest

from robot_app.common.files import STALE_TEMPORARY_S, write_atomic


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "policy.onnx"
    write_atomic(target, b"old")

    def fail_halfway(f):
        f.write(b"half of the new")
        raise RuntimeError("serialiser failed")

    with pytest.raises(RuntimeError, match="serialiser failed"):
        write_atomic(target, fail_halfway)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.onnx"]


def test_concurrent_writers_of_one_path_never_mix_their_bytes(tmp_path):
    """Each writer has its own temporary file, so the result is always one writer's whole content."""
    target = tmp_path / "state.bin"
    contents = [bytes([i]) * 200_000 for i in range(8)]
    errors = []

    def write(content):
        try:
            for _ in range(5):
                write_atomic(target, content)
        except Exception as error:  # pragma: no cover - the failure is reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(c,)) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_temporaries_left_by_killed_writers_are_removed_once_stale(tmp_path):
    """A kill -9 mid-write leaves its temporary file beside the target. The next write of that target removes it
    once it is stale; a fresh one (a writer still at work) and other targets' files stay."""
    target = tmp_path / "registry.json"
    stale, fresh = tmp_path / "registry.json.k1ll3d.tmp", tmp_path / "registry.json.wr1t1n.tmp"
    other = tmp_path / "other.json.k1ll3d.tmp"
    for leftover in (stale, fresh, other):
        leftover.write_bytes(b"half of a write")
    hour_ago = time.time() - STALE_TEMPORARY_S - 60
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))

    write_atomic(target, b"whole")

    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json.k1ll3d.tmp", "registry.json",
                                                           "registry.json.wr1t1n.tmp"]
