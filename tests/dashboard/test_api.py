"""The dashboard's API with FastAPI's test client: tokens and roles, Origins, the audit log, and bad input refused."""

import contextlib
import json
import os
import sqlite3
import threading

import pytest
from fastapi.testclient import TestClient

from robot_app.common.signing import generate_signing_keys
from robot_app.dashboard.app import DashboardConfig, create_app
from robot_app.dashboard.audit import AuditLog
from robot_app.dashboard.feed import LearnerFeed
from robot_app.dashboard.server import ServingError, bind, origins
from robot_app.dashboard.tokens import TokenError, TokenStore
from robot_app.learner.ingest import IngestServer, IngestStore
from robot_app.learner.registry import PolicyRegistry
from robot_app.robot.spec import load_robot_spec
from tests.conftest import free_port
from tests.dashboard.stack import validated_registry

ORIGIN = "http://testserver"


@pytest.fixture
def dashboard(tmp_path):
    """A dashboard (no learner behind it) over a registry of two validated policies, and a token per role."""
    with open_dashboard(tmp_path, f"tcp://127.0.0.1:{free_port()}") as client:
        yield client


@contextlib.contextmanager
def open_dashboard(tmp_path, learner: str):
    generate_signing_keys(tmp_path / "keys", "gate")
    versions = validated_registry(tmp_path / "registry", tmp_path / "keys" / "gate.sign_key")
    state = tmp_path / "dashboard"
    tokens = {role: TokenStore(state).add(name, role) for name, role in
              (("victor", "viewer"), ("alice", "operator"), ("root", "admin"))}
    (tmp_path / "learner").mkdir()
    (tmp_path / "learner" / "progress.jsonl").write_text("")
    config = DashboardConfig(state=state, origins={ORIGIN}, registry=tmp_path / "registry",
                             learner_out=tmp_path / "learner")
    feed = LearnerFeed(learner, load_robot_spec("furuta"), None, on_update=lambda *_: None)
    with TestClient(create_app(config, feed)) as client:
        client.tokens, client.versions, client.state, client.registry = tokens, versions, state, tmp_path / "registry"
        yield client


def auth(client, role: str) -> dict:
    return {"Authorization": f"Bearer {client.tokens[role]}"}


def states(client) -> dict:
    registry = PolicyRegistry(client.registry)
    try:
        return {p.version: p.state for p in registry.list()}
    finally:
        registry.close()


def audit(client) -> list[dict]:
    return client.get("/api/audit", headers=auth(client, "viewer")).json()


