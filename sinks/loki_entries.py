"""Loki entries: each event as one entry of a stream, made where the events are parsed.

Apart from the sink (sinks/loki.py) because a parse worker runs `LokiEntries.prepare`, and this
module imports neither config models nor an HTTP client. An entry is the JSON array Loki's push
API takes, `["<ns>","<line>"]` or `["<ns>","<line>",{"key":"value"}]`, and its stamp is
`(stream, ns)`: the stream as the JSON object of its labels (sorted, so equal label sets are
equal strings) and the timestamp in epoch nanoseconds. A line is prepared escaped as a JSON
string's contents, here, where a core is free: the agent (sinks/loki.py) groups entries by
stream, orders them, and frames them into pushes by copying bytes (escaping there took ~1 s of
the agent's ~7 s of CPU on the 1M-line bench, where the agent is the busier process).

The per-entry rules (shipper/rules.py) apply with Loki's limits: an entry outside Loki's window
(older than `reject_old_samples_max_age`, further ahead than the creation grace period) is
re-stamped or dropped, and a line above `max_line_size` is cut down; both flagged and counted, so
that Loki refuses nothing a rule could have fixed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from itertools import repeat
from operator import mul
from typing import Any

import msgspec
import orjson

from shipper import tally
from shipper.bulk import EpochMs, cached_by_fields
from shipper.event import Event, Prepared
from shipper.log import RateLimitedLog
from shipper.parsing.direct import LOKI_LABEL_FIELDS, LaneForm
from shipper.rules import TRUNCATED, Doc, OutOfRange, SizeRule, TimeWindow, WindowRule
from shipper.speedups import SPEEDUPS
from shipper.template import Template

log = logging.getLogger("shipper.sinks.loki")

MAX_LINE_BYTES = 256 * 1024  # Loki's default max_line_size
MAX_LABEL_VALUE_BYTES = 2048  # Loki's default max_label_value_length
MAX_METADATA_ENTRIES = 128  # structured metadata per entry
MAX_METADATA_BYTES = 64 * 1024
# The label set of events whose templates all came out empty: Loki needs at least one label.
NO_LABELS = {"source": "shipper"}

_LINES = msgspec.json.Encoder()
_STREAM_CACHE_SIZE = 4096
_ENCODE_ERRORS = (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError)


def stream_key(labels: dict[str, str]) -> str:
    """The stream of a label set, as the JSON object a push names it with (sorted names)."""
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()


def escaped_lines(lines: bytes) -> bytes:
    """Each line of `lines` (each ending in a newline) escaped as a JSON string's contents, as
    orjson escapes a str; a line each (compiled where built)."""
    if SPEEDUPS is not None:
        escaped: bytes = SPEEDUPS.escape_lines(lines)
        return escaped
    return escaped_lines_py(lines)


def escaped_lines_py(lines: bytes) -> bytes:
    """`escaped_lines` in Python: each line as orjson writes it as a string, without its quotes
    (one call for the list and a split at `","` would also split a line holding `",`)."""
    texts = lines.decode().split("\n")
    texts.pop()
    return b"".join([orjson.dumps(text)[1:-1] + b"\n" for text in texts])


def _bounded(value: str) -> str:
    """A label value within Loki's length limit (UTF-8 bytes), cut at a character boundary."""
    return (
        value
        if len(value) * 4 <= MAX_LABEL_VALUE_BYTES
        else value.encode()[:MAX_LABEL_VALUE_BYTES].decode("utf-8", "ignore")
    )


