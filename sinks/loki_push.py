"""Loki pushes: prepared entries grouped by stream, ordered, framed; and what Loki's refusals name.

Runs in the agent, on entries prepared where the events were parsed (sinks/loki_entries.py).

- Streams: a cardinality guard counts distinct label sets; past its limit a new stream's entries go
  to a fallback label set (counted, said once), so a label templated from an unexpected field
  cannot make Loki refuse the tenant's new streams (its stream_limit).
- Order: Loki refuses an entry more than `max_behind` (1 h) behind the newest entry already in its
  stream. Within a push, entries are sorted by time per stream (equal times keep their arrival
  order). Across pushes, the guard remembers each stream's newest entry sent, and what Loki said
  its newest is; an entry that would be refused is re-stamped just inside the limit (its line keeps
  the original time) or dropped, per `out_of_range`, and counted: a backlog replayed after newer
  data of its stream is not refused.
- Refusals: a 400 (or a partial 429) names the refused entries by stream and timestamp, at most
  ten per stream, then "total ignored: N out of M for stream: {...}". `refusals` maps those back
  to the entries of the request.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from itertools import accumulate
from operator import attrgetter, itemgetter
from typing import cast

import orjson

from shipper import tally
from shipper.bulk import in_order, stamp_groups
from shipper.event import Encoded, Event
from shipper.log import RateLimitedLog
from shipper.sink import Request
from shipper.speedups import SPEEDUPS
from sinks.loki_entries import stream_key

log = logging.getLogger("shipper.sinks.loki")

# Kept between the newest entry of a stream and the oldest entry re-stamped to fit behind it: the
# time a request can spend queued and retried, and another writer of the stream moving it on.
BEHIND_MARGIN_NS = 10 * 60 * 1_000_000_000
FALLBACK_LABEL = "shipper_overflow"
SAME_TIME_NS = 1_000_000  # entries are timed to the millisecond
_STAMP, _RAW = attrgetter("stamp"), attrgetter("raw")
_NS, _METADATA = itemgetter(1), itemgetter(2)
_STREAM_OVERHEAD = len('{"stream":,"values":[]},')


@dataclass(slots=True)
class Streams:
    """What the agent knows of a sink's streams: those seen (the cardinality guard), the newest
    entry of each as far as we know (sent by us or reported by Loki)."""

    max_streams: int
    fallback: str  # the stream key entries of streams over the limit go to
    seen: set[str] = field(default_factory=set)
    newest: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str) -> str:
        """`key`, or the fallback once `max_streams` distinct streams were seen."""
        if key in self.seen:
            return key
        if len(self.seen) < self.max_streams:
            self.seen.add(key)
            return key
        return self.fallback

    def learn(self, key: str, newest_ns: int) -> None:
        if newest_ns > self.newest.get(key, 0):
            self.newest[key] = newest_ns


class Framer:
    """One Loki sink's framing of prepared entries into pushes."""

    def __init__(
        self,
        sink: str,
        *,
        max_streams: int,
        max_behind_ns: int,
        drop_behind: bool,
        fallback_labels: dict[str, str],
        streams_per_push: int,
    ) -> None:
        self.sink = sink
        self.streams_per_push = streams_per_push
        self.streams = Streams(max_streams, stream_key({**fallback_labels, FALLBACK_LABEL: "true"}))
        self.max_behind_ns = max_behind_ns
        self.drop_behind = drop_behind
        self._overflowed = tally.events_rerouted.labels(sink, "stream_limit")
        self._restamped = tally.events_restamped.labels(sink)
        self._dropped = tally.events_dropped.labels(sink, "too_far_behind")
        self._notices = RateLimitedLog(log, interval=60.0)
        self._told_overflow = False

    def ordered(self, events: list[Event]) -> list[list[Event]]:
        """Entries (`Encoded`, stamps `(stream, ns)`) grouped by stream in order of first arrival,
        each group sorted by time, kept within what Loki accepts behind its stream's newest entry."""
        admitted: dict[str, list[Event]] = {}
        merged = False  # streams over the limit went into the fallback: it needs sorting again
        for key, group, _ in stamp_groups(events, 0, 1):
            target = self.streams.admit(key)
            if target is not key:
                self._overflow(len(group))
                for event in group:
                    _stamp(event, (target, *event.stamp[1:]))  # type: ignore[attr-defined]
            merged = merged or target in admitted
            admitted.setdefault(target, []).extend(group)
        out: list[list[Event]] = []
        for key, group in admitted.items():
            if merged:
                group, _ = in_order(group, list(map(_NS, map(_STAMP, group))))
            group = self._distinct(key, self._behind(key, group))
            if group:
                self.streams.learn(key, group[-1].stamp[1])  # type: ignore[attr-defined]
                out.append(group)
        return out

    def _behind(self, key: str, group: list[Event]) -> list[Event]:
        """The group with entries too far behind the stream's newest re-stamped or dropped."""
        newest = self.streams.newest.get(key)
        if newest is None:
            return group
        floor = newest - self.max_behind_ns + BEHIND_MARGIN_NS
        late = 0
        while late < len(group) and group[late].stamp[1] < floor:  # type: ignore[attr-defined]
            late += 1
        if not late:
            return group
        if self.drop_behind:
            self._dropped.inc(late)
            self._notices.warning(
                "behind", "entries too far behind their stream's newest dropped", sink=self.sink, events=late
            )
            return group[late:]
        self._restamped.inc(late)
        self._notices.warning(
            "behind",
            "entries too far behind their stream's newest re-stamped to fit; the line keeps the original time",
            sink=self.sink,
            events=late,
        )
        for event in group[:late]:
            _stamp(event, (key, floor, event.stamp[2]))  # type: ignore[attr-defined]
        return group

    def _distinct(self, key: str, group: list[Event]) -> list[Event]:
        """Entries of a stream sharing a timestamp (with each other or with the stream's newest sent)
        moved apart by a nanosecond each, in arrival order: Loki stores equal timestamps in no set
        order and drops an entry equal to one it has (same time and line), so a line logged twice in
        a millisecond would be kept once. Our times are whole milliseconds: the nanoseconds are free."""
        distinct = SPEEDUPS.distinct_times if SPEEDUPS is not None else distinct_times_py
        distinct(group, key, self.streams.newest.get(key, -1), SAME_TIME_NS)
        return group

    def _overflow(self, count: int) -> None:
        self._overflowed.inc(count)
        if not self._told_overflow:
            self._told_overflow = True
            log.warning(
                "more distinct label sets than max_streams: entries of new streams go to the fallback labels "
                f'({FALLBACK_LABEL}="true"); check the label templates',
                extra={"sink": self.sink, "max_streams": self.streams.max_streams},
            )

    def requests(self, groups: list[list[Event]], max_events: int, max_bytes: int) -> list[Request]:
        """Pushes of at most `max_events` entries, `max_bytes` of JSON (a single entry larger than
        that goes alone) and `streams_per_push` streams. A request's events are in body order,
        stream by stream.

        One stream per push by default: Loki's ingester answers a push with the error of its LAST
        stream only (pkg/ingester/instance.go), so the entries it refused in an earlier stream (too
        far behind, a stream's rate limit) would be lost without a word, even under a 204."""
        pieces: list[tuple[str, memoryview, list[Event], int]] = []  # a stream's run within the limits, its size
        for group in groups:
            key = group[0].stamp[0]  # type: ignore[attr-defined]
            entries, ends = self.entries(group)
            text = memoryview(entries)  # runs are views: the push's join is their only copy
            overhead = len(key) + _STREAM_OVERHEAD
            start = base = 0
            while start < len(group):  # one step for a stream that fits, the common case
                end = bisect_right(ends, base + max_bytes - overhead, start, min(len(group), start + max_events))
                end = max(end, start + 1)
                pieces.append((key, text[base : ends[end - 1] - 1], group[start:end], ends[end - 1] - base + overhead))
                base = ends[end - 1]
                start = end
        out: list[Request] = []
        pending: list[tuple[str, memoryview, list[Event]]] = []
        count = size = 0
        for key, run, events, weight in pieces:
            if pending and (
                len(pending) >= self.streams_per_push or count + len(events) > max_events or size + weight > max_bytes
            ):
                out.append(json_push(pending))
                pending, count, size = [], 0, 0
            pending.append((key, run, events))
            count += len(events)
            size += weight
        if pending:
            out.append(json_push(pending))
        return out

    def entries(self, events: list[Event]) -> tuple[bytes, list[int]]:
        """A stream's entries as JSON, each `["<ns>","<line>"<metadata>],` (a run of them is a slice
        without its last comma), and where each ends (compiled where built)."""
        if SPEEDUPS is not None:
            entries: tuple[bytes, list[int]] = SPEEDUPS.loki_entries(Encoded, events)
            return entries
        return entries_py(events)

    def line(self, event: Event) -> str:
        """The line of a prepared entry (prepared escaped), as Loki stores it."""
        return str(orjson.loads(b'"' + event.raw + b'"'))


