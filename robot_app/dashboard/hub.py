"""Fan-out to the browsers: one bounded queue per WebSocket, flushed FLUSH_HZ times a second, drops counted.

Each flush sends a client everything queued for it, the fleet's state as it is now (so safety state is in every
message, whatever was dropped before it) and the events since its last message. A client that does not read blocks
only its own sender: its queue keeps the newest MAX_QUEUED telemetry batches and counts the samples it let go.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from typing import Callable

from robot_app.common.logs import utc_now

FLUSH_HZ = 25
MAX_QUEUED = 50  # telemetry batches per client: 2 s of the learner's feed
EVENTS_KEPT = 500


class Client:
    def __init__(self, name: str, role: str):
        self.name, self.role = name, role
        self.queue: collections.deque[tuple[str, int]] = collections.deque()
        self.wake = asyncio.Event()
        self.delivered = self.dropped = 0  # samples
        self.events_seen = 0  # the id of the last event sent


class Hub:
    def __init__(self, feed_age_s: Callable[[], float]):
        self.feed_age_s = feed_age_s
        self.clients: set[Client] = set()
        self.fleet_json = "{}"
        self.events: collections.deque[dict] = collections.deque(maxlen=EVENTS_KEPT)
        self._ids = itertools.count(1)
        self.delivered = self.dropped = 0  # samples, over every client that has been
        self.messages_sent = 0

    def publish(self, fleet: dict, data: tuple[str, int] | None, events: list[dict]) -> None:
        """From the feed (on the event loop): the fleet's state, a batch of plot data, new events."""
        self.fleet_json = json.dumps(fleet, separators=(",", ":"))
        self.add_events(events)
        if data is None:
            return
        for client in self.clients:
            client.queue.append(data)
            if len(client.queue) > MAX_QUEUED:
                client.dropped += client.queue.popleft()[1]

    def add_events(self, events: list[dict]) -> None:
        at = utc_now()
        for event in events:
            self.events.append({"id": next(self._ids), "at": at, **event})

    def recent_events(self, after: int = 0) -> list[dict]:
        return [event for event in self.events if event["id"] > after]

    def message(self, client: Client) -> str:
        batches, client.queue = list(client.queue), collections.deque()
        client.delivered += sum(rows for _, rows in batches)
        events = self.recent_events(client.events_seen)
        if events:
            client.events_seen = events[-1]["id"]
        age = self.feed_age_s()
        return (f'{{"t":{time.time():.3f},"feed_age_s":{json.dumps(round(age, 3) if age != float("inf") else None)},'
                f'"fleet":{self.fleet_json},"data":[{",".join(d for d, _ in batches)}],'
                f'"events":{json.dumps(events, separators=(",", ":"))},"dropped":{client.dropped}}}')

    async def flush_forever(self) -> None:
        while True:
            for client in self.clients:
                client.wake.set()
            await asyncio.sleep(1.0 / FLUSH_HZ)

    async def serve(self, client: Client, send: Callable[[str], "asyncio.Future"]) -> None:
        """Send to one client until its socket fails; its send awaiting is what holds it back, nothing else."""
        self.clients.add(client)
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                await send(self.message(client))
                self.messages_sent += 1
        finally:
            self.clients.discard(client)
            self.delivered += client.delivered
            self.dropped += client.dropped

    def totals(self) -> tuple[int, int]:
        """(samples delivered, samples dropped), over every client, present and past."""
        return (self.delivered + sum(c.delivered for c in self.clients),
                self.dropped + sum(c.dropped for c in self.clients))
