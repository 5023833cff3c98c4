"""`robot-app health`, the containers' healthcheck: a fresh heartbeat file or a 2xx answer is healthy, else a reason."""

import http.server
import os
import threading
import time

import pytest

from robot_app.cli import main
from robot_app.common.health import Heartbeat
from tests.conftest import free_port


class Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(timeout=10)


def test_a_fresh_heartbeat_is_healthy_and_a_stale_or_missing_one_is_not(tmp_path, capsys):
    beat = tmp_path / "alive"
    assert main(["health", str(beat)]) == 1
    assert "no heartbeat file" in capsys.readouterr().err
    Heartbeat(beat).beat()
    assert main(["health", str(beat)]) == 0
    old = time.time() - 120
    os.utime(beat, (old, old))
    assert main(["health", str(beat), "--max-age", "30"]) == 1
    assert "over 30 s: the loop is stuck or stopped" in capsys.readouterr().err
    Heartbeat(beat).beat()  # touching again makes it fresh
    assert main(["health", str(beat), "--max-age", "30"]) == 0
    Heartbeat(None).beat()  # no file asked for: nothing written, nothing raised
    Heartbeat(tmp_path / "no-such-folder" / "alive").beat()  # one it cannot write is logged, never raised


def test_a_heartbeat_that_cannot_be_read_or_a_bad_url_is_unhealthy_not_a_crash(tmp_path, capsys):
    assert main(["health", str(tmp_path / "a-file" / "under-a-file")]) == 1
    (tmp_path / "a-file").write_text("")
    assert main(["health", str(tmp_path / "a-file" / "under-a-file")]) == 1  # ENOTDIR: an OSError, not a crash
    assert main(["health", "http://[bad"]) == 1
    assert capsys.readouterr().err.count("unhealthy:") == 3


def test_an_endpoint_is_healthy_when_it_answers_2xx_and_never_through_a_proxy(server, capsys, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing there: a probe that used it would fail
    assert main(["health", f"{server}/ok"]) == 0
    assert "answered 200" in capsys.readouterr().out
    assert main(["health", f"{server}/broken"]) == 1
    assert "answered 503" in capsys.readouterr().err
    assert main(["health", f"http://127.0.0.1:{free_port()}/metrics"]) == 1
    assert "refused" in capsys.readouterr().err
