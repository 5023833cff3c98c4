"""The dashboard's FastAPI app: the page, its read API, the operators' controls, the telemetry WebSocket, /metrics.

Every request carries a bearer token (`robot-app dashboard token add`); its role decides what it may do: a viewer
reads, an operator also stops, resets, deploys and rolls back, an admin also manages tokens. A request whose Origin is
not the dashboard's own is refused, and so is a WebSocket handshake without the dashboard's Origin and a token. Every
control action is written to the append-only audit log with who, what, when and what came of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.websockets import WebSocketDisconnect

from robot_app.common.reports import GateReport, ProgressRow
from robot_app.dashboard.audit import AuditLog
from robot_app.dashboard.feed import LearnerFeed
from robot_app.dashboard.hub import Client, Hub
from robot_app.dashboard.tokens import ROLES, Identity, Role, TokenError, TokenStore
from robot_app.learner.registry import PolicyRegistry, RegistryError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SUBPROTOCOL = "robot-app.v1"  # the page offers it and "bearer.<token>"; the dashboard answers with this one
ACK_TIMEOUT_S = 2.0  # how long a stop or reset waits for the learner's receipt, then for the robots' reports
REPORT_PLOTS = ("returns.png", "traces.png")
TOKEN_RECHECK_S = 1.0  # how often an open WebSocket's token is checked again


class TokenRevoked(Exception):
    """The token that opened a WebSocket was removed."""


@dataclasses.dataclass
class DashboardConfig:
    state: Path  # tokens.json and audit.sqlite
    origins: set[str]  # the dashboard's own origins, e.g. http://127.0.0.1:8000
    registry: Path | None = None
    learner_out: Path | None = None  # the learner's --out: progress.jsonl


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StopBody(_Body):
    robot: str | None = None  # None: the whole fleet


class ResetBody(_Body):
    robot: str | None = None
    confirm: Literal[True]


class DeployBody(_Body):
    version: str
    confirm: Literal[True]


class RollbackBody(_Body):
    confirm: Literal[True]


class TokenBody(_Body):
    name: str
    role: Role


def _needs(role: str) -> dict:
    """What OpenAPI shows of an endpoint's role."""
    return {"openapi_extra": {"x-required-role": role}, "description": f"Requires the **{role}** role."}


