"""The unit that flows through the pipeline.

An event keeps the raw bytes it was parsed from (so sinks that ship the original line never
re-serialize) next to its normalized fields (what routing, redaction and encoders read).
"""

from __future__ import annotations

from itertools import accumulate, repeat
from operator import add, attrgetter
from typing import Any, Protocol

from shipper.speedups import SPEEDUPS

# Memory a parsed event costs beyond twice its raw bytes (the bytes and their parsed copy): the
# dicts, keys and small values. Measured with tracemalloc on every file of shared/corpus:
# pino and pino-pretty events 1,150-1,230 bytes, so Fastify's access lines (the bulk of a real
# API's logs) are not under-counted; Nest events 450-600 bytes, over-counted. Channel and batch
# bounds use this estimate so that "32MiB" of buffer means about 32 MiB of memory.
EVENT_OVERHEAD = 1200

LEVELS: tuple[str, ...] = ("trace", "debug", "info", "warn", "error", "fatal")
LEVEL_RANK: dict[str, int] = {name: rank for rank, name in enumerate(LEVELS)}


class Event:
    """One log event: normalized `fields` plus the `raw` bytes it came from."""

    __slots__ = ("fields", "raw")

    def __init__(self, fields: dict[str, Any], raw: bytes) -> None:
        self.fields = fields
        self.raw = raw

    @property
    def size(self) -> int:
        """Estimated memory of this event: its raw bytes, their parsed copy, and object overhead."""
        return 2 * len(self.raw) + EVENT_OVERHEAD

    def __repr__(self) -> str:
        return f"Event({self.fields!r})"


# Memory of an `Encoded` event beyond its bytes: the object and its bytes' header.
ENCODED_OVERHEAD = 128


class Encoded(Event):
    """An event already in one sink's wire form, made by a sink's `Preparer` where it was parsed (a
    parse worker): `raw` holds the sink's bytes for it and `stamp` its timestamp as sent (for
    the sink's age checks). `fields` keeps only what the agent still reads: `source`."""

    __slots__ = ("stamp",)

    def __init__(self, fields: dict[str, Any], raw: bytes, stamp: Any) -> None:
        self.fields = fields
        self.raw = raw
        self.stamp = stamp

    @property
    def size(self) -> int:
        return len(self.raw) + ENCODED_OVERHEAD


# What a `Preparer` makes of a chunk: its encoded logs as NDJSON (no encoded log holds a raw
# newline), and each log's timestamp as sent (None: the sink has no use for them).
Prepared = tuple[bytes, list[Any] | None]
# Prepared logs as the agent holds them: made here (bytes), or cut from a worker's reply (its
# bytearray, or a view of one route's share of it).
PreparedLines = tuple[bytes | bytearray | memoryview, list[Any] | None]
# A sink's preparer as a parse worker builds it: the class as `module:name` (a module that imports
# neither config models nor an HTTP client), and its keyword settings (plain values).
PreparerSpec = tuple[str, dict[str, Any]]


class Preparer(Protocol):
    """A sink's per-event encoding, runnable apart from the sink (see `Sink.preparer`)."""

    def prepare(self, events: list[Event], now: float | None = None) -> Prepared:
        """The events encoded as the sink sends them, every per-log rule applied and counted, the
        time windows judged at `now` (default: the clock's): one `now` for a chunk's events keeps
        re-stamped times in order whichever way each was parsed (shipper/parsing/direct.py)."""
        ...


# An event's `raw`, as a C-level callable: per-event passes over a batch (framing, sizes) stay out
# of the interpreter loop, ~3x cheaper than a list comprehension.
raw_of = attrgetter("raw")


def encoded_events(prepared: PreparedLines, fields: dict[str, Any]) -> list[Event]:
    """One `Encoded` event per line of `prepared`, each sharing `fields` (compiled where built:
    shipper/_speedups.c sets the three slots directly, ~4x cheaper)."""
    if SPEEDUPS is not None:
        events: list[Event] = SPEEDUPS.encoded_events(Encoded, fields, *prepared)
        return events
    return encoded_events_py(prepared, fields)


def encoded_events_py(prepared: PreparedLines, fields: dict[str, Any]) -> list[Event]:
    """`encoded_events` in Python: what the compiled one does, where it was not built."""
    lines, stamps = prepared
    raws = bytes(lines).split(b"\n")  # from a worker's reply too: each line becomes bytes
    raws.pop()
    if stamps is not None and len(stamps) != len(raws):
        raise ValueError(f"{len(raws)} prepared logs with {len(stamps)} timestamps")
    return list(map(Encoded, repeat(fields), raws, repeat(None) if stamps is None else stamps))


def wire_ends(events: list[Event]) -> list[int]:
    """Where each event ends in its events' NDJSON (each raw plus a newline): running totals
    (compiled where built: ~5x cheaper, on every batch cut)."""
    if SPEEDUPS is not None:
        ends: list[int] = SPEEDUPS.wire_ends(Event, events, True)
        return ends
    return wire_ends_py(events)


def wire_size(events: list[Event]) -> int:
    """What `events` weigh as NDJSON: each raw plus a newline (`wire_ends`' last value)."""
    if SPEEDUPS is not None:
        size: int = SPEEDUPS.wire_ends(Event, events, False)
        return size
    return wire_size_py(events)


def wire_ends_py(events: list[Event]) -> list[int]:
    """`wire_ends` in Python: what the compiled one does, where it was not built."""
    return list(accumulate(map(add, map(len, map(raw_of, events)), repeat(1))))


def wire_size_py(events: list[Event]) -> int:
    """`wire_size` in Python: what the compiled one does, where it was not built."""
    return sum(map(len, map(raw_of, events))) + len(events)


def fill_in(events: list[Event], fields: dict[str, Any] | None) -> None:
    """Add `fields` (a file source's path, ...) to every event, never over a field of the same name
    the application logged itself. One field at a time: an `in` test is 3x cheaper than setdefault."""
    for key, value in (fields or {}).items():
        for event in events:
            own = event.fields
            if key not in own:
                own[key] = value


def memory_size(events: list[Event]) -> int:
    """`Event.size` summed over a list, without a per-event method call."""
    return 2 * sum([len(event.raw) for event in events]) + EVENT_OVERHEAD * len(events)
