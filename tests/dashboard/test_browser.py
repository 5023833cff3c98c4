"""The dashboard in real headless Chromium (Debian's, driven by playwright) against the real stack on 127.0.0.1:
virtual robot, agent, learner and dashboard, each its own process."""

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import outbox_state
from tests.dashboard.stack import Stack

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(f"no {CHROMIUM} (Debian's chromium package; .ci/run installs it)", allow_module_level=True)

# Chromium's own background connections are refused on these machines; these flags keep it on the page.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, stack, token: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("dialog", lambda dialog: dialog.accept())  # the operator confirms
    page.goto(f"{stack.url}#token={token}")
    page.wait_for_function("window.dashboardStats && window.dashboardStats.messages > 0", timeout=20_000)
    return page


@pytest.fixture(scope="module")
def page(browser, stack):
    page = open_page(browser, stack, stack.operator_token)
    yield page
    page.close()


def robot_cell(page, robot: str, column: str):
    return page.locator(f'#fleet-table tr[data-robot="{robot}"] td.{column}')


def test_the_page_loads_with_no_request_off_the_host(page, stack):
    page.wait_for_selector('#fleet-table tr[data-robot="robot-0"]')
    assert page.evaluate("typeof uPlot") == "function"
    assert page.requests and all(url.startswith((stack.url, "data:", "blob:")) for url in page.requests), page.requests
    assert "#token" not in page.url  # the token leaves the address bar (and the history)


def test_the_live_plots_receive_data(page):
    page.wait_for_function("window.dashboardStats.samples > 100", timeout=20_000)
    page.wait_for_function(  # the share of the last minute's ticks a planner ran out of time on: this one does not plan
        "document.querySelector('#fleet-table tr[data-robot=\"robot-0\"] td.plan-fallbacks').textContent === '0.0%'")
    assert page.locator("#plot-q canvas").count() == 1 and page.locator("#plot-cmd canvas").count() == 1
    page.wait_for_function("/^[1-9][0-9]* Hz$/.test(document.getElementById('rate-q').textContent)", timeout=10_000)
    legend = page.locator("#plot-q .u-legend").inner_text()
    assert "arm" in legend and "pendulum" in legend  # series toggles carry the joints' names
    assert "low limit" in page.locator("#plot-cmd .u-legend").inner_text()


def test_a_stop_clicked_latches_the_agent_and_a_reset_clears_it(page, stack):
    page.click("#stop-fleet")
    page.wait_for_function(
        "document.querySelector('#fleet-table tr[data-robot=\"robot-0\"] td.estop').textContent.startsWith('LATCHED')",
        timeout=10_000)
    assert "software stop by alice" in robot_cell(page, "robot-0", "estop").inner_text()
    assert stack.fleet()["robot-0"]["estop"].startswith("software stop by alice")  # what the robot itself reports
    page.click('#fleet-table tr[data-robot="robot-0"] button.reset-robot')  # confirmed in the dialog
    page.wait_for_function(
        "document.querySelector('#fleet-table tr[data-robot=\"robot-0\"] td.estop').textContent === 'off'",
        timeout=10_000)
    page.keyboard.press("Escape")  # the shortcut stops too, with no confirmation
    stack.wait_for(lambda: stack.fleet()["robot-0"]["estop"] != "", what="the shortcut's stop")
    page.click("#reset-fleet")
    stack.wait_for(lambda: stack.fleet()["robot-0"]["estop"] == "", what="the fleet's reset")
    page.wait_for_function("document.querySelector('#audit tbody').children.length >= 4", timeout=10_000)
    outcomes = page.locator("#audit tbody tr").all_inner_texts()
    assert sum("software_stop" in row and "acknowledged" in row for row in outcomes) == 2, outcomes


