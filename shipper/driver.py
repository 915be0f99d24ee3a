"""The generic sink driver: batching, retries, splitting, concurrency, acknowledgements, metrics.

It pulls parts from the sink's channel, cuts batches by events/bytes/age, asks the sink module to
encode them, sends each request with a tenacity retry policy whose wait honours the destination's
Retry-After, splits on `split` outcomes down to single events, and releases the chunks' acks only
when every request of the batch has been resolved (accepted, or dropped with a counted reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
    wait_random,
)

from shipper import metrics
from shipper.acks import Ack
from shipper.channel import Channel
from shipper.errors import ConfigError
from shipper.event import Event
from shipper.health import SinkHealth
from shipper.log import RateLimitedLog
from shipper.sink import Outcome, Request, Sink

log = logging.getLogger("shipper.driver")

MAX_HONOURED_RETRY_AFTER = 900.0


class _RetryLater(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def batch_limits(sink: Sink) -> tuple[int, int, float]:
    """The batch limits in force: the config's, never above the destination's hard limits."""
    limits, batch = sink.limits, sink.config.batch
    prefix = f"sinks.{sink.name}.batch"
    if batch.max_events is not None and batch.max_events > limits.max_events:
        raise ConfigError(f"{prefix}.max_events", f"at most {limits.max_events} for a {sink.config.type} sink")
    if batch.max_bytes is not None and batch.max_bytes > limits.max_bytes:
        raise ConfigError(f"{prefix}.max_bytes", f"at most {limits.max_bytes} bytes for a {sink.config.type} sink")
    return (
        batch.max_events or limits.max_events,
        batch.max_bytes or limits.goal_bytes or limits.max_bytes,
        limits.timeout if batch.timeout is None else batch.timeout,
    )


class SinkDriver:
    def __init__(self, sink: Sink, channel: Channel) -> None:
        self.sink = sink
        self.channel = channel
        self.max_events, self.max_bytes, self.batch_timeout = batch_limits(sink)
        self.health = SinkHealth(sink.name, sink.config.unhealthy_after)
        self.inflight: dict[int, list[Event]] = {}  # batches being delivered, by id
        self._slots = asyncio.Semaphore(sink.config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        name = sink.name
        self._sent = metrics.events_sent.labels(name)
        self._bytes = metrics.bytes_sent.labels(name)
        self._latency = metrics.send_duration.labels(name)
        # Read when scraped: a batch sends its requests one after another, so each batch being
        # delivered is one request in flight, whether on the wire or waiting out a backoff.
        metrics.inflight_requests.labels(name).set_function(lambda: len(self.inflight))
        metrics.inflight_events.labels(name).set_function(lambda: self.inflight_events)
        metrics.sink_healthy.labels(name).set_function(lambda: self.health.healthy)
        metrics.sink_last_success.labels(name).set_function(lambda: self.health.last_success or 0)
        self._problems = RateLimitedLog(log, interval=60.0)
        retry = sink.config.retry
        self._backoff = wait_exponential(multiplier=retry.initial_backoff, max=retry.max_backoff) + wait_random(
            0, retry.initial_backoff
        )

    async def run(self) -> None:
        """Consume the channel until it is closed and drained, then wait for in-flight requests."""
        await self.sink.start()
        try:
            await self._batch_loop()
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            await self.sink.stop()

    async def _batch_loop(self) -> None:
        """Cut batches by what they weigh encoded (`Part.wire`), up to the batch goal, never over
        `max_events`; a batch also leaves when its oldest event has waited `batch.timeout`."""
        loop = asyncio.get_running_loop()
        events: list[Event] = []
        acks: list[tuple[Ack, int]] = []
        wire = 0
        deadline = 0.0
        while True:
            timeout = max(0.0, deadline - loop.time()) if events else None
            part = await self.channel.get(timeout)
            if part is None:
                if events:
                    await self._dispatch(events, acks)
                    events, acks, wire = [], [], 0
                if self.channel.closed and not self.channel.nevents:
                    return
                continue
            if not events:
                deadline = loop.time() + self.batch_timeout
            count = len(part.events)
            if len(events) + count <= self.max_events and wire + part.wire <= self.max_bytes:
                events.extend(part.events)
                acks.append((part.ack, count))
                wire += part.wire
                if len(events) >= self.max_events or wire >= self.max_bytes:
                    await self._dispatch(events, acks)
                    events, acks, wire = [], [], 0
                continue
            # The part straddles batches: cut it by each event's encoded size.
            ends = list(accumulate([len(event.raw) + 1 for event in part.events]))
            start = base = 0
            while start < count:
                if not events:
                    deadline = loop.time() + self.batch_timeout
                room = min(count, start + self.max_events - len(events))
                end = bisect_right(ends, base + self.max_bytes - wire, start, room)
                if end == start and not events:
                    end = start + 1  # an event larger than a whole batch goes alone
                if end > start:
                    events.extend(part.events[start:end])
                    acks.append((part.ack, end - start))
                    wire += ends[end - 1] - base
                    base, start = ends[end - 1], end
                if start < count or len(events) >= self.max_events or wire >= self.max_bytes:
                    await self._dispatch(events, acks)
                    events, acks, wire = [], [], 0

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @property
    def inflight_events(self) -> int:
        return sum(len(batch) for batch in self.inflight.values())

    def unsent(self) -> list[Event]:
        """Everything queued or in flight (at shutdown, to account for what was not delivered)."""
        queued = [event for part in self.channel.drain_unsent() for event in part.events]
        return queued + [event for batch in self.inflight.values() for event in batch]

    async def _dispatch(self, events: list[Event], acks: list[tuple[Ack, int]]) -> None:
        await self._slots.acquire()
        self.inflight[id(events)] = events
        task = asyncio.create_task(self._deliver(events, acks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, events: list[Event], acks: Sequence[tuple[Ack, int]]) -> None:
        try:
            try:
                requests = self.sink.encode(events)
            except Exception:  # a bug that would fail the same way on every retry: count it, never stall
                log.exception("sink could not encode a batch; dropped", extra={"sink": self.sink.name})
                requests = []
                metrics.events_dropped.labels(self.sink.name, "encode_error").inc(len(events))
            for request in requests:
                await self._send(request)
        finally:
            del self.inflight[id(events)]
            self._slots.release()
        for ack, units in acks:
            ack.done(units)

    async def _send(self, request: Request) -> None:
        outcome = Outcome("retry")
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_RetryLater),
            wait=self._wait,
            stop=stop_never,
            reraise=True,
            before_sleep=self._before_sleep,
        ):
            with attempt:
                outcome = await self._attempt(request)
                self.health.record(outcome)
                if outcome.kind in ("retry", "unhealthy"):
                    raise _RetryLater(outcome)
        if outcome.kind == "delivered":
            self._delivered(request, outcome)
        elif outcome.kind == "split":
            await self._split(request, outcome)
        else:
            self._drop(request.events, outcome.reason or "rejected", outcome.detail)

    async def _attempt(self, request: Request) -> Outcome:
        started = time.perf_counter()
        try:
            return await self.sink.send(request)
        except (OSError, TimeoutError) as exc:
            return Outcome("retry", reason="connection", detail=type(exc).__name__)
        except Exception as exc:  # a bug must not lose data: keep it and retry, loudly
            log.exception("sink send failed unexpectedly", extra={"sink": self.sink.name})
            return Outcome("retry", reason="internal_error", detail=type(exc).__name__)
        finally:
            self._latency.observe(time.perf_counter() - started)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        outcome = exc.outcome if isinstance(exc, _RetryLater) else Outcome("retry")
        if outcome.retry_after is not None:
            return min(max(outcome.retry_after, 0.0), MAX_HONOURED_RETRY_AFTER)
        if outcome.kind == "unhealthy":
            return self.sink.config.retry.max_backoff
        return float(self._backoff(state))

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, _RetryLater):
            return
        outcome = exc.outcome
        metrics.retries.labels(self.sink.name, outcome.reason or "unknown").inc()
        if outcome.kind == "retry":
            self._problems.warning(
                f"retry:{outcome.reason}",
                "sink request failed, retrying",
                sink=self.sink.name,
                reason=outcome.reason,
                detail=outcome.detail,
                attempt=state.attempt_number,
            )

    def _delivered(self, request: Request, outcome: Outcome) -> None:
        dropped = sum(outcome.dropped.values())
        self._sent.inc(len(request.events) - dropped)
        self._bytes.inc(len(request.wire if request.wire is not None else request.body))
        for reason, count in outcome.dropped.items():
            metrics.events_dropped.labels(self.sink.name, reason).inc(count)
        if dropped:
            self._problems.warning(
                f"partial:{','.join(sorted(outcome.dropped))}",
                "destination rejected some events",
                sink=self.sink.name,
                dropped=outcome.dropped,
                detail=outcome.detail,
            )

    async def _split(self, request: Request, outcome: Outcome) -> None:
        events = request.events
        if len(events) <= 1:
            self._drop(events, outcome.reason or "too_large", outcome.detail)
            return
        metrics.retries.labels(self.sink.name, "split").inc()
        middle = len(events) // 2
        for half in (events[:middle], events[middle:]):
            for sub in self.sink.encode(half):
                await self._send(sub)

    def _drop(self, events: list[Event], reason: str, detail: str) -> None:
        metrics.events_dropped.labels(self.sink.name, reason).inc(len(events))
        self._problems.error(
            f"drop:{reason}",
            "destination rejected events; dropped",
            sink=self.sink.name,
            reason=reason,
            events=len(events),
            detail=detail,
        )
