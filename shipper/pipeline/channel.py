"""A sink's bounded input queue, bounded by bytes rather than item count, with an ordered spill to disk.

Items are `Part`s: the events of one chunk routed to one sink, with the chunk's ack. In memory
(`buffer.type = "memory"`), a full channel makes the producer of a replayable source wait (`block`:
the backlog stays in the file), or drops the newest part with a counted reason (`drop_newest`);
the parts of a source that cannot be read again (stdin, a wrapped process) go to the sink's disk
buffer instead (shipper/pipeline/spill.py, up to `spill_max_bytes`, then dropped as `buffer_full`),
so the pipe keeps draining and the API never blocks on logging. With `buffer.type = "disk"` every
part is written to the disk buffer first, and the source's data counts as taken once it is there.

Order is kept: once a part went to disk, the parts after it follow it there (or wait) until the
reader has caught up with the disk, and parts read back go first. A part written to disk releases
the source's ack; what is read back is acknowledged to the disk buffer, whose delivered position
then moves. One part is always admitted into an empty memory channel, so a part larger than the
bound cannot deadlock the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from shipper import metrics
from shipper.event import Event, wire_size
from shipper.lines import events_of
from shipper.log import RateLimitedLog
from shipper.pipeline.acks import Ack
from shipper.pipeline.spill import SpillLog, events_memory
from shipper.tally import Cell

log = logging.getLogger("shipper.channel")

DISK_FULL_RETRY = 1.0  # seconds between attempts to write to a disk buffer that failed (disk full)


@dataclass(slots=True)
class Part:
    """One chunk's events for one sink: `nbytes` is their estimated memory (what the channel's
    bound counts), `wire` what they weigh encoded (what batches are cut by)."""

    events: Sequence[Event]  # a list, or prepared logs as they arrived (shipper/lines.py `Lines`)
    ack: Ack
    nbytes: int
    wire: int = -1  # -1: each event's raw bytes plus a separator

    def __post_init__(self) -> None:
        if self.wire < 0:
            self.wire = wire_size(events_of(self.events))


class Channel:
    def __init__(
        self, sink: str, max_bytes: int, when_full: str, spill: SpillLog | None = None, durable: bool = False
    ) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.spill = spill  # the disk buffer, where a sink has one
        self.durable = durable  # every part goes through `spill` (buffer.type = "disk")
        self.nbytes = 0
        self.nevents = 0
        self.closed = False
        self._items: deque[Part] = deque()
        # Parts went to disk and not all were read back: new parts follow them there, in order.
        self._behind = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._gauge_bytes = metrics.buffer_bytes.labels(sink)
        self._gauge_events = metrics.buffer_events.labels(sink)
        self._dropped = metrics.events_dropped.labels(sink, "buffer_full")
        metrics.buffer_capacity.labels(sink).set(max_bytes)
        self._full_notices = RateLimitedLog(log, interval=60.0)
        self._disk_full_logged = False

    def open(self) -> None:
        """Take the disk buffer (what a previous run left in it is read first)."""
        if self.spill is not None:
            self.spill.open()
            self._behind = self.spill.pending

    def _has_room(self, nbytes: int) -> bool:
        return not self._behind and (not self._items or self.nbytes + nbytes <= self.max_bytes)

    async def put(self, part: Part, replayable: bool = True) -> None:
        """Enqueue: in memory, on disk, waiting for room (`block`) or dropping the part (counted).
        `replayable`: the part's source can be read again, so it may wait instead of spilling."""
        if self.closed:
            raise RuntimeError(f"channel for sink {self.sink!r} is closed")
        if self.durable:
            await self._put_durable(part, replayable)
            return
        while not self._has_room(part.nbytes):
            if self.spill is not None and not replayable:
                self._spill(part)
                return
            dropping = self.when_full == "drop_newest"
            self._full_notices.warning(  # a backlog fills the buffer again and again: once a minute
                "full",
                "sink buffer full: dropping newest events" if dropping else "sink buffer full: pausing the source",
                sink=self.sink,
                buffer_bytes=self.nbytes,
                max_bytes=self.max_bytes,
            )
            if dropping:
                self._drop(part, self._dropped)
                return
            self._writable.clear()
            await self._writable.wait()
        self._enqueue(part)

    def _enqueue(self, part: Part) -> None:
        self._items.append(part)
        self.nbytes += part.nbytes
        self.nevents += len(part.events)
        self._update_gauges()
        self._readable.set()

    def _drop(self, part: Part, counter: Cell) -> None:
        counter.inc(len(part.events))
        part.ack.done(len(part.events))

    def _spill(self, part: Part) -> None:
        """A part of a source that cannot wait, with memory full: to disk, else dropped (counted)."""
        assert self.spill is not None
        written, error = self._spill_within_bound(events_of(part.events))
        left = len(part.events) - written
        if error is not None:
            self._disk_failed(error)
            metrics.events_dropped.labels(self.sink, "disk_error").inc(left)
        elif left:
            self._disk_bound_reached(dropping=True)
            self._dropped.inc(left)
        else:
            self._disk_full_logged = False
        if written:
            if not self._behind:
                log.warning(
                    "sink buffer full: spilling to disk", extra={"sink": self.sink, "path": str(self.spill.directory)}
                )
            self._behind = True
            self._readable.set()
        part.ack.done(len(part.events))

    def _spill_within_bound(self, events: list[Event]) -> tuple[int, OSError | None]:
        """Write `events` to disk in order, each record within the bound: a run whose record would
        pass it goes in halves (only a single event bigger than the whole bound goes alone, into an
        empty buffer); once one does not fit, or a write fails, the rest is left. How many were
        written, and the error that stopped the writing."""
        assert self.spill is not None
        runs, written = [events], 0
        while runs:
            run = runs.pop()
            try:
                if self.spill.append(run, alone_over_bound=len(run) == 1) is not None:
                    written += len(run)
                    continue
            except OSError as exc:
                return written, exc
            if len(run) == 1 or self.spill.nbytes >= self.spill.max_bytes:
                break
            middle = len(run) // 2
            runs += [run[middle:], run[:middle]]  # the first half next
        return written, None

    async def _put_durable(self, part: Part, replayable: bool) -> None:
        """buffer.type = "disk": to disk first (a replayable source waits while it is full), then
        kept in memory too while the reader is caught up and memory has room, to skip reading it back."""
        assert self.spill is not None
        events = events_of(part.events)
        while True:
            try:
                position = self.spill.append(events)
                if position is not None:
                    break
                self._disk_bound_reached(dropping=not replayable or self.when_full == "drop_newest")
                if not replayable or self.when_full == "drop_newest":
                    self._drop(part, self._dropped)
                    return
            except OSError as exc:
                self._disk_failed(exc)
                if not replayable:
                    self._drop(part, metrics.events_dropped.labels(self.sink, "disk_error"))
                    return
            await asyncio.sleep(DISK_FULL_RETRY)  # delivery deletes segments; an operator frees space
        self._disk_full_logged = False
        if self._has_room(part.nbytes):  # the reader is caught up: this record is the next to read
            self._enqueue(Part(events, self.spill.consume(position, len(events)), part.nbytes, part.wire))
        else:
            self._behind = True
            self._readable.set()
        if self.spill.fsync == "always":  # placed in order first: another part may be put meanwhile
            await asyncio.to_thread(self.spill.sync)
        part.ack.done(len(events))

    def _disk_bound_reached(self, dropping: bool) -> None:
        assert self.spill is not None
        if not self._disk_full_logged:
            log.error(
                "disk buffer full: dropping newest events" if dropping else "disk buffer full: pausing the source",
                extra={"sink": self.sink, "disk_bytes": self.spill.nbytes, "max_bytes": self.spill.max_bytes},
            )
            self._disk_full_logged = True

    def _disk_failed(self, exc: OSError) -> None:
        assert self.spill is not None
        if not self._disk_full_logged:
            log.error(
                "cannot write to the disk buffer",
                extra={"sink": self.sink, "path": str(self.spill.directory), "error": str(exc)},
            )
            self._disk_full_logged = True

    async def get(self, timeout: float | None) -> Part | None:
        """Next part, or None when `timeout` passes first or the channel is closed and empty."""
        if not self._items and not self._behind and not self.closed:
            self._readable.clear()
            try:
                await asyncio.wait_for(self._readable.wait(), timeout)
            except TimeoutError:
                return None
        if self._items:
            part = self._items.popleft()
            self.nbytes -= part.nbytes
            self.nevents -= len(part.events)
            self._update_gauges()
            self._writable.set()
            return part
        if self._behind:
            assert self.spill is not None
            record = self.spill.read()
            if record is not None:
                events, ack = record
                return Part(events, ack, events_memory(events))
            self._behind = False  # caught up with the disk: new parts may stay in memory again
            self._writable.set()
        return None

    @property
    def drained(self) -> bool:
        """Closed, and nothing left in memory or on disk to read."""
        return self.closed and not self._items and not self._behind

    def wake(self) -> None:
        """Make a waiting `get` return None now: its driver is handing the channel over (a reload)."""
        self._readable.set()

    def close(self) -> None:
        """No more puts; `get` drains what is left and then returns None."""
        self.closed = True
        self._readable.set()

    def drain_unsent(self) -> list[Part]:
        """Take every part queued in memory (at shutdown, to account for what was not sent)."""
        parts = list(self._items)
        self._items.clear()
        self.nbytes = 0
        self.nevents = 0
        self._update_gauges()
        return parts

    def _update_gauges(self) -> None:
        self._gauge_bytes.set(self.nbytes)
        self._gauge_events.set(self.nevents)