def entries_py(events: list[Event]) -> tuple[bytes, list[int]]:
    """`Framer.entries` in Python: what the compiled one does, where it was not built. The times
    are written by one orjson call."""
    if not events:
        return b"", []
    stamps = list(map(_STAMP, events))
    lines = list(map(_RAW, events))
    times = orjson.dumps(list(map(_NS, stamps)))[1:-1].split(b",")
    pieces = [
        b'["' + ns + b'","' + line + b'"' + metadata + b"],"
        for ns, line, metadata in zip(times, lines, map(_METADATA, stamps), strict=True)
    ]
    return b"".join(pieces), list(accumulate(map(len, pieces)))


def distinct_times_py(group: list[Event], key: str, last: int, same: int) -> None:
    """`Framer._distinct` on a stream's entries in time order, `last` its newest time sent: the
    compiled one's twin (shipper/_speedups.c `distinct_times`)."""
    for event in group:
        ns = event.stamp[1]  # type: ignore[attr-defined]
        if ns <= last and last - ns < same:
            ns = last + 1
            _stamp(event, (key, ns, event.stamp[2]))  # type: ignore[attr-defined]
        if ns > last:
            last = ns


def _stamp(event: Event, stamp: tuple[str, int, bytes]) -> None:
    """Give a prepared entry its stream and time as sent. In place: prepared entries are this
    sink's own (each sink prepares its share), and a resend should carry what was sent."""
    cast(Encoded, event).stamp = stamp


