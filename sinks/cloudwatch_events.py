"""CloudWatch Logs log events: each event as PutLogEvents takes it, and framed into calls.

Apart from the sink (sinks/cloudwatch.py) because a parse worker runs `LogEvents.prepare` where
events are parsed, and this module imports neither config models (pydantic), nor an HTTP client,
nor boto3: a worker that loads only what it runs stays small.

Each event becomes one `{"timestamp": <epoch ms>, "message": "<the event as compact JSON>"}`
object (with `message = "raw"`, the line it was read from), encoded on one line. Its stamp is
`(epoch ms, log stream name)`: the agent reads both when it frames calls (sorted by time, grouped
by stream), and the stream's name, templated from the event's fields (`"{host}/{source}"`), is
rendered here, where the fields are, so the agent never decodes a prepared event again.

The per-event rules (shipper/rules.py) apply here with CloudWatch's limits: an event's message
at most `max_event_bytes` counted as CloudWatch counts it (UTF-8 bytes + 26), cut down and flagged
beyond; timestamps outside what CloudWatch accepts (older than 14 days, or than the group's
retention when shipper sets it; more than 2 h ahead) re-stamped or dropped, counted.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import repeat
from typing import Any, Literal, cast

import msgspec
import orjson

from shipper.bulk import EpochMs, cached_by_fields, stamp_groups
from shipper.encoding import framed
from shipper.event import Event, Prepared, wire_ends
from shipper.lines import Chain, Lines, Packed, framed_lines, line_runs
from shipper.parsing.direct import LaneForm
from shipper.rules import Doc, OutOfRange, SizeRule, TimeWindow, WindowRule
from shipper.sink import Request
from shipper.speedups import SPEEDUPS
from shipper.template import Template
from shipper.when import field_value

MAX_CALL_EVENTS = 10_000  # per PutLogEvents call
MAX_CALL_BYTES = 1_048_576  # per call: the sum of each message's UTF-8 bytes plus EVENT_OVERHEAD
EVENT_OVERHEAD = 26  # bytes CloudWatch adds to each message when it counts a call's size
MAX_EVENT_BYTES = 1_000_000  # per event, overhead included: "1 MB" read as 10^6, safe either way
MAX_SPAN_MS = 24 * 3600 * 1000  # between the oldest and newest event of one call

# CloudWatch refuses events older than 14 days (or than the group's retention) or more than 2 h
# ahead. The margins absorb clock skew and the time a call can spend queued and retried after
# its events were prepared: what still ages out meanwhile comes back as rejectedLogEventsInfo,
# counted by reason.
MAX_AGE_DAYS = 14
AGE_MARGIN_MS = 3600 * 1000
MAX_AHEAD_MS = 2 * 3600 * 1000 - 5 * 60 * 1000

STREAM_NAME_CHARS = 512
MISSING = "unknown"  # the stream of an event its template cannot name (a field missing, or not a scalar)
_FORBIDDEN = re.compile(r"[:*]")  # never in a log stream name
_STREAM_CACHE_SIZE = 4096

Message = Literal["json", "raw"]


class _LogEvent(msgspec.Struct):
    """One entry of PutLogEvents' `logEvents`, in its order of keys."""

    timestamp: int
    message: str


_LINES = msgspec.json.Encoder()
_ENCODE_ERRORS = (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError)


def log_event_lines(times: list[int], messages: list[bytes]) -> bytes:
    """Log events, `{"timestamp":<ms>,"message":"<message>"}` a line, from each one's time and its
    message as UTF-8 JSON text (compiled where built: no str and no struct an event, ~3x cheaper)."""
    if SPEEDUPS is not None:
        lines: bytes = SPEEDUPS.log_event_lines(times, messages)
        return lines
    return log_event_lines_py(times, messages)


def log_event_lines_py(times: list[int], messages: list[bytes]) -> bytes:
    """`log_event_lines` in Python: what the compiled one does, where it was not built."""
    return _LINES.encode_lines([_LogEvent(ms, message.decode()) for ms, message in zip(times, messages, strict=True)])


def stream_name(text: str) -> str:
    """A valid log stream name from rendered text: no `:` or `*`, 1 to 512 characters."""
    return _FORBIDDEN.sub("_", text)[:STREAM_NAME_CHARS] or MISSING


def window(retention_days: int | None) -> TimeWindow:
    """The timestamps CloudWatch keeps: 14 days old at most, or the group's retention when shorter."""
    days = min(MAX_AGE_DAYS, retention_days or MAX_AGE_DAYS)
    text = f"CloudWatch's window ({days} days old .. 2 h ahead)"
    return TimeWindow(days * 86_400_000 - AGE_MARGIN_MS, MAX_AHEAD_MS, text)


