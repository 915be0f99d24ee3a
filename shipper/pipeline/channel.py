"""A sink's bounded input queue, bounded by bytes rather than item count.

Items are `Part`s: the events of one chunk routed to one sink, with the chunk's ack. A full
channel either makes the producer wait (`block`: the backlog stays at a replayable source) or
drops the newest part with a counted reason (`drop_newest`). One part is always admitted into an
empty channel, so a part larger than the bound cannot deadlock the pipeline. The on-disk spill
buffer will slot in behind the same `put`/`get` interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from shipper import metrics
from shipper.event import Event
from shipper.pipeline.acks import Ack

log = logging.getLogger("shipper.channel")


@dataclass(slots=True)
class Part:
    """One chunk's events for one sink: `nbytes` is their estimated memory (what the channel's
    bound counts), `wire` what they weigh encoded (what batches are cut by)."""

    events: list[Event]
    ack: Ack
    nbytes: int
    wire: int = -1  # -1: each event's raw bytes plus a separator

    def __post_init__(self) -> None:
        if self.wire < 0:
            self.wire = sum([len(event.raw) + 1 for event in self.events])


class Channel:
    def __init__(self, sink: str, max_bytes: int, when_full: str) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.nbytes = 0
        self.nevents = 0
        self.closed = False
        self._items: deque[Part] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._gauge_bytes = metrics.buffer_bytes.labels(sink)
        self._gauge_events = metrics.buffer_events.labels(sink)
        self._dropped = metrics.events_dropped.labels(sink, "buffer_full")
        metrics.buffer_capacity.labels(sink).set(max_bytes)
        self._full_logged = False

    def _has_room(self, nbytes: int) -> bool:
        return not self._items or self.nbytes + nbytes <= self.max_bytes

    async def put(self, part: Part) -> None:
        """Enqueue, waiting for room (`block`) or dropping the part (`drop_newest`)."""
        if self.closed:
            raise RuntimeError(f"channel for sink {self.sink!r} is closed")
        while not self._has_room(part.nbytes):
            dropping = self.when_full == "drop_newest"
            if not self._full_logged:
                log.warning(
                    "sink buffer full: dropping newest events" if dropping else "sink buffer full: pausing the source",
                    extra={"sink": self.sink, "buffer_bytes": self.nbytes, "max_bytes": self.max_bytes},
                )
                self._full_logged = True
            if dropping:
                self._dropped.inc(len(part.events))
                part.ack.done(len(part.events))
                return
            self._writable.clear()
            await self._writable.wait()
        if self._full_logged and self.nbytes + part.nbytes <= self.max_bytes // 2:
            self._full_logged = False  # drained well below the bound: the next episode is logged again
        self._items.append(part)
        self.nbytes += part.nbytes
        self.nevents += len(part.events)
        self._update_gauges()
        self._readable.set()

    async def get(self, timeout: float | None) -> Part | None:
        """Next part, or None when `timeout` passes first or the channel is closed and empty."""
        if not self._items and not self.closed:
            self._readable.clear()
            try:
                await asyncio.wait_for(self._readable.wait(), timeout)
            except TimeoutError:
                return None
        if not self._items:
            return None
        part = self._items.popleft()
        self.nbytes -= part.nbytes
        self.nevents -= len(part.events)
        self._update_gauges()
        self._writable.set()
        return part

    def wake(self) -> None:
        """Make a waiting `get` return None now: its driver is handing the channel over (a reload)."""
        self._readable.set()

    def close(self) -> None:
        """No more puts; `get` drains what is left and then returns None."""
        self.closed = True
        self._readable.set()

    def drain_unsent(self) -> list[Part]:
        """Take every queued part (at shutdown, to account for what was not sent)."""
        parts = list(self._items)
        self._items.clear()
        self.nbytes = 0
        self.nevents = 0
        self._update_gauges()
        return parts

    def _update_gauges(self) -> None:
        self._gauge_bytes.set(self.nbytes)
        self._gauge_events.set(self.nevents)
