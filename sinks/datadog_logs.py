"""Datadog log objects: each event encoded as the Datadog Logs intake takes it, and framed into requests.

Apart from the sink (sinks/datadog.py) because a parse worker runs `LogEncoder.prepare` where
events are parsed, and this module imports neither config models (pydantic) nor an HTTP client:
a worker that loads only what it runs is ~20 MiB smaller.

Each event becomes one Datadog log object built with plain dicts and encoded with orjson or
msgspec (datadog-api-client's models cost ~120 us/record; see WIRE.md). The per-log rules
(shipper/rules.py) apply here with Datadog's limits: no entry above `max_event_bytes` (Datadog
would truncate it silently with a 2xx) and no timestamp outside the window Datadog indexes (older
than 18 h or more than 2 h ahead: the log would be accepted and lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from functools import partial
from itertools import repeat
from operator import is_not
from typing import Any

import msgspec
import orjson

from shipper.encoding import json_array_of, runs
from shipper.event import Encoded, Event, Prepared
from shipper.parsing.clock import epoch_ms, format_ms
from shipper.parsing.direct import LaneForm, member
from shipper.parsing.records import LEVEL_BY_NUM
from shipper.rules import ORIGINAL_TIMESTAMP, Doc, OutOfRange, SizeRule, TimeWindow, WindowRule
from shipper.sink import Request
from shipper.template import PLACEHOLDER
from shipper.when import field_value

log = logging.getLogger("shipper.sinks.datadog")

MAX_ENTRIES = 1000  # per request (intake hard limit)
MAX_REQUEST_BYTES = 5_000_000  # per request, uncompressed (intake hard limit)
MAX_EVENT_BYTES = 1_000_000  # per log; "1 MB" read as 10^6 so either reading of the docs is safe

# Datadog does not index logs older than 18 h or more than 2 h ahead. The margins absorb clock skew
# and the time a request can spend queued and retried after it was encoded.
MAX_AGE_MS = 18 * 3600 * 1000 - 10 * 60 * 1000
MAX_AHEAD_MS = 2 * 3600 * 1000 - 60 * 1000
WINDOW = TimeWindow(MAX_AGE_MS, MAX_AHEAD_MS, "Datadog's window (18 h old .. 2 h ahead)")

# Attributes Datadog reads specially; an event field of the same name is kept as `<name>_original`
# rather than silently reinterpreted or overwritten.
SHADOWED = ("status", "hostname", "ddsource", "ddtags")

_TAG_CACHE_SIZE = 4096


_LINES = msgspec.json.Encoder()


def _encoded(doc: Doc) -> bytes:
    """One log object as JSON bytes that outlive the call. orjson's own result buffer, when kept
    (and prepared logs are kept until delivered), costs ~6 us per call here against 0.6 us when
    freed at once; encoding a one-element list and slicing out the object copies it into a
    right-sized object and frees the buffer: ~1.3 us."""
    return orjson.dumps((doc,))[1:-1]


def _framed(batch: list[Event]) -> Request:
    """One request of encoded logs (`Encoded` events) that fit its limits."""
    stamps = map(getattr, batch, repeat("stamp"), repeat(None))  # none for an event not `Encoded`
    return Request(json_array_of(batch), batch, {"oldest_ms": _oldest_ms(stamps)})


def _oldest_ms(stamps: Iterable[Any]) -> int | None:
    """The oldest of logs' timestamps (as sent) in epoch ms; None when none has one."""
    known = list(filter(partial(is_not, None), stamps))
    try:
        return epoch_ms(min(known)) if known else None
    except TypeError:  # canonical strings and epoch numbers mixed
        return min([ms for ms in map(epoch_ms, known) if ms is not None], default=None)