def test_deploy_and_rollback_from_the_browser_reach_the_robot(page, stack):
    first, second = stack.versions

    def deploy(version):
        page.wait_for_selector(f'#policies tr[data-version="{version}"] button.deploy', timeout=10_000)
        page.click(f'#policies tr[data-version="{version}"] button.deploy')
        stack.wait_for(lambda: stack.get(f"/api/policies/{version}")["state"] == "deployed", what=f"{version} deployed")

    deploy(first)
    stack.wait_for(lambda: stack.fleet()["robot-0"]["version"] == first, timeout_s=30, what="the robot running it")
    deploy(second)
    stack.wait_for(lambda: stack.fleet()["robot-0"]["version"] == second, timeout_s=30, what="the second version")
    page.click("#rollback")
    stack.wait_for(lambda: stack.get(f"/api/policies/{first}")["state"] == "deployed", what="the rollback")
    stack.wait_for(lambda: stack.fleet()["robot-0"]["version"] == first, timeout_s=30, what="the robot rolled back")
    page.wait_for_function(f"document.querySelector('#policies tr[data-version=\"{first}\"] td.state')"
                           ".textContent === 'deployed'", timeout=10_000)


def test_a_viewer_sees_no_control_buttons(browser, stack):
    viewer = open_page(browser, stack, stack.viewer_token)
    try:
        viewer.wait_for_selector('#fleet-table tr[data-robot="robot-0"]')
        viewer.wait_for_selector("#policies tbody tr")
        assert viewer.locator("button.control:visible").count() == 0
        assert viewer.locator("#stop-fleet").is_hidden()
        viewer.keyboard.press("Escape")
        assert not any(url.endswith("/api/stop") for url in viewer.requests)
    finally:
        viewer.close()


def test_the_screenshot(page, stack, tmp_path):
    """The README's picture, taken from the running stack (ROBOT_APP_SCREENSHOT=docs/dashboard.png to keep it)."""
    page.evaluate("window.scrollTo(0, 0)")
    path = tmp_path / "dashboard.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 20_000
    if os.environ.get("ROBOT_APP_SCREENSHOT"):
        shutil.copy(path, os.environ["ROBOT_APP_SCREENSHOT"])


def test_metrics_on_the_dashboard_and_the_learner(stack):
    import urllib.request

    learner = urllib.request.urlopen(f"http://127.0.0.1:{stack.learner_metrics_port}/metrics", timeout=10).read()
    dashboard = stack.get("/metrics", token=stack.viewer_token, text=True)
    for text in (learner.decode(), dashboard):
        for name in ('robot_app_robot_link_age_seconds{robot="robot-0"}', 'robot_app_robot_jitter_p99_microseconds',
                     'robot_app_robot_interventions_total{reason="estop",robot="robot-0"}', "robot_app_transitions",
                     'robot_app_policies{state="deployed"} 1.0', "robot_app_candidates"):
            assert name in text, (name, text)
    assert "robot_app_updates_per_second" in learner.decode()
    assert "robot_app_dashboard_samples_delivered_total" in dashboard
    assert re.search(r"^robot_app_dashboard_clients [1-9]", dashboard, re.M)  # the operator's page, at least


def test_stale_shows_when_the_feed_stops_and_the_robot_carries_on_without_learner_or_dashboard(page, stack):
    assert page.locator("#stale").is_hidden()
    stack.stop_process("learner")
    page.wait_for_selector("#stale", state="visible", timeout=10_000)
    assert "no telemetry from the learner" in page.locator("#stale").inner_text()
    stack.stop_process("dashboard", kill=True)
    page.wait_for_function("document.getElementById('stale').textContent.includes('socket is closed')",
                           timeout=10_000)
    outbox = stack.folder / "robot-0" / "transitions.sqlite"
    logged = outbox_state(outbox)[0]
    stack.wait_for(lambda: outbox_state(outbox)[0] > logged + 100, what="the robot's episodes going on",
                   ignore=("learner", "dashboard"))
    stack.stop()  # agents first: each makes its safe stop, and its device's audit is written
    audit = stack.audit("robot-0")
    assert audit["estops"] == len(audit["estop_ns"]) == 2  # the two software stops; nothing when the others died
    assert audit["limit_violations"] == audit["rate_violations"] == 0