class LogEvents:
    """One CloudWatch sink's per-event encoding, run where events are parsed; its counters."""

    def __init__(
        self,
        name: str,
        *,
        log_stream: str,
        message: Message,
        max_event_bytes: int,
        out_of_range: OutOfRange,
        retention_days: int | None,
    ) -> None:
        self.name = name
        self.raw = message == "raw"
        self.window = WindowRule(name, window(retention_days), out_of_range)
        # The message's JSON is the event's fields as they are (its size is the message's size).
        self.size = SizeRule(name, max_event_bytes - EVENT_OVERHEAD, dict)
        self._template = Template(log_stream)
        self._fixed_stream = None if self._template.constant is None else stream_name(log_stream)
        self._streams: dict[Any, str] = {}
        # A template of top-level fields only: its cache key is their values (`cached_by_fields`).
        paths = self._template.paths
        self._top_paths = None if any("." in path for path in paths) else paths
        self._clock = EpochMs()

    def lane_form(self, now: float) -> LaneForm | None:
        """How the direct lane (shipper/parsing/direct.py) writes this sink's log events at `now`:
        the fields as the message, the window and its re-stamp, the message's limit. None when it
        cannot: raw messages, a stream named from the fields, or out-of-window events dropped."""
        window = self.window.lane_window(now)
        if self.raw or self._fixed_stream is None or window is None:
            return None
        settings = (self._fixed_stream, *window, self.size.limit)
        return LaneForm("cloudwatch", settings, restamped=self.window.count)

    # ------------------------------------------------------------ per event

    def prepare(self, events: list[Event], now: float | None = None) -> Prepared:
        """The events' log events, one per line, and their stamps `(epoch ms, stream name)`."""
        now = time.time() if now is None else now
        now_ms = int(now * 1000)
        events, docs = self._in_window(events, now)
        times = self._clock.of([doc.get("timestamp") for doc in docs], now_ms)
        if self.raw:
            raws = [self._raw_message(event, doc) for event, doc in zip(events, docs, strict=True)]
            lines = _LINES.encode_lines([_LogEvent(ms, message) for ms, message in zip(times, raws, strict=True)])
        else:
            lines = log_event_lines(times, self._messages(events, docs))
        fixed = self._fixed_stream
        if fixed is not None:
            return lines, list(zip(times, repeat(fixed, len(times)), strict=True))
        if self._top_paths is not None:
            return lines, list(
                zip(times, cached_by_fields(self._streams, docs, self._top_paths, self._stream), strict=True)
            )
        return lines, [(ms, self._stream(doc)) for ms, doc in zip(times, docs, strict=True)]

    def _in_window(self, events: list[Event], now: float) -> tuple[list[Event], list[Doc]]:
        """The events kept and the fields their messages are made of: their own, or a copy
        re-stamped to now where a timestamp is outside CloudWatch's window (`WindowRule`)."""
        docs = [event.fields for event in events]
        outside = self.window.outside([doc.get("timestamp") for doc in docs], int(now * 1000))
        if not outside:
            return events, docs
        for index in outside:  # events are shared with other sinks: re-stamp copies
            docs[index] = dict(docs[index])
        return self.window.fit_objects(events, docs, now)

    def _messages(self, events: list[Event], docs: list[Doc]) -> list[bytes]:
        """Each event's fields as compact JSON, its message: one msgspec call for the list, event
        by event only when one is too big or not encodable."""
        limit = self.size.limit
        try:
            lines = _LINES.encode_lines(docs).split(b"\n")
            lines.pop()
        except _ENCODE_ERRORS:
            lines = [b""] * len(docs)
        return [
            line if 0 < len(line) <= limit else self._fitted(event, doc)
            for event, doc, line in zip(events, docs, lines, strict=True)
        ]

    def _raw_message(self, event: Event, doc: Doc) -> str:
        """The line as read: kept when it fits and is not blank (a message is never empty); else
        the event's fields, cut down to fit and flagged."""
        raw, limit = event.raw, self.size.limit
        if 0 < len(raw) <= limit and not raw.isspace():
            line = raw.decode("utf-8", "replace")
            if raw.isascii() or len(line.encode()) <= limit:  # each byte not UTF-8 became 3
                return line
        return self._fitted(event, doc).decode()

    def _fitted(self, event: Event, doc: Doc) -> bytes:
        """The fields as JSON within the size limit, values JSON cannot carry replaced: flagged, counted."""
        _, fitted = self.size.fit(Event(doc, event.raw), doc)
        return orjson.dumps(fitted)

    def _stream(self, fields: dict[str, Any]) -> str:
        """The log stream an event goes to: its template rendered, cached by the fields' values
        (the default "{host}/{source}" takes two lookups then, no formatting)."""
        values = tuple([field_value(fields, path) for path in self._template.paths])
        try:
            return self._streams[values]
        except KeyError:
            pass
        except TypeError:  # a dict or list value: not hashable, and no name either
            return MISSING
        if len(self._streams) >= _STREAM_CACHE_SIZE:
            self._streams.clear()
        name = self._streams[values] = stream_name(self._template.render(fields) or MISSING)
        return name