class LogEncoder:
    """One Datadog sink's encoding: log objects, per-log rules, framing; its counters."""

    def __init__(
        self,
        name: str,
        *,
        source: str,
        service: str | None,
        tags: list[str],
        max_event_bytes: int,
        out_of_range: OutOfRange,
    ) -> None:
        self.name = name
        self.max_event_bytes = max_event_bytes
        self._source = source
        self._service = service
        static = [t for t in tags if not PLACEHOLDER.search(t)]
        self._static_tags = ",".join(static)
        self._templates = [t for t in tags if PLACEHOLDER.search(t)]
        self._paths = sorted({p for t in self._templates for p in PLACEHOLDER.findall(t)})
        self._tag_cache: dict[Any, str] = {}
        # The common template set names one top-level field (`level:{level}`): to_doc then looks
        # its rendering up directly. (A dict or list value is unhashable: ddtags handles it.)
        single = self._paths[0] if len(self._paths) == 1 else ""
        self._tag_key = single if single and "." not in single else None
        self._ddsource = member("ddsource", source)
        self._lane_tags: dict[int, bytes] | None = None
        self._last_stamp: Any = None
        self._last_ms: int | None = None
        self.window = WindowRule(name, WINDOW, out_of_range)
        self.size = SizeRule(name, max_event_bytes, self.to_doc)
        # A request body within this holds no log above max_event_bytes, nor too many bytes.
        self._whole_body_limit = min(MAX_REQUEST_BYTES, max_event_bytes)

    def lane_form(self, now: float) -> LaneForm | None:
        """How the direct lane (shipper/parsing/direct.py) writes this sink's log objects at `now`:
        the window, the re-stamp, the ddtags per level. None when it cannot: tags filled from
        fields other than the level, or logs out of the window dropped."""
        window = self.window.lane_window(now)
        if window is None or not set(self._paths) <= {"level"}:
            return None
        if self._lane_tags is None:
            rendered = {number: self.ddtags({"level": word}) for number, word in LEVEL_BY_NUM.items()}
            self._lane_tags = {number: member("ddtags", tags) for number, tags in rendered.items() if tags}
        settings = (self._ddsource, self._lane_tags, *window, self.max_event_bytes)
        return LaneForm("datadog", settings, self._service, restamped=self.window.count)

    def ddtags(self, fields: dict[str, Any]) -> str:
        """`k:v,...` from the static tags plus templates filled from the event; a template whose
        field is missing (or not a scalar) is left out. Rendered strings are cached by field values."""
        if not self._paths:
            return self._static_tags
        if len(self._paths) == 1:
            values: Any = field_value(fields, self._paths[0])
        else:
            values = tuple([field_value(fields, path) for path in self._paths])
        try:
            return self._tag_cache[values]
        except KeyError:
            cacheable = True
        except TypeError:  # a dict or list value: not hashable, and not a tag either
            cacheable = False
        by_path = dict(zip(self._paths, values if len(self._paths) > 1 else (values,), strict=True))
        tags = [self._static_tags] if self._static_tags else []
        for template in self._templates:
            parts = [by_path[p] for p in PLACEHOLDER.findall(template)]
            if any(v is None or isinstance(v, (dict, list)) for v in parts):
                continue
            tags.append(PLACEHOLDER.sub(lambda m: str(by_path[m.group(1)]).replace(",", "_"), template))
        rendered = ",".join(tags)
        if cacheable:
            if len(self._tag_cache) >= _TAG_CACHE_SIZE:
                self._tag_cache.clear()
            self._tag_cache[values] = rendered
        return rendered

    def to_doc(self, fields: dict[str, Any]) -> Doc:
        """The Datadog log object for normalized `fields`. A canonical UTC timestamp
        (`2026-11-23T00:47:16.241Z`) is sent as is; any other form is converted to epoch ms.

        This runs once per event on the hot path: plain dict operations, no per-field loop, no
        helper call for the common event (one top-level tag field whose rendering is cached)."""
        doc = fields.copy()
        host = doc.pop("host", None)
        if host is not None and doc.get("hostname") == host:  # pino's own `hostname`: the same value
            del doc["hostname"]
        shadowed = None if doc.keys().isdisjoint(SHADOWED) else {k: doc.pop(k) for k in SHADOWED if k in doc}
        if host is not None:
            doc["hostname"] = host
        level = doc.pop("level", None)
        if level is not None:
            doc["status"] = level  # always a normalized word (shipper.parsing)
        doc["ddsource"] = self._source
        if self._service is not None:
            doc["service"] = self._service
        tags: str | None = self._static_tags
        if self._paths:
            try:
                tags = self._tag_cache.get(fields.get(self._tag_key)) if self._tag_key else None
            except TypeError:  # a dict or list value: not hashable
                tags = None
            if tags is None:
                tags = self.ddtags(fields)
        if tags:
            doc["ddtags"] = tags
        if shadowed:
            for name, value in shadowed.items():
                if doc.get(name) != value:
                    doc[f"{name}_original"] = value
        stamp = doc.get("timestamp")
        if stamp is not None and not (stamp.__class__ is str and len(stamp) == 24 and stamp[23] == "Z"):
            if stamp == self._last_stamp:  # neighbours often share a millisecond (or a read time)
                ms = self._last_ms
            else:
                ms = epoch_ms(stamp)
                self._last_stamp, self._last_ms = stamp, ms
            if ms is None:  # unusable: let Datadog stamp it on receipt, keep what we had
                del doc["timestamp"]
                doc.setdefault(ORIGINAL_TIMESTAMP, stamp)
            else:
                doc["timestamp"] = ms
        return doc

    def prepare(self, events: list[Event], now: float | None = None) -> Prepared:
        """The events' Datadog log objects, encoded, within every per-log rule (see `_docs`; above
        `max_event_bytes` truncated, flagged and counted). Runs where the events are parsed, in a
        parse worker when there is one, so the agent only frames the logs into requests. One
        msgspec `encode_lines` call for the chunk; log by log only when some log is too big or
        holds a value JSON cannot carry."""
        events, docs, stamps = self._docs(events, now)
        try:
            lines: bytes | None = _LINES.encode_lines(docs)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError):
            lines = None
        limit = self.max_event_bytes
        if lines is None or (len(lines) > limit and max(map(len, lines.split(b"\n"))) > limit):
            fitted = self._each_encoded(events, docs)
            lines = b"".join([raw + b"\n" for raw, _ in fitted])
            stamps = [stamp for _, stamp in fitted]
        return lines, stamps

    def encode(self, events: list[Event]) -> list[Request]:
        """Prepared logs (`Encoded`) framed into requests of at most 1,000 logs and 5,000,000
        bytes. Nothing is encoded here, so a split's halves are only framed again and nothing is
        ever re-stamped or counted twice."""
        return [_framed(run) for run in runs(events, MAX_ENTRIES, MAX_REQUEST_BYTES)] if events else []

    def _docs(self, events: list[Event], now: float | None) -> tuple[list[Event], list[Doc], list[Any]]:
        """The Datadog log objects of `events` (out-of-window ones re-stamped in them, or dropped,
        and counted: `WindowRule`) and their timestamps as sent."""
        events, docs = self.window.fit_objects(events, [self.to_doc(event.fields) for event in events], now)
        return events, docs, [doc.get("timestamp") for doc in docs]

    def _each_encoded(self, events: list[Event], docs: list[Doc]) -> list[tuple[bytes, Any]]:
        """Log by log: each encoded, fitted when too big or not encodable, with its timestamp."""
        limit = self.max_event_bytes
        out: list[tuple[bytes, Any]] = []
        for event, doc in zip(events, docs, strict=True):
            try:
                body = _encoded(doc)
            except orjson.JSONEncodeError:
                body = b""
            if not body or len(body) > limit:
                if ORIGINAL_TIMESTAMP in doc and "timestamp" in doc and ORIGINAL_TIMESTAMP not in event.fields:
                    restamped = {"timestamp": doc["timestamp"], ORIGINAL_TIMESTAMP: doc[ORIGINAL_TIMESTAMP]}
                    event = Event({**event.fields, **restamped}, event.raw)  # re-stamped in place only
                _, doc = self.size.fit(event, doc)
                body = _encoded(doc)
            out.append((body, doc.get("timestamp")))
        return out

    def aged(self, events: list[Event]) -> list[Event]:
        """Prepared logs that aged out of Datadog's window while queued (behind a revoked key, an
        outage): re-stamped, or dropped when configured, and counted."""
        now = time.time()
        oldest = int(now * 1000) - MAX_AGE_MS
        out: list[Event] = []
        aged = 0
        for event in events:
            ms = epoch_ms(event.stamp) if isinstance(event, Encoded) else None
            if ms is None or ms >= oldest:
                out.append(event)
                continue
            aged += 1
            if self.window.drop:
                continue
            doc = orjson.loads(event.raw)
            doc.setdefault(ORIGINAL_TIMESTAMP, doc.get("timestamp"))
            doc["timestamp"] = format_ms(int(now * 1000))
            out.append(Encoded(event.fields, orjson.dumps(doc), doc["timestamp"]))
        if aged:
            self.window.count(aged)
        return out
