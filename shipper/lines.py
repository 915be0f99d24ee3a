"""Prepared logs held as the bytes they arrived in, made objects only when something asks.

A sink's preparer (in a parse worker, or here) hands the agent one NDJSON body per chunk: each
line one log in the sink's wire form, with its stamp. Making an `Encoded` event of every line (an
object, a bytes copy of the line, its stamp tuple) and framing requests from those objects was
~a quarter of the agent's CPU on the 1M-line CloudWatch bench. `Lines` keeps the body and where
each line ends instead: a batch of them is cut by those offsets, and a sink that frames runs of
lines as they are (`Sink.encode_runs`) copies each body once into its request. Anything else
(a sink that reads events, a retry of part of a request, the disk buffer) gets `Encoded` events,
made in one compiled pass (shipper/event.py `encoded_events`), exactly those it would have had.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import chain, pairwise
from typing import Any, overload

from shipper.event import Encoded, Event, encoded_events
from shipper.speedups import SPEEDUPS

_NEWLINE = re.compile(b"\n")


class Packed:
    """Stamps packed (`pack_stamps`, in a worker's reply or on arrival): each `(time, key)` (time_at
    0) or `(key, time)` (time_at 1) with one key, the times as int64s, and whether they never decrease."""

    __slots__ = ("key", "ordered", "time_at", "times")

    def __init__(self, time_at: int, key: Any, times: bytes, ordered: bool) -> None:
        self.time_at, self.key, self.ordered = time_at, key, ordered
        self.times = memoryview(times).cast("q")

    def __len__(self) -> int:
        return len(self.times)

    def unpacked(self, lo: int, hi: int) -> list[Any]:
        """Stamps lo..hi as tuples again."""
        return unpack_stamps(self.time_at, self.key, self.times, lo, hi)


Stamps = list[Any] | Packed | None
# Prepared logs as they reach the agent: NDJSON and their stamps, from a worker's reply packed where
# they allow (`pack_stamps`).
ArrivedLines = tuple[bytes | bytearray | memoryview, list[Any] | tuple[int, Any, bytes, bool] | None]


class Lines(Sequence[Event]):
    """Events `lo`..`hi` of one prepared NDJSON `body` (bytes, or a worker reply's bytearray or a
    view of it): line i ends at `ends[i] - shift` in `body`, its newline included (`line_ends`);
    `ends` and `stamps` are indexed over the whole reply, even when `body` holds only these lines."""

    __slots__ = ("body", "ends", "fields", "hi", "lo", "shift", "stamps")

    def __init__(
        self, body: bytes | bytearray | memoryview, ends: list[int], stamps: Stamps, fields: dict[str, Any],
        lo: int = 0, hi: int | None = None, shift: int = 0,
    ) -> None:  # fmt: skip
        self.body, self.ends, self.stamps, self.fields = body, ends, stamps, fields
        self.lo, self.hi, self.shift = lo, len(ends) if hi is None else hi, shift

    @classmethod
    def of(cls, prepared: ArrivedLines, fields: dict[str, Any]) -> Lines:
        """A preparer's output (NDJSON; one stamp a line, packed ones, or None) as events sharing `fields`."""
        body, arrived = prepared
        ends = line_ends(body)
        if isinstance(arrived, list):  # prepared here, not in a worker: packed the same way
            arrived = pack_stamps(arrived)
        stamps = Packed(*arrived) if isinstance(arrived, tuple) else arrived
        if stamps is not None and len(stamps) != len(ends):
            raise ValueError(f"{len(ends)} prepared logs with {len(stamps)} timestamps")
        return cls(body, ends, stamps, fields)

    @property
    def origin(self) -> int:
        """Where the first line begins, in `ends`' terms."""
        return self.ends[self.lo - 1] if self.lo else 0

    @property
    def wire(self) -> int:
        """What the lines weigh as NDJSON (each line and its newline)."""
        return self.ends[self.hi - 1] - self.origin if self.hi > self.lo else 0

    def view(self) -> memoryview:
        """The lines' NDJSON, newlines included, without a copy."""
        start = self.origin - self.shift
        return memoryview(self.body)[start : start + self.wire]

    def wire_ends(self) -> list[int]:
        """Where each line ends in `view()`, its newline included (`shipper.event.wire_ends`)."""
        origin = self.origin
        return [end - origin for end in self.ends[self.lo : self.hi]]

    def stamps_of(self, lo: int, hi: int) -> list[Any] | None:
        """The stamps of lines lo..hi of the reply (indexes as in `ends`)."""
        if isinstance(self.stamps, Packed):
            return self.stamps.unpacked(lo, hi)
        return None if self.stamps is None else self.stamps[lo:hi]

    def compact(self) -> Lines:
        """These lines in a body of their own (themselves when they are their whole body already): a
        request that holds part of a worker's reply then holds no more."""
        if not isinstance(self.body, memoryview) and self.origin - self.shift == 0 and self.wire == len(self.body):
            return self
        return Lines(bytes(self.view()), self.ends, self.stamps, self.fields, self.lo, self.hi, self.origin)

    def events(self) -> list[Event]:
        """The lines as `Encoded` events, in one compiled pass."""
        return encoded_events((self.view(), self.stamps_of(self.lo, self.hi)), self.fields)

    def __len__(self) -> int:
        return self.hi - self.lo

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> Lines: ...

    def __getitem__(self, index: int | slice) -> Event | Lines:
        if isinstance(index, slice):
            start, stop = _span(index, len(self))
            return Lines(self.body, self.ends, self.stamps, self.fields, self.lo + start, self.lo + stop, self.shift)
        at = self.lo + _position(index, len(self))
        begin = (self.ends[at - 1] if at else 0) - self.shift
        stamps = self.stamps_of(at, at + 1)
        raw = bytes(memoryview(self.body)[begin : self.ends[at] - 1 - self.shift])
        return Encoded(self.fields, raw, None if stamps is None else stamps[0])

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def __repr__(self) -> str:
        return f"Lines({len(self)} events, {self.wire} bytes)"