def json_push(streams: list[tuple[str, memoryview, list[Event]]]) -> Request:
    """A JSON push of entries grouped by stream: (stream key, its entries' JSON as `Framer.entries`
    writes them, without the last comma, their events), in one join."""
    parts: list[bytes | memoryview] = [b'{"streams":[']
    for key, run, _ in streams:
        parts += (b'{"stream":', key.encode(), b',"values":[', run, b"]},")
    parts[-1] = b"]}]}"
    return Request(b"".join(parts), [event for _, _, events in streams for event in events])


# ---------------------------------------------------------------------------------- protobuf


def protobuf_push(events: list[Event], line: Callable[[Event], str]) -> bytes:
    """The request's entries as a `logproto.PushRequest` (pkg/push/push.proto): streams = 1
    {labels = 1 as `{a="b"}`, entries = 2 {timestamp = 1 {seconds = 1, nanos = 2}, line = 2,
    structuredMetadata = 3 {name = 1, value = 2}}}, in body order."""
    groups: dict[str, list[bytes]] = {}
    for event in events:
        key, ns, metadata = event.stamp  # type: ignore[attr-defined]
        seconds, nanos = divmod(ns, 1_000_000_000)
        body = _message(1, _varint_field(1, seconds) + _varint_field(2, nanos)) + _bytes_field(2, line(event).encode())
        if metadata:
            for name, value in orjson.loads(metadata[1:]).items():
                body += _message(3, _bytes_field(1, name.encode()) + _bytes_field(2, value.encode()))
        groups.setdefault(key, []).append(_message(2, body))
    return b"".join(
        _message(1, _bytes_field(1, prometheus_labels(orjson.loads(key)).encode()) + b"".join(entries))
        for key, entries in groups.items()
    )


