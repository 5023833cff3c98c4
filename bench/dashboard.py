"""The dashboard, measured against the real stack in headless Chromium: stop latency (click to the virtual robot's
e-stop), fan-out (robots at 500 Hz to several browsers: the dashboard's CPU, samples delivered and dropped, the page's
frame times) and a client that never reads (the dashboard's memory, and its drops).

    .venv/bin/python bench/dashboard.py [--stops 100] [--robots 4] [--rate 500] [--browsers 3] [--seconds 60]
    .venv/bin/python bench/dashboard.py --only stop|fanout|slow

Results go to bench/results/dashboard.json; docs/BENCHMARKS.md quotes them with the command and the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.dashboard.stack import Stack  # noqa: E402 (the same stack the browser tests run)
from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "dashboard.json"


def quantiles(values, *qs) -> list[float]:
    return [round(float(np.quantile(values, q)), 2) for q in qs] if len(values) else [None for _ in qs]


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident set in bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), rss


def pid_of(stack: Stack, name: str) -> int:
    return next(proc.pid for role, proc in stack.procs if role == name)


def metric(stack: Stack, name: str) -> float:
    text = stack.get("/metrics", text=True)
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def open_page(browser, stack: Stack, robot: str | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{stack.url}#token={stack.operator_token}")
    page.wait_for_function("window.dashboardStats && window.dashboardStats.samples > 0", timeout=30_000)
    if robot:
        page.select_option("#live-robot", robot)
    return page


def stop_latency(browser, stops: int, folder: Path) -> dict:
    """Click the software stop; the virtual robot's audit notes the monotonic time its e-stop engaged. A reset over
    the API (and the robot reporting it released) comes between stops."""
    with Stack(folder) as stack:
        page = open_page(browser, stack)
        clicks, acks = [], []
        for _ in range(stops):
            clicks.append(time.monotonic_ns())
            page.click("#stop-fleet")
            stack.wait_for(lambda: stack.fleet()["robot-0"]["estop"] != "", what="the stop reported")
            request = urllib.request.Request(stack.url + "api/reset", data=b'{"confirm": true}', method="POST",
                                             headers={"Authorization": f"Bearer {stack.operator_token}",
                                                      "Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).read()
            stack.wait_for(lambda: stack.fleet()["robot-0"]["estop"] == "", what="the reset reported")
        audit_rows = stack.get("/api/audit")
        acks = [float(m.group(1)) for row in audit_rows if row["action"] == "software_stop"
                and (m := re.search(r"in (\d+) ms", row["detail"]))]
        wall_minus_monotonic_ms = (time.time_ns() - time.monotonic_ns()) / 1e6
        clicked_in_page = [t - wall_minus_monotonic_ms for t in page.evaluate("window.dashboardStats.stops")]
        page.close()
    engaged = [t / 1e6 for t in stack.audit("robot-0")["estop_ns"]]

    def latencies(starts_ms):
        out = []
        for start in starts_ms:
            after = [t for t in engaged if t >= start]
            out.append(after[0] - start if after else float("inf"))
        return out

    event = latencies(clicked_in_page)  # from the click event in the page (both clocks read on this machine)
    harness = latencies([t / 1e6 for t in clicks])  # from playwright's click call: its actionability checks too
    return {"stops": stops, "engaged": len(engaged),
            "click_event_to_device_estop_ms": dict(zip(("p50", "p99", "max"), quantiles(event, 0.5, 0.99, 1.0))),
            "playwright_click_to_device_estop_ms": dict(zip(("p50", "p99", "max"),
                                                            quantiles(harness, 0.5, 0.99, 1.0))),
            "api_to_robot_report_ms": dict(zip(("p50", "p99", "max"), quantiles(acks[:stops], 0.5, 0.99, 1.0))),
            "rate_hz": 50, "bar_p99_ms": 100}


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every core, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


RENDERER = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def renderer_seconds(session) -> dict[str, float]:
    """What Chromium's renderer main thread spent, by kind (CDP Performance.getMetrics): the page's own profile."""
    metrics = {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
    return {name: metrics.get(name, 0.0) for name in RENDERER}


def top_functions(profile: dict, count: int = 10) -> list[dict]:
    """A CDP CPU profile's self time by function, largest first: the share of the profile's samples."""
    by_node = {node["id"]: node for node in profile["nodes"]}
    hits: dict[str, int] = {}
    for node_id in profile["samples"]:
        frame = by_node[node_id]["callFrame"]
        name = f"{frame['functionName'] or '(anonymous)'} {Path(frame['url']).name}:{frame['lineNumber'] + 1}" \
            if frame["url"] else frame["functionName"] or "(anonymous)"
        hits[name] = hits.get(name, 0) + 1
    total = max(len(profile["samples"]), 1)
    return [{"function": name, "share": round(n / total, 3)}
            for name, n in sorted(hits.items(), key=lambda item: -item[1])[:count]]


def fan_out(browser, robots: int, rate: float, browsers: int, seconds: float, folder: Path) -> dict:
    with Stack(folder, robots=robots, rate_hz=rate, episode_s=8.0) as stack:
        pages = [open_page(browser, stack, f"robot-{i % robots}") for i in range(browsers)]
        sessions = [page.context.new_cdp_session(page) for page in pages]
        for page, session in zip(pages, sessions):
            session.send("Performance.enable")
            page.evaluate("window.dashboardStats.frames = []; window.dashboardStats.work = []")
        renderer0 = [renderer_seconds(session) for session in sessions]
        sessions[0].send("Profiler.enable")
        sessions[0].send("Profiler.start")
        busy0 = machine_busy()
        dashboard = pid_of(stack, "dashboard")
        cpu0, _ = proc_stats(dashboard)
        delivered0, dropped0 = (metric(stack, f"robot_app_dashboard_samples_{k}_total") for k in ("delivered", "dropped"))
        started = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - started
        cpu1, rss = proc_stats(dashboard)
        busy1 = machine_busy()
        profile = sessions[0].send("Profiler.stop")["profile"]
        renderer = [{name: round((after[name] - before[name]) / wall, 3) for name in RENDERER}
                    for before, after in zip(renderer0, (renderer_seconds(session) for session in sessions))]
        delivered1, dropped1 = (metric(stack, f"robot_app_dashboard_samples_{k}_total") for k in ("delivered", "dropped"))
        frames = [f for page in pages for f in page.evaluate("window.dashboardStats.frames")]
        work = [w for page in pages for w in page.evaluate("window.dashboardStats.work")]
        received = sum(page.evaluate("window.dashboardStats.samples") for page in pages)
        for page in pages:
            page.close()
        learner_rows = stack.fleet()
    return {"robots": robots, "rate_hz": rate, "browsers": browsers, "seconds": round(wall, 1),
            "dashboard_cpu_share_of_one_core": round((cpu1 - cpu0) / wall, 3), "dashboard_rss_mb": round(rss / 2**20, 1),
            "samples_delivered": int(delivered1 - delivered0), "samples_dropped": int(dropped1 - dropped0),
            "samples_delivered_per_s_per_browser": round((delivered1 - delivered0) / wall / browsers),
            "samples_offered_per_s": robots * rate, "received_by_pages_total": received,
            "frame_interval_ms": dict(zip(("p50", "p99", "max"), quantiles(frames, 0.5, 0.99, 1.0))),
            "frame_work_ms": dict(zip(("p50", "p99", "max"), quantiles(work, 0.5, 0.99, 1.0))),
            "robots_dropped_by_learner": {r: row["dropped"] for r, row in learner_rows.items()},
            "machine_busy_share": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3),
            "renderer_main_thread_s_per_s": renderer,
            "first_page_cpu_profile_top": top_functions(profile),
            "bars": {"cpu_share": 0.25, "frame_p99_ms": 20}}


def never_reading_client(stack: Stack) -> socket.socket:
    """A WebSocket handshake, then nothing read: a raw socket with a small receive buffer."""
    host, port = stack.url.split("//")[1].rstrip("/").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
                  f"Sec-WebSocket-Protocol: robot-app.v1, bearer.{stack.viewer_token}\r\n\r\n").encode())
    answer = sock.recv(1024).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 101"), answer
    return sock


def slow_client(robots: int, rate: float, seconds: float, folder: Path) -> dict:
    with Stack(folder, robots=robots, rate_hz=rate, episode_s=8.0) as stack:
        dashboard = pid_of(stack, "dashboard")
        time.sleep(5)
        _, rss_before = proc_stats(dashboard)
        sock = never_reading_client(stack)
        samples, started, closed_at = [], time.monotonic(), None
        while (elapsed := time.monotonic() - started) < seconds:
            time.sleep(5)
            clients = metric(stack, "robot_app_dashboard_clients")
            if clients == 0 and closed_at is None:
                closed_at = round(time.monotonic() - started, 1)
            samples.append({"t_s": round(elapsed + 5, 1), "rss_mb": round(proc_stats(dashboard)[1] / 2**20, 1),
                            "clients": clients, "dropped": metric(stack, "robot_app_dashboard_samples_dropped_total")})
        sock.close()
    return {"robots": robots, "rate_hz": rate, "seconds": seconds, "rss_before_mb": round(rss_before / 2**20, 1), "samples": samples,
            "closed_by_server_after_s": closed_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=100)
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--browsers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=["stop", "fanout", "slow"])
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = f"{platform.node()} {os.cpu_count()} cores, {platform.python_version()}"
    results["date"] = time.strftime("%Y-%m-%d")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as tmp:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        if args.only in (None, "stop"):
            results["stop_latency"] = stop_latency(browser, args.stops, Path(tmp) / "stop")
            print(json.dumps(results["stop_latency"]), flush=True)
        if args.only in (None, "fanout"):
            key = f"fan_out_{args.robots}x{args.rate:g}Hz_{args.browsers}_browsers"
            results[key] = fan_out(browser, args.robots, args.rate, args.browsers, args.seconds, Path(tmp) / "fanout")
            print(json.dumps(results[key]), flush=True)
        if args.only in (None, "slow"):
            results["slow_client"] = slow_client(args.robots, args.rate, args.seconds, Path(tmp) / "slow")
            print(json.dumps(results["slow_client"]), flush=True)
        browser.close()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