def create_app(config: DashboardConfig, feed: LearnerFeed) -> FastAPI:
    tokens, audit = TokenStore(config.state), AuditLog(config.state / "audit.sqlite")
    hub = Hub(feed.feed_age_s)
    registry_box: list[PolicyRegistry] = []

    def registry() -> PolicyRegistry:
        if not registry_box:
            if config.registry is None:
                raise HTTPException(404, "this dashboard was started without --registry")
            try:
                registry_box.append(PolicyRegistry(config.registry, create=False))
            except RegistryError as error:
                raise HTTPException(503, str(error)) from None
        return registry_box[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        feed.on_update = lambda *update: loop.call_soon_threadsafe(hub.publish, *update)
        feed.start()
        tasks = [asyncio.create_task(hub.flush_forever()), asyncio.create_task(_registry_events())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            feed.stop()
            audit.close()
            for opened in registry_box:
                opened.close()

    async def _registry_events() -> None:
        """Gate verdicts and deploys, from the registry's history, as events."""
        seen = None
        while True:
            with contextlib.suppress(HTTPException, RegistryError, ValueError):
                history = registry().history()
                if seen is not None:
                    hub.add_events([{"robot": "", "kind": "registry", "text": f"{h['version']}: {h['from_state']} → "
                                     f"{h['to_state']} by {h['actor']} ({h['reason']})"} for h in history[seen:]])
                seen = len(history)
            await asyncio.sleep(2.0)

    app = FastAPI(title="robot_app dashboard", lifespan=lifespan,
                  description="The operator's view of a learning fleet. Authenticate with `Authorization: Bearer "
                              "<token>` (`robot-app dashboard token add NAME --role R`).")
    app.state.hub, app.state.feed, app.state.tokens = hub, feed, tokens

    @app.middleware("http")
    async def same_origin_only(request: Request, call_next):
        origin = request.headers.get("origin")
        if origin is not None and origin not in config.origins:
            return JSONResponse({"detail": f"Origin {origin} is not this dashboard's"}, status_code=403)
        return await call_next(request)

    def identify(authorization: str | None) -> Identity:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is needed (robot-app dashboard token add)",
                                headers={"WWW-Authenticate": "Bearer"})
        identity = tokens.identify(token.strip())
        if identity is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return identity

    def role(needed: str):
        def check(request: Request) -> Identity:
            identity = identify(request.headers.get("authorization"))
            if not identity.may(needed):
                detail = f"{identity.name} is a {identity.role}; this needs the {needed} role"
                if needed != "viewer":  # an attempt at control is recorded, refused or not
                    audit.record(identity.name, identity.role, f"{request.method} {request.url.path}", "",
                                 "forbidden", detail)
                raise HTTPException(403, detail)
            return identity
        return Depends(check)

    viewer, operator, admin = role("viewer"), role("operator"), role("admin")

    # ---- the page ---------------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz():  # no token: a container healthcheck's; it tells nothing of the fleet
        return {"status": "ok"}

    # ---- reading ----------------------------------------------------------------------------------------------------

    @app.get("/api/whoami")
    def whoami(who: Identity = viewer) -> dict:
        return {"name": who.name, "role": who.role, "roles": list(ROLES)}

    @app.get("/api/robot")
    def robot(who: Identity = viewer) -> dict:
        """What the page labels its plots with: the joints, the actuators and their command limits."""
        low, high = feed.spec.command_limits
        return {"name": feed.spec.name, "joints": list(feed.task.joints),
                "actuators": [a.name for a in feed.spec.actuators], "command_low": low, "command_high": high,
                "control_hz": round(1.0 / feed.spec.period_s, 3)}

    @app.get("/api/fleet")
    def fleet(who: Identity = viewer) -> dict:
        return {"feed_age_s": _finite(feed.feed_age_s()), "robots": feed.fleet()}

    @app.get("/api/learning")
    def learning(who: Identity = viewer) -> list[dict]:
        """The learner's progress rows (ProgressRow), with updates/s between rows."""
        rows = _progress(config.learner_out)
        out, before = [], None
        for row in rows:
            rate = None
            if before is not None and row.elapsed_s > before.elapsed_s:
                rate = (row.updates - before.updates) / (row.elapsed_s - before.elapsed_s)
            out.append({**row.model_dump(), "updates_per_s": rate})
            before = row
        return out

    @app.get("/api/policies")
    def policies(who: Identity = viewer) -> list[dict]:
        return [_policy(record) for record in registry().list()]

    @app.get("/api/policies/{version}")
    def policy(version: str, who: Identity = viewer) -> dict:
        record = _registry_call(lambda: registry().get(version))
        return {**_policy(record), "report": record.report, "history": registry().history(version)}

    @app.get("/api/policies/{version}/plots/{name}")
    def report_plot(version: str, name: str, who: Identity = viewer):
        if name not in REPORT_PLOTS:
            raise HTTPException(404, f"no plot {name!r}; a report has {', '.join(REPORT_PLOTS)}")
        _registry_call(lambda: registry().get(version))
        path = registry().folder / "reports" / version / name
        if not path.is_file():
            raise HTTPException(404, f"policy {version} has no {name} (it has not been through the gate)")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/history")
    def history(who: Identity = viewer) -> list[dict]:
        return registry().history()[::-1]

    @app.get("/api/audit")
    def audit_entries(who: Identity = viewer) -> list[dict]:
        return audit.entries()

    @app.get("/api/events")
    def events(who: Identity = viewer) -> list[dict]:
        return hub.recent_events()[::-1]

    # ---- control ----------------------------------------------------------------------------------------------------

    async def robot_command(command: str, robot: str | None, who: Identity) -> dict:
        target = robot or "fleet"
        known = list(feed.robots)  # the feed thread adds to it
        if robot is not None and robot not in known:
            raise HTTPException(404, f"no robot {robot!r} in the fleet (known: {', '.join(known) or 'none'})")
        future = feed.command(robot, command, f"{who.name} (dashboard)")
        started = time.monotonic()
        try:
            receipt = await asyncio.wait_for(asyncio.wrap_future(future), ACK_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError) as error:
            detail = f"the learner did not take the {command} ({error or 'no answer'}); nothing was sent to a robot"
            audit.record(who.name, who.role, command, target, "failed", detail)
            raise HTTPException(504, detail) from None
        if not receipt.robots:
            audit.record(who.name, who.role, command, target, "refused", receipt.detail)
            raise HTTPException(409, receipt.detail)
        pending = set(receipt.robots)
        while pending and time.monotonic() - started < ACK_TIMEOUT_S:  # the robots' own reports are the ack
            pending = {r for r in pending if not _applied(feed.robots.get(r), future.command_id, command)}
            if pending:
                await asyncio.sleep(0.005)
        acked = sorted(set(receipt.robots) - pending)
        outcome = "acknowledged" if not pending else "sent; not acknowledged by " + ", ".join(sorted(pending))
        entry = audit.record(who.name, who.role, command, target, outcome,
                             f"command {future.command_id} to {', '.join(receipt.robots)}; "
                             f"reported by {', '.join(acked) or 'none'} in {1e3 * (time.monotonic() - started):.0f} ms")
        return {"command_id": future.command_id, "robots": receipt.robots, "acknowledged": acked,
                "pending": sorted(pending), "audit": entry}

    @app.post("/api/stop", summary="Software stop: latch the e-stop of one robot, or the fleet's", **_needs("operator"))
    async def stop(body: StopBody, who: Identity = operator) -> dict:
        return await robot_command("software_stop", body.robot, who)

    @app.post("/api/reset", summary="Release a software stop (needs confirm: true)", **_needs("operator"))
    async def reset(body: ResetBody, who: Identity = operator) -> dict:
        return await robot_command("reset", body.robot, who)

    @app.post("/api/deploy", summary="Deploy a validated (or retired) registry version", **_needs("operator"))
    def deploy(body: DeployBody, who: Identity = operator) -> dict:
        return _registry_control(who, "deploy", body.version,
                                 lambda: registry().deploy(body.version, f"dashboard:{who.name}"))

    @app.post("/api/rollback", summary="Re-deploy the version deployed before the current one", **_needs("operator"))
    def rollback(body: RollbackBody, who: Identity = operator) -> dict:
        current = getattr(_registry_call(lambda: registry().deployed()), "version", "nothing")
        return _registry_control(who, "rollback", current, lambda: registry().rollback(f"dashboard:{who.name}"))

    def _registry_control(who: Identity, action: str, target: str, move) -> dict:
        try:
            record = _registry_call(move)
        except HTTPException as error:
            audit.record(who.name, who.role, action, target, "refused", error.detail)
            raise
        entry = audit.record(who.name, who.role, action, target, f"{record.version} deployed",
                             "the learner offers it to the robots at its next registry check")
        return {"policy": _policy(record), "audit": entry}

    # ---- tokens -----------------------------------------------------------------------------------------------------

    @app.get("/api/tokens", summary="The tokens: names and roles, never the tokens", **_needs("admin"))
    def token_list(who: Identity = admin) -> list[dict]:
        return tokens.list()

    @app.post("/api/tokens", summary="Create a token; it is shown in this answer only", **_needs("admin"))
    def token_add(body: TokenBody, who: Identity = admin) -> dict:
        try:
            token = tokens.add(body.name, body.role)
        except TokenError as error:
            audit.record(who.name, who.role, "token add", body.name, "refused", str(error))
            raise HTTPException(409, str(error)) from None
        audit.record(who.name, who.role, "token add", body.name, "created", f"role {body.role}")
        return {"name": body.name, "role": body.role, "token": token}

    @app.delete("/api/tokens/{name}", summary="Remove a token", **_needs("admin"))
    def token_remove(name: str, who: Identity = admin) -> dict:
        try:
            tokens.remove(name)
        except TokenError as error:
            raise HTTPException(404, str(error)) from None
        audit.record(who.name, who.role, "token remove", name, "removed")
        return {"removed": name}

    # ---- live -------------------------------------------------------------------------------------------------------

    @app.websocket("/ws")
    async def live(websocket: WebSocket):
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
        token = next((p.removeprefix("bearer.") for p in offered if p.startswith("bearer.")), None)
        origin = websocket.headers.get("origin")
        identity = tokens.identify(token) if token else None
        if origin not in config.origins or identity is None or SUBPROTOCOL not in offered:
            log.warning("refused a WebSocket: %s", "foreign Origin " + repr(origin) if origin not in config.origins
                        else "no valid token" if identity is None else "no " + SUBPROTOCOL)
            await websocket.close(code=1008)
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        checked = time.monotonic()

        async def send(text: str) -> None:
            nonlocal checked
            if time.monotonic() - checked > TOKEN_RECHECK_S:  # a removed token closes the sockets it opened
                checked = time.monotonic()
                if tokens.identify(token) is None:
                    raise TokenRevoked
            await websocket.send_text(text)

        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # the browser went away
            try:
                await hub.serve(Client(identity.name, identity.role), send)
            except TokenRevoked:
                log.warning("closed %s's WebSocket: the token was removed", identity.name)
                await websocket.close(code=1008)

    # ---- metrics ----------------------------------------------------------------------------------------------------

    @app.get("/metrics", include_in_schema=False)
    def metrics(who: Identity = viewer) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        def states() -> dict[str, int]:
            counts: dict[str, int] = {}
            with contextlib.suppress(HTTPException):
                for record in registry().list():
                    counts[record.state] = counts.get(record.state, 0) + 1
            return counts

        rows = _progress(config.learner_out, last=2) if config.learner_out is not None else []
        return Response(generate_latest(_metrics_registry(feed, hub, rows, states())),
                        media_type=CONTENT_TYPE_LATEST)

    return app


def _applied(state, command_id: str, command: str) -> bool:
    """Whether a robot's own status reports the command applied: its id, and the e-stop as the command left it."""
    status = state.status if state is not None else None
    return (status is not None and status.last_command == command_id
            and bool(status.estop) == (command == "software_stop"))


def _registry_call(call):
    try:
        return call()
    except RegistryError as error:
        raise HTTPException(404 if str(error).startswith("no policy") else 409, str(error)) from None


def _policy(record) -> dict:
    report = GateReport.model_validate(record.report) if record.report else None
    return {"version": record.version, "state": record.state, "training_step": record.training_step,
            "source_run": record.source_run, "created_at": record.created_at, "updated_at": record.updated_at,
            "signed": bool(record.signature),
            "verdict": None if report is None else "passed" if report.passed else "rejected",
            "reasons": [] if report is None else report.reasons,
            "return_mean": None if report is None or report.metrics is None else report.metrics.return_mean,
            "success_rate": None if report is None or report.metrics is None else report.metrics.success_rate}


def _progress(folder: Path | None, last: int | None = None) -> list[ProgressRow]:
    """The whole rows of a learner's progress.jsonl (it may be writing the next one), or the `last` few of them; a
    damaged row is skipped."""
    if folder is None:
        raise HTTPException(404, "this dashboard was started without --learner-out")
    try:
        lines = (folder / "progress.jsonl").read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []
    first = 0 if last is None else max(0, len(lines) - last)
    rows = []
    for number, line in enumerate(lines[first:], first + 1):
        try:
            rows.append(ProgressRow.model_validate_json(line))
        except ValidationError as error:
            log.warning("%s line %d is not a progress row: %s", folder / "progress.jsonl", number,
                        error.errors()[0]["msg"])
    return rows


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)