def prometheus_labels(labels: dict[str, str]) -> str:
    """`{a="b", c="d"}`: labels as Loki writes and reads them (sorted, values quoted and escaped)."""
    return "{" + ", ".join(f'{name}="{_escaped(value)}"' for name, value in sorted(labels.items())) + "}"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


_message = _bytes_field


# ---------------------------------------------------------------------------------- refusals

# Loki's texts (pkg/validation/validate.go, pkg/ingester/stream.go): a refused entry names its stream
# in quotes or after "for stream:", and its timestamp in Go's time format.
_STREAM = re.compile(r"stream(?::\s*|\s+')(\{.*?\})'?(?=[,\s]|$)")
_GO_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,9}))? ([+-]\d{4}) \S+")
_TOTAL = re.compile(r"total ignored: (\d+) out of (\d+)(?: for stream: (\{.*\}))?")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))")
_LENGTH = re.compile(r"with length '(\d+)' bytes")
_GROUPED = re.compile(r"; (?=\d+ errors like: )")
_COUNTED = re.compile(r"(\d+) errors like: (.*)", re.DOTALL)
# (reason label, what Loki's text says), first match wins.
REASONS = (
    ("too_far_behind", "too far behind"),
    ("out_of_order", "out of order"),
    ("too_old", "timestamp too old"),
    ("too_new", "timestamp too new"),
    ("line_too_long", "max entry size"),
    ("stream_rate_limit", "per stream rate limit"),
    ("stream_limit", "stream limit"),
    ("rate_limited", "ingestion rate limit exceeded"),
    ("structured_metadata", "structured metadata"),
    ("label_names_limit", "label names; limit"),
    ("label_invalid", "label"),
)


def reason_of(text: str) -> str:
    lower = text.lower()
    return next((reason for reason, words in REASONS if words in lower), "invalid")


def parse_labels(text: str) -> dict[str, str]:
    """A label set as Loki prints it (`{a="b", c="d"}`), values unescaped."""
    return {
        name: value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        for name, value in _LABEL.findall(text)
    }


def go_time_ns(text: str) -> int | None:
    """Epoch ns of the first Go `time.String()` in `text` (`2026-12-07 04:42:27.123 +0000 UTC`)."""
    match = _GO_TIME.search(text)
    if match is None:
        return None
    stamp = datetime.strptime(f"{match.group(1)} {match.group(3)}", "%Y-%m-%d %H:%M:%S %z")
    return int(stamp.timestamp()) * 1_000_000_000 + int((match.group(2) or "0").ljust(9, "0"))


def rfc3339_seconds(text: str) -> int | None:
    """Epoch seconds of the first RFC 3339 time in `text` (`2026-12-07T04:42:27Z`), as Loki's
    distributor prints an entry's timestamp."""
    match = _RFC3339.search(text)
    if match is None:
        return None
    return int(datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp())


@dataclass(slots=True)
class Refusal:
    """What an answer says was refused: entries by index with a reason, and per stream the count
    Loki gave that no line named (beyond its ten listed), with that stream's reason."""

    named: dict[int, tuple[str, str]] = field(default_factory=dict)
    unnamed: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # stream -> (count, reason, line)
    streams: set[str] = field(default_factory=set)  # streams the answer refused as a whole (labels, limits)