class Chain(Sequence[Event]):
    """A batch's events as the runs it was cut from (`Lines`, or lists of events), in order."""

    __slots__ = ("_firsts", "pieces")

    def __init__(self, pieces: list[Sequence[Event]]) -> None:
        self.pieces = [piece for piece in pieces if len(piece)]
        self._firsts = [0]  # the index of each piece's first event, and the count after the last
        for piece in self.pieces:
            self._firsts.append(self._firsts[-1] + len(piece))

    def __len__(self) -> int:
        return self._firsts[-1]

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> Chain: ...

    def __getitem__(self, index: int | slice) -> Event | Chain:
        if isinstance(index, slice):
            start, stop = _span(index, len(self))
            out: list[Sequence[Event]] = []
            for piece, (first, after) in zip(self.pieces, pairwise(self._firsts), strict=True):
                if first < stop and after > start:
                    out.append(piece[max(start - first, 0) : min(stop, after) - first])
            return Chain(out)
        position = _position(index, len(self))
        at = bisect_right(self._firsts, position) - 1
        return self.pieces[at][position - self._firsts[at]]

    def __iter__(self) -> Iterator[Event]:
        return chain.from_iterable(self.pieces)

    def __repr__(self) -> str:
        return f"Chain({len(self)} events in {len(self.pieces)} pieces)"


def _span(index: slice, length: int) -> tuple[int, int]:
    """A slice of a sequence of `length` as (start, stop), start <= stop; every item, or ValueError."""
    start, stop, step = index.indices(length)
    if step != 1:
        raise ValueError("slices of prepared logs take every log")
    return start, max(start, stop)


def _position(index: int, length: int) -> int:
    """An index into a sequence of `length`, from the start (a negative one counts from the end)."""
    position = index + length if index < 0 else index
    if not 0 <= position < length:
        raise IndexError("index out of range")
    return position


def events_of(events: Sequence[Event]) -> list[Event]:
    """`events` as a list: `Lines` made events in one pass each, a list as it is."""
    if isinstance(events, list):
        return events
    if isinstance(events, Lines):
        return events.events()
    pieces = events.pieces if isinstance(events, Chain) else [events]
    out: list[Event] = []
    for piece in pieces:
        out += piece.events() if isinstance(piece, Lines) else piece
    return out


def line_runs(events: Sequence[Event]) -> list[Lines] | None:
    """`events` as runs of stamped `Lines`, when they are only that (else None: events to read one by one)."""
    pieces = events.pieces if isinstance(events, Chain) else [events]
    if not all(isinstance(piece, Lines) and piece.stamps is not None for piece in pieces):
        return None
    return pieces  # type: ignore[return-value]