def _metrics_registry(feed: LearnerFeed, hub: Hub, progress: list[ProgressRow], states: dict[str, int]):
    """The fan-out's own figures, the learner's from its last two progress rows, the registry's states, each
    robot's."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import CollectorRegistry

    from robot_app.learner.metrics import learning_metrics, policy_metrics, robot_metrics

    class Collector:
        def collect(self):
            delivered, dropped = hub.totals()
            yield GaugeMetricFamily("robot_app_dashboard_clients", "Browsers connected", value=len(hub.clients))
            yield CounterMetricFamily("robot_app_dashboard_samples_delivered", "Samples sent to browsers",
                                      value=delivered)
            yield CounterMetricFamily("robot_app_dashboard_samples_dropped", "Samples a slow browser's queue let go",
                                      value=dropped)
            yield CounterMetricFamily("robot_app_dashboard_telemetry", "Telemetry messages from the learner",
                                      value=feed.messages)
            if (age := feed.feed_age_s()) != float("inf"):
                yield GaugeMetricFamily("robot_app_dashboard_feed_age_seconds", "Seconds since the learner's last "
                                        "telemetry", value=age)
            if progress:
                *before, last = progress
                rate = None
                if before and last.elapsed_s > before[0].elapsed_s:
                    rate = (last.updates - before[0].updates) / (last.elapsed_s - before[0].elapsed_s)
                yield from learning_metrics(last.transitions, last.updates, rate, last.candidates, last.recent_return)
            yield policy_metrics(states)
            robots = dict(feed.robots)
            yield from robot_metrics({r: s.status for r, s in robots.items() if s.status is not None},
                                     {r: s.link_age_s for r, s in robots.items()})

    registry = CollectorRegistry()
    registry.register(Collector())
    return registry

