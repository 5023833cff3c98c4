"""The learner's Prometheus /metrics: read from the live service at each scrape, so nothing is updated twice."""

from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from robot_app.common.addresses import split_host_port


def robot_metrics(statuses: dict, link_age_s: dict[str, float]) -> list:
    """Each robot's link age, jitter p99, backlog, latches and interventions (the dashboard exports the same)."""
    age = GaugeMetricFamily("robot_app_robot_link_age_seconds", "Seconds since the robot was last heard",
                            labels=["robot"])
    jitter = GaugeMetricFamily("robot_app_robot_jitter_p99_microseconds", "The agent loop's tick jitter, p99",
                               labels=["robot"])
    backlog = GaugeMetricFamily("robot_app_robot_outbox_backlog", "Transitions the robot holds unacknowledged",
                                labels=["robot"])
    latched = GaugeMetricFamily("robot_app_robot_latched", "1 while the robot's e-stop or a fault is latched",
                                labels=["robot", "latch"])
    interventions = CounterMetricFamily("robot_app_robot_interventions",
                                        "Ticks the safety supervisor changed a command", labels=["robot", "reason"])
    for robot, seconds in link_age_s.items():
        age.add_metric([robot], seconds)
    for robot, status in statuses.items():
        jitter.add_metric([robot], status.jitter_p99_us)
        backlog.add_metric([robot], status.backlog)
        latched.add_metric([robot, "estop"], float(bool(status.estop)))
        latched.add_metric([robot, "fault"], float(bool(status.fault)))
        for reason, ticks in status.interventions.items():
            interventions.add_metric([robot, reason], ticks)
    return [age, jitter, backlog, latched, interventions]


def learning_metrics(transitions: int, updates: int, updates_per_s: float | None, candidates: int,
                     recent_return: float | None) -> list:
    """The learner's progress (the dashboard exports the same)."""
    out = [CounterMetricFamily("robot_app_transitions", "Transitions the learner has taken", value=transitions),
           CounterMetricFamily("robot_app_updates", "SAC-SVG(H) updates made", value=updates),
           CounterMetricFamily("robot_app_candidates", "Candidate policies exported", value=candidates)]
    if updates_per_s is not None:
        out.append(GaugeMetricFamily("robot_app_updates_per_second", "SAC-SVG(H) updates per second",
                                     value=updates_per_s))
    if recent_return is not None:
        out.append(GaugeMetricFamily("robot_app_recent_return", "Mean return of the last 10 episodes",
                                     value=recent_return))
    return out


def policy_metrics(states: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("robot_app_policies", "Policies in the registry by state (the gate's verdicts: "
                               "validated, rejected)", labels=["state"])
    for state, count in states.items():
        family.add_metric([state], count)
    return family


class LearnerCollector:
    """The learning metrics, read from the live service at each scrape (updates/s since the last scrape), and each
    robot's."""

    def __init__(self, learner, server, returns, deployment=None):
        self.learner, self.server, self.returns, self.deployment = learner, server, returns, deployment
        self._last = (time.monotonic(), learner.updates)

    def collect(self):
        now, updates = time.monotonic(), self.learner.updates
        then, before = self._last
        self._last = (now, updates)
        recent = [e["return"] for e in self.returns.finished[-10:]]
        yield from learning_metrics(self.learner.transitions, updates, (updates - before) / max(now - then, 1e-9),
                                    len(self.learner.candidates), sum(recent) / len(recent) if recent else None)
        if self.deployment is not None:
            yield policy_metrics(self.deployment.summary().states)
        heard = dict(self.server.last_heard)
        yield from robot_metrics(dict(self.server.statuses), {robot: now - at for robot, at in heard.items()})


def start_metrics_server(address: str, collector) -> tuple[str, int]:
    """Serve /metrics on HOST:PORT (port 0 chooses) with only `collector`; the (host, port) bound."""
    from prometheus_client import start_http_server

    host, port = split_host_port(address)
    registry = CollectorRegistry()
    registry.register(collector)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_address[:2]
