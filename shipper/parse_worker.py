"""The parse worker process (`python -m shipper.parse_worker`): the other end of shipper/workers.py.

It imports only what parsing and a sink's `Preparer` run: no config models (pydantic), no
metrics library, no asyncio or TLS. That keeps a worker at ~20 MiB instead of ~40 MiB. Settings
arrive as plain attribute trees (`types.SimpleNamespace`) with the config's field names, counters
are tallies (shipper/tally.py) whose totals ride on the replies, and a preparer is built from its
`module:Class` path (see `Sink.preparer`).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import pickle
import signal
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from shipper import tally
from shipper.event import Event, Prepared, PreparerSpec, fill_in
from shipper.lines import pack_stamps
from shipper.parsing import Processor, build_processor
from shipper.pipeline.routing import Routing
from shipper.pipeline.transforms import build_transforms
from shipper.runtime import tune_for_events

if TYPE_CHECKING:
    from shipper.config import RedactConfig, SourceConfig

# Every frame, both ways: the lengths of a marshal'd message and of a raw body that follows it (a
# chunk of lines, or a reply's NDJSON). Bulk bytes stay out of marshal: it would copy them into
# its output on one side and out of its input on the other (~13% of a worker's time).
FRAME = struct.Struct("<II")
MARSHAL_VERSION = 4
# Per route (an index into the feed's routes) what its preparer made: NDJSON and timestamps.
Routed = tuple[int, bytes, list[Any] | None]
# The same in a reply's message: the NDJSON's length in the body (routes in order) instead, and
# the timestamps packed where they allow (shipper/lines.py `pack_stamps`).
RoutedSizes = tuple[int, int, list[Any] | tuple[int, Any, bytes, bool] | None]
# A feed's setup, pickled: source name, source settings, host, redact settings, extra fields, and
# per route its `when` settings (None: everything), its sink's name and that sink's preparer.
FeedSetup = tuple[str, Any, str, Any, dict[str, Any] | None, list[tuple[Any, str, PreparerSpec]]]


class WorkerFeed:
    """A feed as a worker holds it: its processor, extra fields, the source's transforms, and its
    routing (per route the `when` predicate and the preparer that encodes the logs)."""

    def __init__(self, setup: bytes) -> None:
        source, config, host, redact, fields, routes = cast(FeedSetup, pickle.loads(setup))
        # Plain attribute trees with the models' field names: what the parsing code reads.
        settings, redaction = cast("SourceConfig", config), cast("RedactConfig", redact)
        self.processor: Processor = build_processor(source, settings, host=host, redact=redaction)
        self.extra = fields
        self.transforms = build_transforms(source, settings.transforms, redaction)
        self.routing = Routing.build(routes)

    def parse(self, body: bytes, stream: str | None, now: float, open_end: bool) -> tuple[int, int, list[Routed]]:
        """A chunk's lines (`body`: joined by newlines) parsed and routed (`parsed`), through the
        direct lane when it serves them (it reads them joined: no bytes object a line)."""
        direct = None
        if not open_end and self.transforms is None:
            direct = self.routing.direct(self.processor, body, stream, now, self.extra)
        if direct is None:
            return self.parsed(self.processor.parse(body.split(b"\n"), stream, now, open_end), now)
        count, shares = direct
        return self.processor.held_bytes, count, [(index, *cast(Prepared, share)) for index, share in shares]

    def parsed(self, events: list[Event], now: float) -> tuple[int, int, list[Routed]]:
        """What the agent gets of a parsed chunk (as `LineFeed._hand_on` does it there): bytes the
        processor holds, events parsed, and per route the prepared logs of its share."""
        fill_in(events, self.extra)
        count = len(events)
        if self.transforms is not None:
            events = self.transforms(events)
        routed = [(index, *cast(Prepared, share)) for index, share in self.routing.split(events, now)]
        return self.processor.held_bytes, count, routed


class _Server:
    """The worker's loop: one request at a time, in order."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.feeds: dict[int, WorkerFeed | Exception] = {}
        self.reported: tally.Totals = {}

    def handle(self, message: tuple[Any, ...], body: bytes) -> None:
        kind, feed_id = message[0], message[1]
        if kind == "open":
            try:
                self.feeds[feed_id] = WorkerFeed(body)
            except Exception as exc:
                self.feeds[feed_id] = exc
            return
        if kind == "close":
            self.feeds.pop(feed_id, None)
            return
        if kind == "routes":
            feed = self.feeds.get(feed_id)
            if isinstance(feed, WorkerFeed):
                try:
                    feed.routing = Routing.build(pickle.loads(body))
                except Exception as exc:  # answered on the feed's next request, as an "open" error is
                    self.feeds[feed_id] = exc
            return
        ndjson: list[bytes] = []
        try:
            feed = self.feeds[feed_id]
            if isinstance(feed, Exception):
                raise feed
            processor = feed.processor
            if kind == "parse":
                _, _, stream, now, open_end = message
                held, count, routed = feed.parse(body, stream, now, open_end)
            else:
                _, _, now, force, rests = message
                events = [e for stream, rest in rests for e in processor.parse([rest], stream, now)]
                events += processor.flush(now, force)
                held, count, routed = feed.parsed(events, now)
            # Totals ride on the first reply after they change (a few dozen cells: microseconds),
            # so the agent's /metrics never waits for a later request that may not come.
            totals = tally.totals()
            counters = None if totals == self.reported else totals
            self.reported = totals
            sizes: list[RoutedSizes] = [(index, len(lines), pack_stamps(stamps)) for index, lines, stamps in routed]
            ndjson = [lines for _, lines, _ in routed]
            reply: tuple[Any, ...] = ("ok", held, count, sizes, counters)
            payload = marshal.dumps(reply, MARSHAL_VERSION)
        except Exception as exc:
            payload = marshal.dumps(("error", "".join(traceback.format_exception_only(exc)).strip()))
            ndjson = []
        size = sum(map(len, ndjson))
        self.out.write(FRAME.pack(len(payload), size) + payload)
        for lines in ndjson:  # a body larger than the write buffer goes to the pipe without a copy
            self.out.write(lines)
        self.out.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests until the input closes."""
    server = _Server(out)
    while (header := _read_exactly(inp, FRAME.size)) is not None:
        message_size, body_size = FRAME.unpack(header)
        message, body = _read_exactly(inp, message_size), _read_exactly(inp, body_size)
        if message is None or body is None:
            return
        server.handle(marshal.loads(message), body)


def main(argv: list[str]) -> None:
    from shipper.log import setup_logging

    # The agent's to handle, even when sent to every process of the service (`systemctl kill -s USR2`).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    level, fmt = argv if len(argv) == 2 else ("info", "auto")
    setup_logging(level, fmt)
    # Replies own the real stdout; anything else printing to fd 1 lands on stderr instead.
    out = os.fdopen(os.dup(1), "wb", buffering=1 << 20)
    os.dup2(2, 1)
    tune_for_events()
    with contextlib.suppress(BrokenPipeError):
        serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main(sys.argv[1:])
