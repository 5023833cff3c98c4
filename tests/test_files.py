"""write_atomic: a reader finds the old file or the whole new one; a failed write leaves nothing behind."""

import threading

import pytest

from policies.files import write_atomic


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