def test_no_token_is_401_and_a_wrong_token_too(dashboard):
    for path in ("/api/fleet", "/api/policies", "/metrics"):
        assert dashboard.get(path).status_code == 401
        assert dashboard.get(path, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    answer = dashboard.post("/api/stop", json={})
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert dashboard.get("/healthz").json() == {"status": "ok"}  # the container's healthcheck needs no token


def test_token_commands_take_the_state_from_the_environment_as_the_served_dashboard_does(tmp_path, capsys,
                                                                                          monkeypatch):
    from robot_app.cli import main

    monkeypatch.setenv("ROBOT_APP_DASHBOARD_STATE", str(tmp_path / "from-env"))
    assert main(["dashboard", "token", "add", "ann", "--role", "operator"]) == 0
    assert TokenStore(tmp_path / "from-env").identify(capsys.readouterr().out.strip()).name == "ann"
    assert main(["dashboard", "token", "list", "--state", str(tmp_path / "flag")]) == 0  # a flag wins
    assert "ann" not in capsys.readouterr().out
    monkeypatch.setenv("ROBOT_APP_DASHBOARD_ORIGIN", "https://robots.example")  # a repeatable flag needs a JSON list
    assert main(["dashboard", "token", "list"]) == 2
    assert "ROBOT_APP_DASHBOARD_ORIGIN: Input should be a valid list" in capsys.readouterr().err
    monkeypatch.setenv("ROBOT_APP_DASHBOARD_ORIGIN", '["https://robots.example"]')
    assert main(["dashboard", "token", "list"]) == 0 and "ann" in capsys.readouterr().out


def test_a_viewer_reads_but_cannot_deploy_and_the_attempt_is_audited(dashboard):
    assert dashboard.get("/api/policies", headers=auth(dashboard, "viewer")).status_code == 200
    before = states(dashboard)
    answer = dashboard.post("/api/deploy", json={"version": dashboard.versions[0], "confirm": True},
                            headers=auth(dashboard, "viewer"))
    assert answer.status_code == 403 and "needs the operator role" in answer.json()["detail"]
    assert states(dashboard) == before
    entry = audit(dashboard)[0]
    assert (entry["who"], entry["role"], entry["action"], entry["outcome"]) == (
        "victor", "viewer", "POST /api/deploy", "forbidden")
    for path, body in (("/api/stop", {}), ("/api/reset", {"confirm": True}), ("/api/rollback", {"confirm": True})):
        assert dashboard.post(path, json=body, headers=auth(dashboard, "viewer")).status_code == 403


def test_an_operator_deploys_and_rolls_back_and_each_move_is_audited(dashboard):
    first, second = dashboard.versions
    for version in (first, second):
        answer = dashboard.post("/api/deploy", json={"version": version, "confirm": True},
                                headers=auth(dashboard, "operator"))
        assert answer.status_code == 200 and answer.json()["policy"]["state"] == "deployed"
    assert states(dashboard) == {first: "retired", second: "deployed"}
    answer = dashboard.post("/api/rollback", json={"confirm": True}, headers=auth(dashboard, "operator"))
    assert answer.status_code == 200 and states(dashboard) == {first: "deployed", second: "retired"}
    entries = audit(dashboard)
    assert [(e["action"], e["target"], e["outcome"]) for e in entries[:3]] == [
        ("rollback", second, f"{first} deployed"), ("deploy", second, f"{second} deployed"),
        ("deploy", first, f"{first} deployed")]
    assert all(e["who"] == "alice" and e["at"].endswith("Z") for e in entries[:3])
    history = dashboard.get("/api/history", headers=auth(dashboard, "viewer")).json()
    assert history[0]["actor"] == "dashboard:alice" and history[0]["to_state"] == "deployed"


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(dashboard):
    before, operator = states(dashboard), auth(dashboard, "operator")
    cases = [
        ("/api/deploy", {"version": "0123456789abcdef", "confirm": True}, 404, "no policy '0123456789abcdef'"),
        ("/api/deploy", {"version": dashboard.versions[0]}, 422, "confirm"),  # no confirmation
        ("/api/deploy", {"version": dashboard.versions[0], "confirm": False}, 422, "confirm"),
        ("/api/deploy", {"version": dashboard.versions[0], "confirm": True, "force": 1}, 422, "force"),
        ("/api/rollback", {"confirm": True}, 409, "nothing is deployed"),
        ("/api/stop", {"robot": "robot-9"}, 404, "no robot 'robot-9' in the fleet"),
        ("/api/reset", {"robot": "robot-9"}, 422, "confirm"),
    ]
    for path, body, status, words in cases:
        answer = dashboard.post(path, json=body, headers=operator)
        assert answer.status_code == status, (path, body, answer.text)
        assert words in json.dumps(answer.json()["detail"]), (path, answer.text)
    answer = dashboard.post("/api/deploy", content=b"{not json", headers=operator)
    assert answer.status_code == 422
    assert dashboard.get("/api/policies/0123456789abcdef", headers=operator).status_code == 404
    assert dashboard.get(f"/api/policies/{dashboard.versions[0]}/plots/../../registry.sqlite",
                         headers=operator).status_code == 404
    assert states(dashboard) == before
    assert [(e["action"], e["outcome"]) for e in audit(dashboard)] == [("rollback", "refused"), ("deploy", "refused")]


def test_learning_rows_and_report_plots_come_through_the_typed_models(dashboard, tmp_path):
    row = {"elapsed_s": 10.0, "transitions": 500, "updates": 100, "updates_per_transition": 0.2,
           "configured_updates_per_transition": 1.0, "owed_updates": 0, "candidates": 0, "episodes": 2,
           "recent_return": 80.5, "robots": {}, "running": {}, "rejected": {}, "quarantined": {}, "gate": None,
           "losses": {"critic": 0.5, "alpha": 0.1}}
    later = row | {"elapsed_s": 20.0, "transitions": 900, "updates": 400}
    with open(tmp_path / "learner" / "progress.jsonl", "w") as f:
        f.write("\n".join([json.dumps(row), '{"elapsed_s": "damaged"}', json.dumps(later), '{"half a line'])
                )  # a damaged row is skipped, and the unfinished last line is not read
    rows = dashboard.get("/api/learning", headers=auth(dashboard, "viewer")).json()
    assert [r["transitions"] for r in rows] == [500, 900] and rows[1]["updates_per_s"] == 30.0
    version = dashboard.versions[0]
    folder = dashboard.registry / "reports" / version
    folder.mkdir(parents=True)
    (folder / "returns.png").write_bytes(b"\x89PNG not really")
    answer = dashboard.get(f"/api/policies/{version}/plots/returns.png", headers=auth(dashboard, "viewer"))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    missing = dashboard.get(f"/api/policies/{version}/plots/traces.png", headers=auth(dashboard, "viewer"))
    assert missing.status_code == 404 and "has not been through the gate" in missing.json()["detail"]


def test_a_foreign_origin_is_refused_on_requests_and_websockets(dashboard):
    viewer = auth(dashboard, "viewer")
    assert dashboard.get("/api/fleet", headers={**viewer, "Origin": ORIGIN}).status_code == 200
    foreign = {**auth(dashboard, "operator"), "Origin": "http://evil.example"}
    answer = dashboard.post("/api/stop", json={}, headers=foreign)
    assert answer.status_code == 403 and "evil.example" in answer.json()["detail"]
    protocols = ["robot-app.v1", f"bearer.{dashboard.tokens['viewer']}"]
    with dashboard.websocket_connect("/ws", subprotocols=protocols, headers={"Origin": ORIGIN}) as ws:
        message = ws.receive_json()
        assert message["fleet"] == {} and message["feed_age_s"] is None and message["dropped"] == 0
    from starlette.websockets import WebSocketDisconnect

    refused = [({"Origin": "http://evil.example"}, protocols), ({}, protocols),
               ({"Origin": ORIGIN}, ["robot-app.v1", "bearer.wrong"]), ({"Origin": ORIGIN}, ["robot-app.v1"])]
    for headers, offered in refused:
        with pytest.raises(WebSocketDisconnect):
            with dashboard.websocket_connect("/ws", subprotocols=offered, headers=headers) as ws:
                ws.receive_json()


def test_only_an_admin_manages_tokens_and_a_new_token_works_at_once(dashboard):
    assert dashboard.get("/api/tokens", headers=auth(dashboard, "operator")).status_code == 403
    answer = dashboard.post("/api/tokens", json={"name": "olga", "role": "operator"}, headers=auth(dashboard, "admin"))
    assert answer.status_code == 200
    token = answer.json()["token"]
    assert dashboard.get("/api/whoami", headers={"Authorization": f"Bearer {token}"}).json()["role"] == "operator"
    listed = dashboard.get("/api/tokens", headers=auth(dashboard, "admin")).json()
    assert {t["name"] for t in listed} == {"victor", "alice", "root", "olga"} and all("token" not in t for t in listed)
    assert dashboard.post("/api/tokens", json={"name": "olga", "role": "viewer"},
                          headers=auth(dashboard, "admin")).status_code == 409
    assert dashboard.delete("/api/tokens/olga", headers=auth(dashboard, "admin")).status_code == 200
    assert dashboard.get("/api/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert [e["action"] for e in audit(dashboard)[:3]] == ["token remove", "token add", "token add"]


def test_a_token_removed_by_another_process_stops_working_at_once(dashboard):
    assert dashboard.get("/api/whoami", headers=auth(dashboard, "operator")).status_code == 200
    TokenStore(dashboard.state).remove("alice")  # as `robot-app dashboard token remove alice` does
    assert dashboard.get("/api/whoami", headers=auth(dashboard, "operator")).status_code == 401


def test_a_removed_token_closes_the_websockets_it_opened(dashboard):
    from starlette.websockets import WebSocketDisconnect

    protocols = ["robot-app.v1", f"bearer.{dashboard.tokens['viewer']}"]
    with dashboard.websocket_connect("/ws", subprotocols=protocols, headers={"Origin": ORIGIN}) as ws:
        ws.receive_json()
        TokenStore(dashboard.state).remove("victor")
        with pytest.raises(WebSocketDisconnect) as closed:
            for _ in range(200):  # 25 a second; the token is checked again every second
                ws.receive_json()
    assert closed.value.code == 1008


def test_a_hand_edited_token_file_with_an_unknown_role_is_refused_by_name(tmp_path):
    (tmp_path / "tokens.json").write_text('[{"name": "x", "role": "root", "salt": "00", "digest": "00", '
                                          '"created_at": "now"}]')
    with pytest.raises(TokenError, match="tokens.json: not a token file.*role"):
        TokenStore(tmp_path)


def test_the_dashboards_own_origins_include_ipv6_loopback_in_brackets():
    assert origins("::1", 8000, []) == {"http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"}
    assert origins("10.0.0.5", 80, ["https://robots.example/"]) == {"http://10.0.0.5:80", "https://robots.example"}


def test_tokens_are_kept_only_as_hashes_in_a_private_file(dashboard):
    path = dashboard.state / "tokens.json"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert all(token not in text for token in dashboard.tokens.values())
    assert TokenStore(dashboard.state).identify(dashboard.tokens["admin"]).name == "root"


def test_the_audit_log_refuses_to_be_rewritten(tmp_path):
    log = AuditLog(tmp_path / "audit.sqlite")
    log.record("alice", "operator", "software_stop", "fleet", "acknowledged")
    log.close()
    db = sqlite3.connect(tmp_path / "audit.sqlite")
    for statement in ("UPDATE audit SET outcome = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    assert db.execute("SELECT outcome FROM audit").fetchall() == [("acknowledged",)]


def test_openapi_marks_every_control_endpoint_with_its_role(dashboard):
    paths = dashboard.get("/openapi.json").json()["paths"]
    roles = {(path, method): operation.get("x-required-role") for path, item in paths.items()
             for method, operation in item.items()}
    for endpoint in (("/api/stop", "post"), ("/api/reset", "post"), ("/api/deploy", "post"), ("/api/rollback", "post")):
        assert roles[endpoint] == "operator"
        assert "Requires the **operator** role" in paths[endpoint[0]][endpoint[1]]["description"]
    assert roles[("/api/tokens", "post")] == roles[("/api/tokens", "get")] == roles[("/api/tokens/{name}", "delete")] \
        == "admin"


def test_a_stop_no_robot_can_receive_is_refused_and_audited(tmp_path):
    store = IngestStore(tmp_path / "ingest.sqlite")
    server = IngestServer(store, "tcp://127.0.0.1:0", None, dashboard_endpoint="tcp://127.0.0.1:0")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        with open_dashboard(tmp_path, server.dashboard.endpoint) as dashboard:
            answer = dashboard.post("/api/stop", json={}, headers=auth(dashboard, "operator"))
            assert answer.status_code == 409 and "no robot has been heard" in answer.json()["detail"]
            assert (audit(dashboard)[0]["action"], audit(dashboard)[0]["outcome"]) == ("software_stop", "refused")
    finally:
        server.stop()
        thread.join(timeout=10)
        store.close()


def test_serving_beyond_loopback_needs_public(caplog):
    with pytest.raises(ServingError, match="--public"):
        bind("0.0.0.0", 0, public=False)
    sock = bind("0.0.0.0", 0, public=True)
    sock.close()
    assert "WITHOUT TLS" in caplog.text


def test_token_commands_take_state_on_either_side_of_token(tmp_path, capsys):
    from robot_app.cli import main

    assert main(["dashboard", "token", "add", "bob", "--role", "viewer", "--state", str(tmp_path / "a")]) == 0
    assert main(["dashboard", "--state", str(tmp_path / "b"), "token", "add", "eve", "--role", "admin"]) == 0
    tokens = capsys.readouterr().out.split()
    assert TokenStore(tmp_path / "a").identify(tokens[0]).name == "bob"
    assert TokenStore(tmp_path / "b").identify(tokens[1]).role == "admin"
    assert main(["dashboard", "token", "add", "bob", "--role", "viewer", "--state", str(tmp_path / "a")]) == 2
    assert "a token named 'bob' exists" in capsys.readouterr().err
