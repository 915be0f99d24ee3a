"""Feeds: where a source's input enters the pipeline.

A source opens one feed per input stream (a file, stdin, a wrapped process, a poller's cursor).
`LineFeed` takes chunks of bytes with byte positions and does the generic rest once: splitting
chunks into lines, parsing and normalizing (here or in a parse worker), the source's transforms,
routing and each sink's preparer, and opening one ack per chunk whose position accounts for bytes
still held (a partial last line, an unfinished multi-line event), so a checkpoint never covers data
that has not been delivered. `RecordFeed` takes records a source parsed itself, with positions of
its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from shipper import metrics
from shipper.encoding import sanitized
from shipper.event import ENCODED_OVERHEAD, Event, fill_in, memory_size
from shipper.lines import ArrivedLines, Lines
from shipper.parsing import Processor, build_processor
from shipper.pipeline.acks import Ack, AckTracker
from shipper.pipeline.channel import Part
from shipper.pipeline.routing import Routing, Share
from shipper.pipeline.transforms import Transforms, build_transforms
from shipper.speedups import SPEEDUPS
from shipper.workers import Parsed, RemoteParser, SinkRoute, feed_setup, route_setup

if TYPE_CHECKING:
    from shipper.source import SourceContext

_record_encoder = msgspec.json.Encoder()


class LineFeed:
    """Chunks of bytes in, routed events out, with acks ordered by position. With parse workers,
    up to IN_FLIGHT chunks are parsed there while earlier ones are routed here."""

    IN_FLIGHT = 3
    # Lines parsed (and routed) at a time. A chunk is bounded in bytes, but events cost ~1 KiB
    # each however short their line: 1 MiB of 2-byte lines parsed at once would be ~500 MiB of
    # events, far past any sink's buffer, before the first could wait for room.
    PIECE_LINES = 8192

    def __init__(self, context: SourceContext, tracker: AckTracker, fields: dict[str, Any] | None = None) -> None:
        self.context = context
        self.tracker = tracker
        self.fields = fields
        self.processor: Processor | None = None
        self.transforms: Transforms | None = None
        self.routing: Routing | None = None
        self.remote: RemoteParser | None = None
        # The sinks this feed routes to; a reload may swap them (`reroute`): each chunk is routed
        # by the routes in force when its parsing began.
        self.routes = context.routes
        if context.workers is not None:
            name, config, routes = context.name, context.config, context.routes
            setup = feed_setup(name, config, host=context.host, redact=context.redact, fields=fields, routes=routes)
            self.remote = context.workers.parser(setup)
        else:
            self.processor = build_processor(context.name, context.config, host=context.host, redact=context.redact)
            self.transforms = build_transforms(context.name, context.config.transforms, context.redact)
            self.routing = _routing(context.routes)
        self.max_line = context.config.max_line_bytes
        self.position: int | None = None
        self._partial: dict[str | None, bytes] = {}
        # Chunks a worker is parsing: their reply, the position after them minus the partial lines
        # held here then (None for a source without positions), whether they consumed input (a
        # flush that emits nothing moves no checkpoint, as without workers), and the routes the
        # worker routes them by; in input order.
        self._pending: deque[tuple[asyncio.Future[Parsed], int | None, bool, list[SinkRoute]]] = deque()
        self._worker_holds = False  # the last reply said lines are held in an open multi-line group
        self._encoded_fields = {"source": context.name}  # what the agent reads of a prepared event
        self._lock = asyncio.Lock()
        self._received = metrics.events_received.labels(context.name)
        self._bytes = metrics.bytes_received.labels(context.name)

    @property
    def held_bytes(self) -> int:
        """Input bytes not yet emitted as events: partial lines, open multi-line groups (local)."""
        held = self._partial_bytes()
        return held + self.processor.held_bytes if self.processor is not None else held

    def _partial_bytes(self) -> int:
        return sum(len(p) for p in self._partial.values())

    async def push(self, data: bytes, stream: str | None = None, end_offset: int | None = None) -> None:
        """Feed raw bytes read from `stream`; `end_offset` is the source position after them.

        The processor cuts lines longer than `max_line_bytes` into pieces. One still streaming in
        is not held whole: once the partial line grows past `max_line_bytes`, its start goes to be
        parsed as an open-ended line (`Processor.parse(open_end=True)`) and at most
        `max_line_bytes` of it stays here."""
        self._bytes.inc(len(data))
        partial = self._partial.pop(stream, b"")
        body: bytes | None = None  # for a worker: the lines as one slice
        lines: list[bytes] = []
        if self.remote is not None:
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = partial + data
            else:  # the held partial line and the new lines copied once, into the body
                body = b"".join((partial, memoryview(data)[:cut])) if partial else data[:cut]
                rest = data[cut + 1 :]
        else:
            lines = (partial + data).split(b"\n")
            rest = lines.pop()
        head = b""
        if len(rest) > self.max_line:  # a long line still streaming in: its start goes now
            keep = (len(rest) - 1) % self.max_line + 1
            head, rest = rest[:-keep], rest[-keep:]
            if self.remote is None:
                lines.append(head)
            else:
                body = head if body is None else body + b"\n" + head
        if rest:
            self._partial[stream] = rest
        async with self._lock:
            if end_offset is not None:
                self.position = end_offset
            now = time.time()
            if self.processor is not None:
                await self._parse_here(self.processor, lines, stream, now, bool(head))
            elif body is not None and self.remote is not None:
                unheld = self._unheld_position()
                for piece, after in _pieces(body, self.PIECE_LINES):
                    routes = self.routes  # what the worker routes this piece by, whatever a reload does meanwhile
                    parsing = await self.remote.parse(piece, stream, now, bool(head) and after == len(body))
                    # The position right after this piece's lines (their newline included).
                    position = None if unheld is None else unheld - (len(body) - after)
                    self._pending.append((parsing, position, True, routes))
                    await self._route_parsed(keep=self.IN_FLIGHT)
        # Let the sinks encode and send what this chunk added before the next one is parsed. A
        # source whose reads complete at once (a file in the page cache) would otherwise fill its
        # sinks' buffers to the bound before any driver ran: memory at the bound all the time,
        # and batches sent in bursts.
        await asyncio.sleep(0)

    async def flush(self, force: bool = False) -> None:
        """Emit multi-line events idle past their timeout; with `force`, everything held. With a
        parse worker, also route every chunk it is still parsing."""
        async with self._lock:
            rests: list[tuple[str | None, bytes]] = []
            if force:
                rests = list(self._partial.items())
                self._partial.clear()
            if self.processor is not None:
                now = time.time()
                for stream, rest in rests:
                    await self._route(self.processor.parse([rest], stream, now))
                events = self.processor.flush(now, force)
                if events:
                    await self._route(events)
            elif self.remote is not None:
                if not (force or self._pending or self._worker_holds):
                    return  # the worker holds nothing to time out: an idle feed costs no round trip
                routes = self.routes
                flushing = await self.remote.flush(time.time(), force, rests)
                self._pending.append((flushing, self._unheld_position(), bool(rests), routes))
                await self._route_parsed(keep=0)

    def reroute(self, routes: list[SinkRoute]) -> None:
        """Route what is parsed from now on by `routes` (a config reload): no input is read again and
        no multi-line group is cut; chunks already being parsed keep the routes they started with."""
        if self.remote is not None:
            self.remote.reroute(route_setup(self.context.name, routes))
        else:
            self.routing = _routing(routes)
        self.routes = routes

    async def settled(self) -> None:
        """Wait until every chunk parsed before now has been routed (after `reroute`, nothing more
        goes to the routes it replaced)."""
        async with self._lock:
            await self._route_parsed(keep=0)

    def _acked_position(self, unheld: Any, held: int) -> Any:
        """The position a parsed chunk's ack commits: the source position after it, less the
        bytes the worker still holds in open multi-line groups."""
        return None if unheld is None else unheld - held

    def _unheld_position(self) -> int | None:
        return None if self.position is None else self.position - self._partial_bytes()

    async def _route_parsed(self, keep: int) -> None:
        """Route what the worker finished, in input order; wait for the oldest chunk while more
        than `keep` are in flight."""
        pending = self._pending
        while pending and (len(pending) > keep or pending[0][0].done()):
            parsing, unheld, consumed, routes = pending[0]
            held, count, routed = await parsing
            pending.popleft()
            self._worker_holds = held > 0
            if not (count or consumed):  # a flush that emitted nothing: no position to acknowledge
                continue
            ack = self.tracker.open(self._acked_position(unheld, held))
            if count:
                self._received.inc(count)
            for index, lines, stamps in routed:
                await self._put(routes[index], (lines, stamps), ack)
            ack.done()

    async def _put(self, route: SinkRoute, share: Share | ArrivedLines, ack: Ack) -> None:
        """One route's share of a chunk into its sink's channel, under `ack`: prepared logs (their
        memory is their bytes; their wire size, the NDJSON's), or events for a sink without a
        preparer (estimated)."""
        if isinstance(share, list):
            part = Part(share, ack, memory_size(share))
        else:
            lines = Lines.of(share, self._encoded_fields)
            part = Part(lines, ack, lines.wire + ENCODED_OVERHEAD * len(lines), lines.wire)
        ack.add(len(part.events))
        await route.channel.put(part, self.context.replayable)

    async def _parse_here(
        self, processor: Processor, lines: list[bytes], stream: str | None, now: float, open_end: bool
    ) -> None:
        """Parse and route a chunk's lines in pieces of PIECE_LINES, under one ack whose position
        is set once the last piece is parsed (what the processor still holds is known then).
        `open_end`: the last line is the start of a long line (see `push`)."""
        ack = self.tracker.open(None)
        for start in range(0, len(lines), self.PIECE_LINES):
            end = start + self.PIECE_LINES
            piece, piece_open = lines[start:end], open_end and end >= len(lines)
            routing, routes = self.routing, self.routes  # one consistent pair, whatever a reload does meanwhile
            assert routing is not None
            direct = None
            if not piece_open and self.transforms is None:
                direct = routing.direct(processor, b"\n".join(piece), stream, now, self.fields)
            if direct is None:
                await self._hand_on(processor.parse(piece, stream, now, piece_open), ack)
                continue
            count, shares = direct
            self._received.inc(count)
            for index, share in shares:
                await self._put(routes[index], share, ack)
        ack.position = self._local_position()
        ack.done()

    async def _route(self, events: list[Event]) -> None:
        ack = self.tracker.open(self._local_position())
        await self._hand_on(events, ack)
        ack.done()

    def _local_position(self) -> int | None:
        """The source position minus every byte not yet emitted as an event (parsing here)."""
        return None if self.position is None else self.position - self.held_bytes

    async def _hand_on(self, events: list[Event], ack: Ack) -> None:
        """Events parsed here, with the feed's fields, transformed, routed and prepared (as a worker
        does: `parse_worker.WorkerFeed.parsed`) under `ack`."""
        if events:
            routing, routes = self.routing, self.routes  # one consistent pair, whatever a reload does meanwhile
            assert routing is not None
            fill_in(events, self.fields)
            self._received.inc(len(events))
            if self.transforms is not None:
                events = self.transforms(events)
            for index, share in routing.split(events):
                await self._put(routes[index], share, ack)


class RecordFeed(LineFeed):
    """Records a source already parsed (a JSON object per log, with its own time: a poller's rows,
    a receiver's batch), each push acknowledged at an opaque position of the source's own (a
    cursor, a row id) that commits, like a file offset, only after delivery and only over a
    contiguous range. The records go through the same path as JSON lines (normalization,
    transforms, redaction, routing, each sink's preparer; in a parse worker when the source has
    one), so a record source gets exactly what a line source gets; no record is ever held back
    as part of a multi-line group."""

    async def push_records(self, records: list[dict[str, Any]], position: Any) -> None:
        """Feed `records`; `position` is where the source resumes once they are all delivered. With
        no records, `position` still commits once every push before it is delivered (a poll that
        found nothing new moves its cursor)."""
        if not records:
            await self._commit_when_delivered(position)
            return
        lines = record_lines(records)
        self._bytes.inc(sum(map(len, lines)) + len(lines))
        async with self._lock:
            now = time.time()
            before, self.position = self.position, position
            pieces = range(0, len(lines), self.PIECE_LINES)
            for start in pieces:
                # Every piece but the last commits no further than the previous push did.
                at = position if start == pieces[-1] else before
                piece = lines[start : start + self.PIECE_LINES]
                if self.processor is not None:
                    ack = self.tracker.open(at)
                    await self._hand_on(self.processor.parse(piece, None, now), ack)
                    ack.done()
                elif self.remote is not None:
                    routes = self.routes
                    self._pending.append((await self.remote.parse(b"\n".join(piece), None, now), at, True, routes))
                    await self._route_parsed(keep=self.IN_FLIGHT)
        await asyncio.sleep(0)

    async def _commit_when_delivered(self, position: Any) -> None:
        """An ack of no events at `position`, in order behind the pushes before it (with a parse
        worker, behind the chunks it is still parsing)."""
        async with self._lock:
            self.position = position
            if self.remote is None:
                self.tracker.open(position).done()
                return
            nothing: asyncio.Future[Parsed] = asyncio.get_running_loop().create_future()
            nothing.set_result((0, 0, []))
            self._pending.append((nothing, position, True, self.routes))
            await self._route_parsed(keep=self.IN_FLIGHT)

    def _acked_position(self, unheld: Any, held: int) -> Any:
        return unheld  # a record is never held: what was pushed is what was parsed

    def _unheld_position(self) -> Any:
        return self.position

    def _local_position(self) -> Any:
        return self.position


def _routing(routes: list[SinkRoute]) -> Routing:
    return Routing.build([(route.when, route.sink, route.preparer) for route in routes])


def record_lines(records: list[dict[str, Any]]) -> list[bytes]:
    """Each record as one line of JSON; a value JSON cannot carry is replaced (never raised)."""
    try:
        return _record_encoder.encode_lines(records).split(b"\n")[:-1]
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError):
        return [orjson.dumps(sanitized(record)) for record in records]


def newlines(body: bytes) -> int:
    """How many newlines `body` holds (compiled where built: memchr's steps, ~15x cheaper)."""
    if SPEEDUPS is not None:
        count: int = SPEEDUPS.newlines(body)
        return count
    return body.count(b"\n")


def _pieces(body: bytes, lines: int) -> Iterator[tuple[bytes, int]]:
    """`body` (lines joined by newlines) in pieces of at most `lines` lines, each with the offset
    in `body` where it ends; the whole body, without a copy, when it is short enough."""
    if newlines(body) < lines:
        yield body, len(body)
        return
    start = 0
    while start <= len(body):
        end = start
        for _ in range(lines):
            end = body.find(b"\n", end) + 1
            if end == 0:
                end = len(body) + 1
                break
        yield body[start : end - 1], end - 1
        start = end