# ---------------------------------------------------------------- framing, in the agent


def calls(events: list[Event], group: str) -> list[Request]:
    """Prepared log events (`Encoded`, stamped `(ms, stream)`) framed into PutLogEvents calls:
    per stream, in time order (stable), each call at most 10,000 events, 1,048,576 bytes and a
    24 h span. A call's size is counted on each event's wire form, `{"timestamp":...,"message":
    "..."}`, which is always longer than its message's UTF-8 bytes plus 26: a safe bound that
    needs no decoding here."""
    out: list[Request] = []
    for stream, run, times in stamp_groups(events, 1, 0):
        head = _call_head(group, stream)
        out += [
            Request(framed(run[start:end], head, b",", b"]}"), run[start:end], {"stream": stream})
            for start, end in _cuts(wire_ends(run), times)
        ]
    return out


def line_calls(events: Sequence[Event], group: str) -> list[Request] | None:
    """`calls` for a batch of prepared logs as they arrived (shipper/lines.py), when they are one
    stream's in time order (a fixed log stream; a live service's logs): framed from their bytes,
    no object a log. None otherwise: `calls` groups and sorts them event by event."""
    runs = line_runs(events)
    if not runs:
        return None
    stream: Any = None
    first = last = None
    for run in runs:
        found = _one_stream(run)
        if found is None or (last is not None and (found[0] != stream or found[1] < last)):
            return None
        stream, last = found[0], found[2]
        first = found[1] if first is None else first
    assert first is not None and last is not None
    batch = Chain([run.compact() for run in runs])  # a request holds its own logs, not whole replies
    head = _call_head(group, stream)
    small = len(batch) <= MAX_CALL_EVENTS and sum(run.wire for run in runs) <= MAX_CALL_BYTES
    if small and last - first < MAX_SPAN_MS:  # the usual batch: one call
        return [Request(framed_lines(head, [run.view() for run in runs], b",", b"]}"), batch, {"stream": stream})]
    ends: list[int] = []
    times: list[int] = []
    for run in runs:
        base = ends[-1] if ends else 0
        ends += [end + base for end in run.wire_ends()]
        times += cast(Packed, run.stamps).times[run.lo : run.hi].tolist()
    out: list[Request] = []
    for start, end in _cuts(ends, times):
        share = batch[start:end]
        body = framed_lines(head, [cast(Lines, run).view() for run in share.pieces], b",", b"]}")
        out.append(Request(body, share, {"stream": stream}))
    return out


def _one_stream(run: Lines) -> tuple[str, int, int] | None:
    """The stream of a run's log events and its first and last time, when they are all one
    stream's in time order (stamps `(ms, stream)`, packed: `Lines.of`); else None."""
    stamps = run.stamps
    if not isinstance(stamps, Packed) or stamps.time_at != 0 or not stamps.ordered:
        return None
    return stamps.key, stamps.times[run.lo], stamps.times[run.hi - 1]


def _call_head(group: str, stream: str) -> bytes:
    return b'{"logGroupName":%s,"logStreamName":%s,"logEvents":[' % (orjson.dumps(group), orjson.dumps(stream))


def _cuts(ends: list[int], times: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each call over events in time order (`ends`: where each one's wire form and
    a separator end): by count, bytes, and span."""
    count = len(ends)
    if count <= MAX_CALL_EVENTS and ends[-1] <= MAX_CALL_BYTES and times[-1] - times[0] < MAX_SPAN_MS:
        return [(0, count)]
    out: list[tuple[int, int]] = []
    start, base = 0, 0
    while start < count:
        end = min(
            start + MAX_CALL_EVENTS,
            bisect_right(ends, base + MAX_CALL_BYTES, start),
            bisect_left(times, times[start] + MAX_SPAN_MS, start),
        )
        end = max(end, start + 1)  # an event over the byte limit goes alone: its message still fits
        out.append((start, end))
        base = ends[end - 1]
        start = end
    return out
