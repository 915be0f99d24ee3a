"""Adaptive concurrency: the limit halves under 429s and rising latency, climbs back one by one
with successes, stays within 1..concurrency; end to end, against a loopback server answering 429
for a while, the sink's gauge drops then climbs back and nothing is lost."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
from aiohttp import web

from shipper import metrics
from shipper.config import config_from_dict
from shipper.event import Event
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.concurrency import AdaptiveLimit
from shipper.pipeline.driver import SinkDriver
from shipper.sink import Outcome
from sinks import build_sink

OK = Outcome("delivered")
TOO_MANY = Outcome("retry", reason="http_429")


async def saturate(limit: AdaptiveLimit) -> None:
    """Every slot taken and given back, as a backlog keeps them: the window counts as saturated."""
    taken = limit.limit
    for _ in range(taken):
        await limit.acquire()
    for _ in range(taken):
        limit.release()


async def successes(limit: AdaptiveLimit, windows: int, rtt: float = 0.1) -> list[int]:
    """`windows` full windows of successes with every slot taken; the limit after each."""
    seen = []
    for _ in range(windows):
        await saturate(limit)
        for _ in range(limit.limit):
            limit.record(limit.begin(), OK, rtt)
        seen.append(limit.limit)
    return seen


async def test_429s_halve_the_limit_once_per_window_down_to_1_and_successes_bring_it_back() -> None:
    limit = AdaptiveLimit(8)
    in_flight = [limit.begin() for _ in range(8)]  # eight requests sent at the limit of 8
    for token in in_flight:
        limit.record(token, TOO_MANY, 0.01)
    assert limit.limit == 4  # once: the other seven answers are about the old limit
    for expected in (2, 1, 1):
        limit.record(limit.begin(), TOO_MANY, 0.01)
        assert limit.limit == expected
    assert await successes(limit, 9) == [2, 3, 4, 5, 6, 7, 8, 8, 8]  # one more per window, never above 8


async def test_a_retry_after_or_a_503_backs_off_and_other_failures_do_not() -> None:
    limit = AdaptiveLimit(4)
    limit.record(limit.begin(), Outcome("retry", reason="http_500"), 0.01)
    limit.record(limit.begin(), Outcome("retry", reason="connection"), 0.01)
    limit.record(limit.begin(), Outcome("reject", reason="http_400"), 0.01)
    assert limit.limit == 4
    limit.record(limit.begin(), Outcome("retry", reason="http_503"), 0.01)
    assert limit.limit == 2
    limit.record(limit.begin(), Outcome("delivered", "per_stream_rate_limit", 1.0, resend=[0]), 0.01)
    assert limit.limit == 1


async def test_rising_latency_halves_the_limit_and_steady_or_tiny_changes_do_not() -> None:
    limit = AdaptiveLimit(8)
    assert await successes(limit, 3, rtt=0.1) == [8, 8, 8]
    assert await successes(limit, 1, rtt=0.18) == [8]  # under twice the baseline
    assert await successes(limit, 1, rtt=0.5) == [4]  # the destination queues: halve
    local = AdaptiveLimit(4)
    assert await successes(local, 4, rtt=0.001) + await successes(local, 2, rtt=0.004) == [4] * 6  # noise


async def test_the_limit_grows_only_when_every_slot_was_taken() -> None:
    limit = AdaptiveLimit(4)
    limit.record(limit.begin(), TOO_MANY, 0.01)
    assert limit.limit == 2
    for _ in range(10):  # one request at a time: the limit is not what holds sending back
        await limit.acquire()
        limit.record(limit.begin(), OK, 0.01)
        limit.release()
    assert limit.limit == 2


async def test_a_lower_limit_holds_new_requests_until_enough_finish() -> None:
    limit = AdaptiveLimit(4)
    for _ in range(4):
        await limit.acquire()
    limit.record(limit.begin(), TOO_MANY, 0.01)
    waiting = asyncio.create_task(limit.acquire())
    for _ in range(2):
        limit.release()
        await asyncio.sleep(0)
        assert not waiting.done()  # 3, then 2 in flight: not below the limit of 2
    limit.release()
    await asyncio.wait_for(waiting, 1)
    assert limit.in_flight == 2


class Throttled:
    """A loopback intake answering 429 to its first `throttled` requests, then 202; it records the
    ids it accepted and the sink's concurrency gauge at each request."""

    def __init__(self, sink: str, throttled: int) -> None:
        self.sink = sink
        self.throttled = throttled
        self.requests = 0
        self.accepted: list[int] = []
        self.gauge: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.gauge.append(metrics.registry.get_sample_value("shipper_sink_concurrency_limit", {"sink": self.sink}) or 0)
        body = await request.read()
        await asyncio.sleep(0.005)  # an answer takes a while: requests overlap
        if self.requests <= self.throttled:
            return web.Response(status=429, text="rate limited")
        self.accepted.extend(doc["id"] for doc in orjson.loads(body))
        return web.Response(status=202)


async def test_the_gauge_drops_under_429s_and_climbs_back_with_nothing_lost() -> None:
    name = "throttled"
    intake = Throttled(name, throttled=12)
    app = web.Application()
    app.router.add_post("/logs", intake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    doc = {
        "sources": {"api": {"type": "stdin"}},
        "sinks": {
            name: {
                "type": "http",
                "inputs": ["api"],
                "url": f"http://127.0.0.1:{port}/logs",
                "compression": "none",
                "concurrency": 4,
                "batch": {"max_events": 10},
                "retry": {"initial_backoff": 0.01, "max_backoff": 0.02},
            }
        },
    }
    sink = build_sink(name, config_from_dict(doc, None, environ={}).sinks[name])
    driver = SinkDriver(sink, Channel(name, 1 << 30, "block"))
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    for position in range(1, 41):
        ids = range((position - 1) * 10, position * 10)
        events = [Event({"message": f"event {i}", "id": i}, b"") for i in ids]
        ack = tracker.open(position)
        ack.add(len(events))
        await driver.channel.put(Part(events, ack, sum(e.size for e in events)))
        ack.done()
    driver.channel.close()
    try:
        await asyncio.wait_for(driver.run(), 30)
    finally:
        await runner.cleanup()
    assert sorted(intake.accepted) == list(range(400)) and Counter(intake.accepted).most_common(1)[0][1] == 1
    assert commits[-1] == 40
    lowest = min(intake.gauge)
    assert intake.gauge[0] == 4 and lowest == 1
    assert intake.gauge[-1] == 4 and intake.gauge.index(lowest) < len(intake.gauge) - 1  # down, then back up