class Matcher:
    """Entries of one request by stream and time, to find those an answer names."""

    def __init__(self, events: list[Event], sent_labels: Iterable[str], line: Callable[[Event], str]) -> None:
        self.line = line
        self.by_stream: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            self.by_stream.setdefault(event.stamp[0], []).append(index)  # type: ignore[attr-defined]
        self.events = events
        self._keys = {frozenset(orjson.loads(key).items()): key for key in self.by_stream}
        self._sent_labels = set(sent_labels)

    def stream(self, text: str) -> str | None:
        """Our stream key for a label set Loki printed; labels Loki added itself (service_name) are
        ignored."""
        labels = parse_labels(text)
        mine = {k: v for k, v in labels.items() if k in self._sent_labels or k == FALLBACK_LABEL}
        return self._keys.get(frozenset(mine.items())) or self._keys.get(frozenset(labels.items()))

    def refusals(self, body: str) -> Refusal:
        """Map each message of Loki's answer to the entries it names."""
        refusal = Refusal()
        named_by_stream: dict[str, int] = {}
        last_reason: dict[str, tuple[str, str]] = {}
        pending: list[tuple[int, str, str]] = []  # ingester lines name the stream only in the total line
        for count, text in messages(body):
            total = _TOTAL.search(text)
            if total is not None:
                key = self.stream(total.group(3)) if total.group(3) else None
                if key is not None:
                    for at_ns, reason, line in pending:
                        self._name(refusal, key, 1, reason, line, named_by_stream, partial(self._at, ns=at_ns))
                        last_reason[key] = (reason, line)
                    left = int(total.group(1)) - named_by_stream.get(key, 0)
                    if left > 0:
                        reason, line = last_reason.get(key, (reason_of(text), text))
                        refusal.unnamed[key] = (left, reason, line)
                pending = []
                continue
            reason = reason_of(text)
            stream_match = _STREAM.search(text)
            key = self.stream(stream_match.group(1)) if stream_match else None
            ns = go_time_ns(text)
            if key is None:
                if ns is not None:
                    pending.append((ns, reason, text))
                continue
            last_reason[key] = (reason, text)
            second = rfc3339_seconds(text) if ns is None else None
            if ns is not None:
                self._name(refusal, key, count, reason, text, named_by_stream, partial(self._at, ns=ns))
            elif second is not None:  # the distributor prints an entry's time to the second
                self._name(refusal, key, count, reason, text, named_by_stream, partial(self._in_second, second=second))
            elif reason == "line_too_long" and (length := _LENGTH.search(text)):
                size = int(length.group(1))
                self._name(refusal, key, count, reason, text, named_by_stream, partial(self._long, size=size))
            elif reason.startswith("label") or reason in ("stream_limit", "stream_rate_limit", "structured_metadata"):
                refusal.streams.add(key)
                for index in self.by_stream[key]:
                    refusal.named.setdefault(index, (reason, text))
        return refusal

    def _at(self, index: int, ns: int) -> bool:
        return self.events[index].stamp[1] == ns  # type: ignore[attr-defined,no-any-return]

    def _in_second(self, index: int, second: int) -> bool:
        return self.events[index].stamp[1] // 1_000_000_000 == second  # type: ignore[attr-defined,no-any-return]

    def _long(self, index: int, size: int) -> bool:
        return len(self.line(self.events[index]).encode()) == size

    def _name(
        self,
        refusal: Refusal,
        key: str,
        count: int,
        reason: str,
        text: str,
        counts: dict[str, int],
        matches: Callable[[int], bool],
    ) -> None:
        """Name up to `count` entries of `key` that `matches` and are not named yet."""
        for index in self.by_stream.get(key, ()):
            if count <= 0:
                return
            if index not in refusal.named and matches(index):
                refusal.named[index] = (reason, text)
                counts[key] = counts.get(key, 0) + 1
                count -= 1


def messages(body: str) -> Iterator[tuple[int, str]]:
    """Loki's messages in an answer, each with how many times it occurred: a line each, and the
    distributor's grouped errors (`2 errors like: <text>; 1 errors like: <text>`) apart."""
    for line in body.splitlines():
        for part in _GROUPED.split(line.strip()):
            grouped = _COUNTED.match(part)
            if grouped is not None:
                yield int(grouped.group(1)), grouped.group(2)
            elif part:
                yield 1, part