def line_ends(body: bytes | bytearray | memoryview) -> list[int]:
    """Where each line of NDJSON `body` ends, its newline included (compiled where built)."""
    if SPEEDUPS is not None:
        ends: list[int] = SPEEDUPS.line_ends(body)
        return ends
    return line_ends_py(body)


def line_ends_py(body: bytes | bytearray | memoryview) -> list[int]:
    """`line_ends` in Python: what the compiled one does, where it was not built."""
    if len(body) and body[-1:] != b"\n":
        raise ValueError("prepared logs must end in a newline")
    return [match.end() for match in _NEWLINE.finditer(body)]


def framed_lines(opening: bytes, pieces: list[memoryview], separator: bytes, closing: bytes) -> bytes:
    """A request body: `opening`, the lines of the NDJSON `pieces` between `separator`s (one byte),
    `closing`; one allocation, each piece copied whole (compiled where built)."""
    if SPEEDUPS is not None:
        body: bytes = SPEEDUPS.framed_lines(opening, pieces, separator, closing)
        return body
    return framed_lines_py(opening, pieces, separator, closing)


def framed_lines_py(opening: bytes, pieces: list[memoryview], separator: bytes, closing: bytes) -> bytes:
    """`framed_lines` in Python: what the compiled one does, where it was not built."""
    if len(separator) != 1:
        raise ValueError("the separator must be one byte")
    if any(len(piece) and bytes(piece[-1:]) != b"\n" for piece in pieces):
        raise ValueError("prepared logs must end in a newline")
    lines = b"".join(pieces)
    return opening + lines[:-1].replace(b"\n", separator) + closing


def pack_stamps(stamps: list[Any] | None) -> list[Any] | tuple[int, Any, bytes, bool] | None:
    """Stamps that are all `(time, key)` (or all `(key, time)`) with one key, packed for a worker's
    reply: (time_at, key, the times as int64 bytes, whether they never decrease); others as they
    are (compiled where built)."""
    if SPEEDUPS is not None:
        packed: list[Any] | tuple[int, Any, bytes, bool] | None = SPEEDUPS.pack_stamps(stamps)
        return packed
    return pack_stamps_py(stamps)


def pack_stamps_py(stamps: list[Any] | None) -> list[Any] | tuple[int, Any, bytes, bool] | None:
    """`pack_stamps` in Python: what the compiled one does, where it was not built."""
    if not stamps or not isinstance(stamps, list):
        return stamps
    first = stamps[0]
    if not isinstance(first, tuple) or len(first) != 2:
        return stamps
    time_at = 0 if type(first[0]) is int else 1
    key = first[1 - time_at]
    times: list[int] = []
    for stamp in stamps:
        if not isinstance(stamp, tuple) or len(stamp) != 2 or type(stamp[time_at]) is not int:
            return stamps
        own = stamp[1 - time_at]
        if own is not key and (type(own) is not type(key) or not isinstance(key, str) or own != key):
            return stamps
        if not -(2**63) <= stamp[time_at] < 2**63:
            return stamps
        times.append(stamp[time_at])
    ordered = all(earlier <= later for earlier, later in pairwise(times))
    return time_at, key, array("q", times).tobytes(), ordered


def unpack_stamps(time_at: int, key: Any, times: bytes | memoryview, lo: int, hi: int) -> list[Any]:
    """Packed stamps lo..hi as tuples again (compiled where built)."""
    if SPEEDUPS is not None:
        stamps: list[Any] = SPEEDUPS.unpack_stamps(time_at, key, times, lo, hi)
        return stamps
    return unpack_stamps_py(time_at, key, times, lo, hi)


def unpack_stamps_py(time_at: int, key: Any, times: bytes | memoryview, lo: int, hi: int) -> list[Any]:
    """`unpack_stamps` in Python: what the compiled one does, where it was not built."""
    values = memoryview(times).cast("B").cast("q")
    if lo < 0 or hi < lo or hi > len(values) or time_at not in (0, 1):
        raise IndexError("no stamps in that range")
    return [(value, key) if time_at == 0 else (key, value) for value in values[lo:hi].tolist()]
