"""The generic sink driver: batching, retries, splitting, concurrency, acknowledgements, metrics.

It pulls parts from the sink's channel, cuts batches by events/bytes/age, asks the sink module to
encode them, sends each request with a tenacity retry policy whose wait honours the destination's
Retry-After, splits on `split` outcomes down to single events, and releases the chunks' acks only
when every request of the batch has been resolved (accepted, or dropped with a counted reason).

A destination may accept part of a request: the events it refused for good are dropped (counted by
reason), and only those it asks for again go back into the batch, as a new list to encode and send
after the retry backoff.

Every batch ends one of three ways: resolved (its acks released, once); cancelled at the shutdown
deadline (its acks held, its unresolved events left in `inflight` for the agent to account for);
or killed by a bug (its acks held, its unresolved events in `failed`, the agent told to stop):
a checkpoint never moves over undelivered data, and never stalls silently.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
)

from shipper import metrics
from shipper.errors import ConfigError
from shipper.event import Event, wire_ends
from shipper.health import Health
from shipper.lines import Chain, Lines, events_of
from shipper.log import RateLimitedLog
from shipper.pipeline.acks import Ack
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.concurrency import AdaptiveLimit
from shipper.pipeline.deadletter import DeadLetters, Dropped
from shipper.sink import Outcome, Request, Sink

log = logging.getLogger("shipper.driver")

MAX_HONOURED_RETRY_AFTER = 900.0
MAX_DOUBLINGS = 32  # the backoff stops growing long before: this only keeps 2**n a float

Todo = Sequence[Event] | Request  # an item of a batch's to-do list: events to encode, or a request to send


class _RetryLater(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass(eq=False, slots=True)
class Batch:
    """A batch being delivered. `todo` is what is left, in order (events to encode, requests to
    send), so its events are exactly those neither sent nor dropped yet."""

    acks: Sequence[tuple[Ack, int]]
    todo: deque[Todo]
    resends: int = 0  # times a destination asked for part of this batch again: the backoff grows with it

    @property
    def nevents(self) -> int:
        return sum(len(item.events if isinstance(item, Request) else item) for item in self.todo)

    def unresolved(self) -> list[Event]:
        return [event for item in self.todo for event in (item.events if isinstance(item, Request) else item)]


class Cut(NamedTuple):
    """When the driver cuts a batch (`BatchLimits`, with the config's settings over the sink's)."""

    max_events: int
    max_bytes: int
    timeout: float
    idle: float


def batch_limits(sink: Sink) -> Cut:
    """The batch limits in force: the config's, never above the destination's hard limits."""
    limits, batch = sink.limits, sink.config.batch
    prefix = f"sinks.{sink.name}.batch"
    if batch.max_events is not None and batch.max_events > limits.max_events:
        raise ConfigError(f"{prefix}.max_events", f"at most {limits.max_events} for a {sink.config.type} sink")
    if batch.max_bytes is not None and batch.max_bytes > limits.max_bytes:
        raise ConfigError(f"{prefix}.max_bytes", f"at most {limits.max_bytes} bytes for a {sink.config.type} sink")
    return Cut(
        batch.max_events or limits.max_events,
        batch.max_bytes or limits.goal_bytes or limits.max_bytes,
        limits.timeout if batch.timeout is None else batch.timeout,
        limits.idle if batch.idle is None else batch.idle,
    )


class SinkDriver:
    def __init__(
        self,
        sink: Sink,
        channel: Channel,
        on_failure: Callable[[], None] | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.sink = sink
        self.channel = channel
        self.dead_letters = dead_letters  # where events refused for good are parked, when configured
        self.max_events, self.max_bytes, self.batch_timeout, self.batch_idle = batch_limits(sink)
        self.health = Health(sink.name, sink.config.unhealthy_after)
        self.inflight: set[Batch] = set()  # batches being delivered, or cut off by cancellation
        self.failed: list[Event] = []  # what batches killed by a bug left undelivered
        self._on_failure = on_failure  # the agent stops when a delivery dies of a bug
        self._limit = AdaptiveLimit(sink.config.concurrency, sink.overload_reasons)  # adapted to the answers
        self._tasks: set[asyncio.Task[None]] = set()
        self._handing_over = False  # a reload gave the channel to another driver: take no more from it
        self._adopted: list[Batch] = []  # a predecessor's batches it could not finish, delivered first
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
        metrics.concurrency_limit.labels(name).set_function(lambda: self._limit.limit)
        self._problems = RateLimitedLog(log, interval=60.0)

    async def run(self) -> None:
        """Consume the channel until it is closed and drained, then wait for in-flight requests.
        Cancelled, or killed by a bug, it cancels its deliveries first: none may go on sending (and
        counting) after the agent has accounted for what was left undelivered."""
        await self.sink.start()
        try:
            adopted, self._adopted = self._adopted, []
            for batch in adopted:
                unresolved = batch.unresolved()
                if unresolved:
                    await self._dispatch(Chain([unresolved]), list(batch.acks))
                else:  # every event was sent or dropped: only its release was cut off
                    for ack, units in batch.acks:
                        ack.done(units)
            await self._batch_loop()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            await self.sink.stop()
            if self.dead_letters is not None:
                await self.dead_letters.close()

    async def _batch_loop(self) -> None:
        """Cut batches by what they weigh encoded (`Part.wire`), up to the batch goal, never over
        `max_events`; a batch also leaves when its oldest event has waited `batch.timeout`, or when
        no part came for `batch.idle` (a replayed backlog's last batch, a burst's logs: sent now,
        not a whole timeout later)."""
        loop = asyncio.get_running_loop()
        pieces: list[Sequence[Event]] = []  # the batch being cut: runs of the parts it takes
        count = 0  # events in `pieces`
        acks: list[tuple[Ack, int]] = []
        wire = 0
        deadline = 0.0
        part: Part | None = None
        start = 0  # the first event of `part` not yet in a batch
        try:
            while True:
                if self._handing_over:
                    if pieces:
                        await self._dispatch(Chain(pieces), acks)
                    return
                timeout = max(0.0, min(deadline - loop.time(), self.batch_idle)) if pieces else None
                part = await self.channel.get(timeout)
                start = 0
                if part is None:
                    if pieces:
                        await self._dispatch(Chain(pieces), acks)
                        pieces, count, acks, wire = [], 0, [], 0
                    if self.channel.drained:
                        return
                    continue
                if not pieces:
                    deadline = loop.time() + self.batch_timeout
                size = len(part.events)
                if count + size <= self.max_events and wire + part.wire <= self.max_bytes:
                    pieces.append(part.events)
                    acks.append((part.ack, size))
                    count += size
                    wire += part.wire
                    start = size
                    if count >= self.max_events or wire >= self.max_bytes:
                        await self._dispatch(Chain(pieces), acks)
                        pieces, count, acks, wire = [], 0, [], 0
                    continue
                # The part straddles batches: cut it by each event's encoded size.
                # Prepared lines are cut on where their lines end in the worker's reply, as they are.
                run = part.events
                ends, first, base = (
                    (run.ends, run.lo, run.origin) if isinstance(run, Lines) else (wire_ends(events_of(run)), 0, 0)
                )
                while start < size:
                    if not pieces:
                        deadline = loop.time() + self.batch_timeout
                    room = min(size, start + self.max_events - count)
                    end = bisect_right(ends, base + self.max_bytes - wire, first + start, first + room) - first
                    if end == start and not pieces:
                        end = start + 1  # an event larger than a whole batch goes alone
                    if end > start:
                        pieces.append(run[start:end])
                        acks.append((part.ack, end - start))
                        count += end - start
                        wire += ends[first + end - 1] - base
                        base, start = ends[first + end - 1], end
                    if start < size or count >= self.max_events or wire >= self.max_bytes:
                        await self._dispatch(Chain(pieces), acks)
                        pieces, count, acks, wire = [], 0, [], 0
        except BaseException:  # cancelled at the deadline, or a bug: what it holds is left unsent, unacked
            rest = part.events[start:] if part is not None else []
            if part is not None and rest:
                acks.append((part.ack, len(rest)))
                pieces.append(rest)
            if pieces:  # with its acks: a successor driver (a reload) may deliver it yet
                self.inflight.add(Batch(acks, deque([Chain(pieces)])))
            raise

    def hand_over(self) -> None:
        """Stop taking parts from the channel (a reload gives it to the sink's new settings): the
        batches already cut are still delivered, then `run` returns."""
        self._handing_over = True
        self.channel.wake()

    def adopt(self, predecessor: SinkDriver) -> None:
        """Take over the batches `predecessor` left unresolved when it was cut off, acks and all:
        encoded anew by this sink, before anything from the channel."""
        self._adopted.extend(predecessor.inflight)
        predecessor.inflight.clear()

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @property
    def inflight_events(self) -> int:
        return sum(batch.nevents for batch in self.inflight)

    def unsent(self) -> list[Event]:
        """Everything queued or in flight, neither sent nor dropped (at shutdown, once the driver has
        stopped, to account for what was not delivered); `failed` is accounted for apart."""
        queued = [event for part in self.channel.drain_unsent() for event in part.events]
        return queued + [event for batch in self.inflight for event in batch.unresolved()]

    async def _dispatch(self, events: Chain, acks: list[tuple[Ack, int]]) -> None:
        await self._limit.acquire()
        batch = Batch(acks, deque([events]))
        self.inflight.add(batch)
        task = asyncio.create_task(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, batch: Batch) -> None:
        """Work through the batch in order, then release its acks exactly once. Cancelled (the
        shutdown deadline), the batch stays in `inflight` with its acks held; killed by a bug, it
        moves to `failed`, acks held, and the agent is told to stop: a restart resends it."""
        try:
            while batch.todo:
                item = batch.todo[0]
                after, pause = await self._send(item, batch) if isinstance(item, Request) else (self._encode(item), 0.0)
                batch.todo.popleft()  # resolved, or replaced by `after`, with no await in between
                batch.todo.extendleft(reversed(after))
                if pause:  # events to send again wait here, in the to-do list: cut off, they count as unsent
                    await asyncio.sleep(pause)
            if self.dead_letters is not None:  # what the batch parked is on disk before its checkpoint moves
                await self.dead_letters.settled()
            self.inflight.discard(batch)
            for ack, units in batch.acks:
                ack.done(units)
        except Exception:
            unresolved = batch.unresolved()
            log.exception(
                "delivering a batch failed unexpectedly; stopping, and holding its checkpoint back",
                extra={"sink": self.sink.name, "events": len(unresolved)},
            )
            self.inflight.discard(batch)
            self.failed.extend(unresolved)
            if self._on_failure is not None:
                self._on_failure()
        finally:
            self._limit.release()

    def _encode(self, events: Sequence[Event]) -> list[Todo]:
        """The sink's requests for `events`. An encoder that raises has a bug that would fail the same
        way on every retry: those events are dropped with a counted reason, never a stalled checkpoint."""
        try:
            return list(self.sink.encode_runs(events))
        except Exception as exc:
            log.exception("sink could not encode a batch; dropped", extra={"sink": self.sink.name})
            self._discard([(event, "encode_error", f"{type(exc).__name__}: {exc}") for event in events])
            return []

    async def _send(self, request: Request, batch: Batch) -> tuple[list[Todo], float]:
        """Send until the destination decides, and count what it decided. What is left to do in the
        request's place: the halves of a request it found too large, or the events it asked for
        again (to encode and send after a pause, the second value)."""
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
        events = request.events
        if outcome.kind == "delivered":
            resend = self._delivered(request, outcome)
            if resend:
                batch.resends += 1
                metrics.retries.labels(self.sink.name, outcome.reason or "resend").inc()
                return [resend], self._pause(outcome, batch.resends)
        elif outcome.kind == "split" and len(events) > 1:
            metrics.retries.labels(self.sink.name, "split").inc()
            middle = len(events) // 2
            return [events[:middle], events[middle:]], 0.0
        else:
            default = "too_large" if outcome.kind == "split" else "rejected"
            self._drop([(event, outcome.reason or default, outcome.detail) for event in events])
        return [], 0.0

    async def _attempt(self, request: Request) -> Outcome:
        """One send, its outcome and round-trip time told to the concurrency limit: retries happen
        inside a slot, so the limit reacts to every attempt, not only a request's last."""
        token = self._limit.begin()
        started = time.perf_counter()
        try:
            outcome = await self.sink.send(request)
        except (OSError, TimeoutError) as exc:
            outcome = Outcome("retry", reason="connection", detail=type(exc).__name__)
        except Exception as exc:  # a bug must not lose data: keep it and retry, loudly
            log.exception("sink send failed unexpectedly", extra={"sink": self.sink.name})
            outcome = Outcome("retry", reason="internal_error", detail=type(exc).__name__)
        rtt = time.perf_counter() - started
        self._latency.observe(rtt)
        self._limit.record(token, outcome, rtt)
        return outcome

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self._pause(exc.outcome if isinstance(exc, _RetryLater) else Outcome("retry"), state.attempt_number)

    def _pause(self, outcome: Outcome, attempt: int) -> float:
        """How long to wait before sending again, the `attempt`-th time: what the destination said
        (Retry-After), the longest backoff for a sink refused, else exponential backoff with jitter."""
        if outcome.retry_after is not None:
            return min(max(outcome.retry_after, 0.0), MAX_HONOURED_RETRY_AFTER)
        retry = self.sink.config.retry
        if outcome.kind == "unhealthy":
            return retry.max_backoff
        backoff = retry.initial_backoff * 2.0 ** min(attempt - 1, MAX_DOUBLINGS)
        return min(backoff, retry.max_backoff) + random.uniform(0, retry.initial_backoff)

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

    def _delivered(self, request: Request, outcome: Outcome) -> list[Event]:
        """Count what the destination accepted, drop what it refused for good, and return the events
        it asked for again (in request order). A sink naming an event twice or outside the request
        has a bug: raised, so the batch is held back and the agent stops."""
        events = request.events
        named = [rejection.index for rejection in outcome.rejected] + list(outcome.resend)
        if len(set(named)) != len(named) or not all(0 <= index < len(events) for index in named):
            raise ValueError(f"sink {self.sink.name} named events {named} of a request of {len(events)}")
        self._sent.inc(len(events) - len(named))
        self._bytes.inc(len(request.wire if request.wire is not None else request.body))
        if outcome.rejected:
            self._drop([(events[reject.index], reject.reason, reject.detail) for reject in outcome.rejected])
        return [events[index] for index in sorted(outcome.resend)]

    def _drop(self, dropped: Sequence[Dropped]) -> None:
        """Events the destination refused for good: counted, and said at most once a minute per reason."""
        self._discard(dropped)
        for reason, count in Counter(reason for _, reason, _ in dropped).items():
            self._problems.error(
                f"drop:{reason}",
                "destination rejected events; dropped",
                sink=self.sink.name,
                reason=reason,
                events=count,
                detail=next(detail for _, why, detail in dropped if why == reason),
            )

    def _discard(self, dropped: Sequence[Dropped]) -> None:
        """Count events given up on, by reason, and park them in the dead-letter file when there is
        one: they are resolved, never retried."""
        for reason, count in Counter(reason for _, reason, _ in dropped).items():
            metrics.events_dropped.labels(self.sink.name, reason).inc(count)
        if self.dead_letters is not None and dropped:
            self.dead_letters.park(dropped)