class LokiEntries:
    """One Loki sink's per-event encoding: labels, line, structured metadata, per-entry rules."""

    def __init__(
        self,
        name: str,
        *,
        labels: dict[str, str],
        structured_metadata: dict[str, str],
        line: str,
        max_line_bytes: int,
        max_age_ms: int,
        max_ahead_ms: int,
        out_of_range: OutOfRange,
    ) -> None:
        self.name = name
        self.raw_line = line == "raw"
        self._labels = [(label, Template(text)) for label, text in sorted(labels.items())]
        self._metadata = [(key, Template(text)) for key, text in structured_metadata.items()]
        # A field that is a label's whole value leaves the line: the label carries it.
        self._label_fields = [t.field for _, t in self._labels if t.field is not None and "." not in t.field]
        self._streams: dict[tuple[Any, ...], str] = {}
        # Every label a constant or a whole top-level field: the fields to read for the cache key.
        whole = all(t.constant is not None or (t.field is not None and "." not in t.field) for _, t in self._labels)
        self._top_fields = [t.field for _, t in self._labels if t.field is not None] if whole else None
        self._clock = EpochMs()
        self.window = WindowRule(
            name,
            TimeWindow(max_age_ms, max_ahead_ms, "Loki's window (reject_old_samples_max_age .. creation grace)"),
            out_of_range,
        )
        self.size = SizeRule(name, max_line_bytes, self.to_doc)
        self.max_line_bytes = max_line_bytes
        self._truncated = tally.events_truncated.labels(name)
        self._notices = RateLimitedLog(log, interval=60.0)

    def lane_form(self, now: float) -> LaneForm | None:
        """How the direct lane (shipper/parsing/direct.py) writes this sink's lines at `now`: the
        window, the re-stamp, the label fields that leave the line. None when it cannot:
        raw lines, structured metadata, out-of-window entries dropped, or a label from a field
        that is neither the level nor constant over a stream's records."""
        window = self.window.lane_window(now)
        if self.raw_line or self._metadata or window is None or self._top_fields is None:
            return None
        if not LOKI_LABEL_FIELDS.issuperset(self._top_fields):
            return None
        settings = (*window, self.max_line_bytes)
        labels = frozenset(self._label_fields)
        return LaneForm("loki", settings, labels=labels, stream_of=self.stream, restamped=self.window.count)

    # ------------------------------------------------------------ per event

    def stream(self, fields: dict[str, Any]) -> str:
        """The stream (labels as a JSON object) of an event. Label sets are cached by the values
        they are made of: for labels that are whole top-level fields (the common case), the
        fields' values themselves, so an event costs one lookup per label and one cache hit."""
        if self._top_fields is not None:
            values: tuple[Any, ...] = tuple([fields.get(name) for name in self._top_fields])
            try:
                key = self._streams.get(values)
            except TypeError:  # an object or list value: not hashable, and no label either
                key = None
            if key is not None:
                return key
        else:
            values = tuple([template.render(fields) for _, template in self._labels])
            key = self._streams.get(values)
            if key is not None:
                return key
        rendered = [(label, template.render(fields)) for label, template in self._labels]
        labels = {label: _bounded(value) for label, value in rendered if value}
        key = stream_key(labels or NO_LABELS)
        if len(self._streams) >= _STREAM_CACHE_SIZE:
            self._streams.clear()
        with contextlib.suppress(TypeError):  # unhashable values: not cached
            self._streams[values] = key
        return key

    def to_doc(self, fields: dict[str, Any]) -> Doc:
        """The line's object: the event's fields without those that became labels."""
        return self.to_docs([fields])[0]

    def to_docs(self, fields: list[dict[str, Any]]) -> list[Doc]:
        """`to_doc` of each, in C-level passes: one copy of the list, one per label field."""
        docs = list(map(dict.copy, fields))
        for name in self._label_fields:
            deque(map(dict.pop, docs, repeat(name), repeat(None)), maxlen=0)
        return docs

    def metadata(self, fields: dict[str, Any]) -> bytes:
        """Structured metadata of an event as the entry's third element (`,{"k":"v"}`; flat strings,
        missing fields left out, within Loki's limits on entries and bytes), or b"" for none."""
        out: dict[str, str] = {}
        size = 0
        for key, template in self._metadata:
            value = template.render(fields)
            if value is None or len(out) >= MAX_METADATA_ENTRIES:
                continue
            size += len(key) + len(value)
            if size > MAX_METADATA_BYTES:
                break
            out[key] = value
        return b"," + _LINES.encode(out) if out else b""

    # ------------------------------------------------------------ per chunk

    def prepare(self, events: list[Event], now: float | None = None) -> Prepared:
        """The events' lines, escaped as JSON strings' contents, one per line, with `(stream, ns,
        metadata)` stamps: the agent frames them into entries (sinks/loki_push.py). Labels are taken from the event as
        parsed; the window rule re-stamps or drops entries out of Loki's range (the line keeps the
        original time); over-long lines are cut down, flagged and counted."""
        fields = [event.fields for event in events]
        now = time.time() if now is None else now
        events, docs = self.window.fit_objects(events, self.to_docs(fields), now)
        if not events:
            return b"", []
        now_ms = int(now * 1000)
        body = self._raw_lines(events) if self.raw_line else self._json_lines(events, docs)
        times = list(map(mul, self._clock.of([doc.get("timestamp") for doc in docs], now_ms), repeat(1_000_000)))
        if len(fields) != len(events):  # some dropped by the window rule
            fields = [event.fields for event in events]
        if self._top_fields is not None:
            streams = cached_by_fields(self._streams, fields, self._top_fields, self.stream)
        else:
            streams = list(map(self.stream, fields))
        if self._metadata:
            return body, list(zip(streams, times, map(self.metadata, fields), strict=True))
        return body, list(zip(streams, times, repeat(b"", len(times)), strict=True))

    def _json_lines(self, events: list[Event], docs: list[Doc]) -> bytes:
        """Each line's object as compact JSON, escaped, one per line: one msgspec call for the chunk;
        line by line, made encodable and cut down, only when some line cannot be encoded or is too
        long."""
        limit = self.max_line_bytes
        try:
            body: bytes | None = _LINES.encode_lines(docs)
        except _ENCODE_ERRORS:
            body = None
        if body is None or (len(body) > limit and max(map(len, body.split(b"\n"))) > limit):
            body = b"".join([self._one_line(event, doc) + b"\n" for event, doc in zip(events, docs, strict=True)])
        return escaped_lines(body)

    def _one_line(self, event: Event, doc: Doc) -> bytes:
        """One line within the limit (UTF-8 bytes), encodable; a too-long one cut, flagged, counted."""
        try:
            line = orjson.dumps(doc)
        except orjson.JSONEncodeError:
            line = b""
        if not line or len(line) > self.max_line_bytes:
            _, doc = self.size.fit(event, doc)
            line = orjson.dumps(doc)
        return line

    def _raw_lines(self, events: list[Event]) -> bytes:
        """The original lines, unchanged, already escaped as JSON strings' contents (a raw line may
        hold newlines and control characters), one per line; one above the limit cut at a character
        boundary and marked at its end, counted."""
        lines = [event.raw.decode("utf-8", "replace") for event in events]
        limit = self.max_line_bytes
        for index, line in enumerate(lines):
            if len(line) * 4 > limit and len(encoded := line.encode()) > limit:
                marker = f" [{TRUNCATED}]"
                lines[index] = encoded[: limit - len(marker)].decode("utf-8", "ignore") + marker
                self._truncated.inc()
                self._notices.warning(
                    "truncated", f"line over {limit} bytes cut (marked {TRUNCATED})", sink=self.name, bytes=len(encoded)
                )
        return b"".join([orjson.dumps(line)[1:-1] + b"\n" for line in lines])
