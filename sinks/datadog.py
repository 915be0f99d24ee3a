"""Datadog Logs sink: HTTP intake v2 (`POST /api/v2/logs`), spoken directly for speed.

Each event becomes one Datadog log object built with plain dicts and encoded by one orjson call
(datadog-api-client's models cost ~120 us/record; see WIRE.md). `prepare` does that per event and
applies the per-log rules: no entry above `max_event_bytes` (Datadog would truncate it silently
with a 2xx) and no timestamp outside the window Datadog indexes (older than 18 h or more than 2 h
ahead: the log would be accepted and lost). It runs where events are parsed, in a parse worker
when there is one (shipper/workers.py). `encode` only frames prepared logs into requests of at most
1,000 entries and 5,000,000 uncompressed bytes.
Batching, retries, splitting and acknowledgements stay in `shipper.driver`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import orjson
from pydantic import Field, SecretStr, field_validator

from shipper import metrics
from shipper.config import BufferConfig, HttpSinkConfig
from shipper.event import Encoded, Event, Prepared, encoded_events
from shipper.httpsink import HttpSink
from shipper.log import RateLimitedLog
from shipper.parsing.clock import epoch_ms, format_ms
from shipper.router import field_value
from shipper.sink import DELIVERED, BatchLimits, CheckResult, Outcome, Request
from shipper.units import Size

log = logging.getLogger("shipper.sinks.datadog")

# Site name -> site domain. Logs go to `http-intake.logs.<domain>`, API calls to `api.<domain>`.
SITES: dict[str, str] = {
    "US1": "datadoghq.com",
    "US3": "us3.datadoghq.com",
    "US5": "us5.datadoghq.com",
    "EU1": "datadoghq.eu",
    "AP1": "ap1.datadoghq.com",
    "AP2": "ap2.datadoghq.com",
    "UK1": "uk1.datadoghq.com",
    "US1-FED": "ddog-gov.com",
    "US2-FED": "us2.ddog-gov.com",
}
Site = Literal["US1", "US3", "US5", "EU1", "AP1", "AP2", "UK1", "US1-FED", "US2-FED"]

LOGS_PATH = "/api/v2/logs"
VALIDATE_PATH = "/api/v1/validate"
MAX_ENTRIES = 1000  # per request (intake hard limit)
MAX_REQUEST_BYTES = 5_000_000  # per request, uncompressed (intake hard limit)
MAX_EVENT_BYTES = 1_000_000  # per log; "1 MB" read as 10^6 so either reading of the docs is safe

# Datadog does not index logs older than 18 h or more than 2 h ahead. The margins absorb clock skew
# and the time a request can spend queued and retried after it was encoded.
MAX_AGE_MS = 18 * 3600 * 1000 - 10 * 60 * 1000
MAX_AHEAD_MS = 2 * 3600 * 1000 - 60 * 1000
# A request whose oldest entry is this close to the age limit is re-encoded before being (re)sent,
# so a long outage (e.g. a revoked key fixed hours later) re-stamps or drops it instead of losing it.
STALE_MS = 18 * 3600 * 1000 - 2 * 60 * 1000

# Attributes Datadog reads specially; an event field of the same name is kept as `<name>_original`
# rather than silently reinterpreted or overwritten.
SHADOWED = ("status", "hostname", "ddsource", "ddtags")
# Never removed when cutting an oversized event down to size.
PROTECTED = frozenset({"timestamp", "level", "message", "service", "host", "source", "stream"})

TRUNCATED = "shipper.truncated"
DROPPED_FIELDS = "shipper.dropped_fields"
SANITIZED = "shipper.sanitized"
ORIGINAL_TIMESTAMP = "shipper.original_timestamp"

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_TAG_CACHE_SIZE = 4096

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------- config


class DatadogConfig(HttpSinkConfig):
    """`[sinks.<name>]` with `type = "datadog"`; see docs/datadog.md."""

    type: Literal["datadog"]
    api_key: SecretStr
    site: Site = "US1"
    endpoint: str | None = None
    service: str | None = None
    source: str = "nodejs"
    tags: list[str] = []
    max_event_bytes: Size = Field(default=MAX_EVENT_BYTES, ge=4096, le=MAX_EVENT_BYTES)
    # 16 MiB, not the 32 of other sinks: logs prepared in a parse worker cost ~0.6 KB each, not
    # ~1.6 KB, so this holds ~29,000 of them (more than 32 MiB of parsed events); with a slow
    # intake filling it, the agent and its worker peaked at 130 MiB RSS (107 PSS), not 151.
    buffer: BufferConfig = BufferConfig(max_bytes=16 * 1024 * 1024)
    out_of_range: Literal["restamp", "drop"] = "restamp"

    @field_validator("api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("the API key is empty (is DD_API_KEY set?)")
        if any(c.isspace() for c in key):
            raise ValueError("the API key contains whitespace")
        return SecretStr(key)

    @field_validator("site", mode="before")
    @classmethod
    def _site_name(cls, value: Any) -> Any:
        """Accept a site name in any case, or the site's domain as DD_SITE spells it (datadoghq.eu)."""
        if isinstance(value, str):
            name = value.strip().upper()
            if name in SITES:
                return name
            domain = value.strip().lower().removeprefix("https://").removeprefix("app.").rstrip("/")
            for site, site_domain in SITES.items():
                if domain == site_domain:
                    return site
            raise ValueError(f"unknown Datadog site {value!r} (one of: {', '.join(SITES)})")
        return value

    @field_validator("endpoint")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected a base URL such as https://proxy.example.com, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("the endpoint must not have a query or fragment")
        return value.strip().rstrip("/").removesuffix(LOGS_PATH)

    @field_validator("tags")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag or "," in _PLACEHOLDER.sub("", tag):
                raise ValueError(f"invalid tag {tag!r}: tags are non-empty and contain no comma")
            if "{" in _PLACEHOLDER.sub("", tag) or "}" in _PLACEHOLDER.sub("", tag):
                raise ValueError(f"invalid tag template {tag!r}: use {{field}} or {{dotted.path}}")
        return value


# ---------------------------------------------------------------------------------- helpers


def sanitized(value: Any, depth: int = 0) -> Any:
    """A copy orjson can always encode: lone surrogates replaced, huge ints and odd types as strings."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode()
        return value
    if depth > 100:
        return "[nested too deeply]"
    if isinstance(value, dict):
        return {sanitized(k if isinstance(k, str) else str(k)): sanitized(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitized(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    try:
        orjson.dumps(value)
    except (TypeError, ValueError):
        return sanitized(str(value))
    return value


def _json_size(value: Any) -> int:
    return len(orjson.dumps(value))


def _shrink(text: str, target: int) -> str:
    """`text` cut so its JSON encoding takes at most `target` bytes (quotes included)."""
    size = _json_size(text)
    while size > target and text:
        text = text[: max(0, int(len(text) * target / size) - 1)]
        size = _json_size(text)
    return text


def _largest_string(node: Any, path: tuple[str | int, ...] = ()) -> tuple[int, tuple[str | int, ...]]:
    """Length and path of the longest string anywhere in `node` (dicts and lists)."""
    best: tuple[int, tuple[str | int, ...]] = (-1, ())
    items: Any
    if isinstance(node, str):
        return len(node), path
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return best
    for key, child in items:
        found = _largest_string(child, (*path, key))
        if found[0] > best[0]:
            best = found
    return best


_LINES = msgspec.json.Encoder()


def _encoded(doc: Doc) -> bytes:
    """One log object as JSON bytes that outlive the call. orjson's own result buffer, when kept
    (and prepared logs are kept until delivered), costs ~6 us per call here against 0.6 us when
    freed at once; encoding a one-element list and slicing out the object copies it into a
    right-sized object and frees the buffer: ~1.3 us."""
    return orjson.dumps((doc,))[1:-1]


def _oldest_ms(stamps: list[Any]) -> int | None:
    """The oldest of logs' timestamps (as sent) in epoch ms; None when none has one."""
    stamps = [stamp for stamp in stamps if stamp is not None]
    try:
        return epoch_ms(min(stamps)) if stamps else None
    except TypeError:  # canonical strings and epoch numbers mixed
        return min([ms for ms in map(epoch_ms, stamps) if ms is not None], default=None)


def _replace_at(root: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set `root[path] = value`, copying every container on the way (the originals may be shared)."""
    node: Any = root
    for step in path[:-1]:
        child = node[step]
        child = dict(child) if isinstance(child, dict) else list(child)
        node[step] = child
        node = child
    node[path[-1]] = value


# ---------------------------------------------------------------------------------- sink


class DatadogSink(HttpSink):
    config: DatadogConfig
    limits = BatchLimits(max_events=MAX_ENTRIES, max_bytes=MAX_REQUEST_BYTES, goal_bytes=4_250_000, timeout=5.0)

    def __init__(self, name: str, config: DatadogConfig) -> None:
        super().__init__(name, config)
        domain = SITES[config.site]
        self.intake = (
            f"{config.endpoint}{LOGS_PATH}" if config.endpoint else f"https://http-intake.logs.{domain}{LOGS_PATH}"
        )
        self.api_base = config.endpoint or f"https://api.{domain}"
        self.where = f"site {config.site}" + (f" via {config.endpoint}" if config.endpoint else f" ({domain})")
        self._source = config.source
        self._service = config.service
        static = [t for t in config.tags if not _PLACEHOLDER.search(t)]
        self._static_tags = ",".join(static)
        self._templates = [t for t in config.tags if _PLACEHOLDER.search(t)]
        self._paths = sorted({p for t in self._templates for p in _PLACEHOLDER.findall(t)})
        self._tag_cache: dict[Any, str] = {}
        # The common template set names one top-level field (`level:{level}`): to_doc then looks
        # its rendering up directly. (A dict or list value is unhashable: ddtags handles it.)
        single = self._paths[0] if len(self._paths) == 1 else ""
        self._tag_key = single if single and "." not in single else None
        self._last_stamp: Any = None
        self._last_ms: int | None = None
        self._notices = RateLimitedLog(log, interval=60.0)
        # A request body within this holds no log above max_event_bytes, nor too many bytes.
        self._whole_body_limit = min(MAX_REQUEST_BYTES, config.max_event_bytes)
        self._truncated = metrics.events_truncated.labels(name)
        self._out_of_range = metrics.events_dropped.labels(name, "out_of_range")
        self._restamped = metrics.events_restamped.labels(name)

    # ------------------------------------------------------------ HttpSink hooks

    def url(self, request: Request) -> str:
        return self.intake

    def auth_headers(self) -> dict[str, str]:
        return {"DD-API-KEY": self.config.api_key.get_secret_value()}

    # ------------------------------------------------------------ encoding

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
            parts = [by_path[p] for p in _PLACEHOLDER.findall(template)]
            if any(v is None or isinstance(v, (dict, list)) for v in parts):
                continue
            tags.append(_PLACEHOLDER.sub(lambda m: str(by_path[m.group(1)]).replace(",", "_"), template))
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

    def prepare(self, events: list[Event]) -> Prepared:
        """The events' Datadog log objects, encoded, within every per-log rule (see `_docs`; above
        `max_event_bytes` truncated, flagged and counted). Runs where the events are parsed, in a
        parse worker when there is one, so the agent only frames the logs into requests. One
        msgspec `encode_lines` call for the chunk; log by log only when some log may be too big
        or holds a value JSON cannot carry."""
        events, docs, stamps = self._docs(events)
        try:
            lines: bytes | None = _LINES.encode_lines(docs)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError):
            lines = None
        if lines is None or len(lines) > self.config.max_event_bytes:
            fitted = self._each_encoded(events, docs)
            lines = b"".join([raw + b"\n" for raw, _ in fitted])
            stamps = [stamp for _, stamp in fitted]
        return lines, stamps

    def encode(self, events: list[Event]) -> list[Request]:
        """Requests of at most 1,000 logs and 5,000,000 bytes.

        Events parsed in this process are encoded here with one orjson call for the whole request
        (the common batch: no log can pass `max_event_bytes` when the whole body does not);
        anything else is encoded log by log. Prepared logs (and so a split's halves, re-encoded)
        are only framed, which is why nothing is ever counted twice."""
        if not events:
            return []
        prepared: list[Event] = events
        if all(event.__class__ is not Encoded for event in events):
            events, docs, stamps = self._docs(events)
            try:
                body: bytes | None = orjson.dumps(docs)
            except orjson.JSONEncodeError:
                body = None
            if body is not None and len(events) <= MAX_ENTRIES and len(body) <= self._whole_body_limit:
                return [Request(body, events, {"oldest_ms": _oldest_ms(stamps)})] if events else []
            fitted = self._each_encoded(events, docs)
            prepared = [Encoded(e.fields, raw, stamp) for e, (raw, stamp) in zip(events, fitted, strict=True)]
        elif any(event.__class__ is not Encoded for event in events):  # mixed (rare): one by one
            prepared = []
            for event in events:
                encoded = event.__class__ is Encoded
                prepared += [event] if encoded else encoded_events(self.prepare([event]), event.fields)
        requests: list[Request] = []
        start, count = 0, len(prepared)
        while start < count:
            end, size = start, 2
            while end < count and end - start < MAX_ENTRIES:
                size += len(prepared[end].raw) + 1
                if size > MAX_REQUEST_BYTES and end > start:
                    break
                end += 1
            batch = prepared[start:end]
            body = b"[" + b",".join([event.raw for event in batch]) + b"]"
            stamps = [event.stamp for event in batch if isinstance(event, Encoded)]
            requests.append(Request(body, batch, {"oldest_ms": _oldest_ms(stamps)}))
            start = end
        return requests

    def _docs(self, events: list[Event]) -> tuple[list[Event], list[Doc], list[Any]]:
        """The Datadog log objects of `events` and their timestamps, out-of-window ones re-stamped
        (changed events replaced by new `Event`s) or dropped, and counted."""
        now = time.time()
        now_ms = int(now * 1000)
        oldest, newest = now_ms - MAX_AGE_MS, now_ms + MAX_AHEAD_MS
        to_doc = self.to_doc
        docs = [to_doc(event.fields) for event in events]
        # The common batch, checked with C-level min/max: every timestamp of one type (canonical
        # UTC strings compare in time order as strings) and all in the window. Anything else
        # takes the per-event look.
        stamps: list[Any] = [doc.get("timestamp") for doc in docs]
        first: Any
        last: Any
        try:
            first, last = min(stamps), max(stamps)
        except (TypeError, ValueError):  # mixed types, an event without a timestamp, no event
            first = last = None
        if first.__class__ is str and last.__class__ is str:
            in_window = format_ms(oldest) <= first and last <= format_ms(newest)
        elif first.__class__ is int and last.__class__ is int:
            in_window = oldest <= first and last <= newest
        else:
            in_window = False
        if not in_window and events:
            events, docs = self._into_window(events, docs, stamps, now, oldest, newest)
            stamps = [doc.get("timestamp") for doc in docs]
        return events, docs, stamps

    def _each_encoded(self, events: list[Event], docs: list[Doc]) -> list[tuple[bytes, Any]]:
        """Log by log: each encoded, fitted when too big or not encodable, with its timestamp."""
        limit = self.config.max_event_bytes
        out: list[tuple[bytes, Any]] = []
        for event, doc in zip(events, docs, strict=True):
            try:
                body = _encoded(doc)
            except orjson.JSONEncodeError:
                body = b""
            if not body or len(body) > limit:
                _, doc = self._fitted(event, doc)
                body = _encoded(doc)
            out.append((body, doc.get("timestamp")))
        return out

    def _into_window(
        self, events: list[Event], docs: list[Doc], stamps: list[Any], now: float, oldest: int, newest: int
    ) -> tuple[list[Event], list[Doc]]:
        """The slow path for a chunk with logs outside Datadog's window: re-stamped, or dropped
        when configured, and counted."""
        oldest_iso, newest_iso = format_ms(oldest), format_ms(newest)
        kept_events: list[Event] = []
        kept_docs: list[Doc] = []
        out_of_range = 0
        for event, doc, stamp in zip(events, docs, stamps, strict=True):
            if stamp is not None and (
                (stamp < oldest_iso or stamp > newest_iso) if stamp.__class__ is str else not oldest <= stamp <= newest
            ):
                out_of_range += 1
                if self.config.out_of_range == "drop":
                    continue
                event = self._restamped_event(event, now)
                doc = self.to_doc(event.fields)
            kept_events.append(event)
            kept_docs.append(doc)
        if out_of_range:
            self._count_out_of_range(out_of_range)
        return kept_events, kept_docs

    def _aged(self, events: list[Event]) -> list[Event]:
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
            if self.config.out_of_range == "drop":
                continue
            doc = orjson.loads(event.raw)
            doc.setdefault(ORIGINAL_TIMESTAMP, doc.get("timestamp"))
            doc["timestamp"] = format_ms(int(now * 1000))
            out.append(Encoded(event.fields, orjson.dumps(doc), doc["timestamp"]))
        if aged:
            self._count_out_of_range(aged)
        return out

    def _restamped_event(self, event: Event, now: float) -> Event:
        fields = dict(event.fields)
        fields.setdefault(ORIGINAL_TIMESTAMP, fields.get("timestamp"))
        fields["timestamp"] = format_ms(int(now * 1000))
        return Event(fields, event.raw)

    def _count_out_of_range(self, count: int) -> None:
        if self.config.out_of_range == "drop":
            self._out_of_range.inc(count)
            self._notices.warning(
                "out_of_range",
                "events outside Datadog's window (18 h old .. 2 h ahead) dropped",
                sink=self.name,
                events=count,
            )
        else:
            self._restamped.inc(count)
            self._notices.warning(
                "out_of_range",
                "events outside Datadog's window (18 h old .. 2 h ahead) re-stamped to now; "
                f"the original is in {ORIGINAL_TIMESTAMP}",
                sink=self.name,
                events=count,
            )

    def _fitted(self, event: Event, doc: Doc) -> tuple[Event, Doc]:
        """The event, made encodable and at most `max_event_bytes` once encoded."""
        fields = event.fields
        try:
            size = _json_size(doc)
        except orjson.JSONEncodeError:
            fields = sanitized(fields)
            fields[SANITIZED] = True
            doc = self.to_doc(fields)
            size = _json_size(doc)
            self._notices.warning("sanitized", "event had values JSON cannot carry; replaced", sink=self.name)
        if size > self.config.max_event_bytes:
            fields = self._truncated_fields(fields, size)
            doc = self.to_doc(fields)
            self._truncated.inc()
            self._notices.warning(
                "truncated",
                f"event over {self.config.max_event_bytes} bytes truncated (flagged {TRUNCATED})",
                sink=self.name,
                bytes=size,
            )
        return (event, doc) if fields is event.fields else (Event(fields, event.raw), doc)

    def _truncated_fields(self, original: dict[str, Any], size: int) -> dict[str, Any]:
        """Shorten the longest strings first, then drop the largest unprotected fields, until the
        encoded log fits; as a last resort keep only the protected fields with a cut message."""
        limit = self.config.max_event_bytes
        fields = dict(original)
        fields[TRUNCATED] = True
        for _ in range(64):
            size = _json_size(self.to_doc(fields))
            if size <= limit:
                return fields
            over = size - limit
            length, path = _largest_string(fields)
            if length >= 256 and path:
                value: Any = fields
                for step in path:
                    value = value[step]
                text = str(value)
                _replace_at(fields, path, _shrink(text, max(128, _json_size(text) - over - 16)))
                continue
            droppable = [k for k in fields if k not in PROTECTED and k not in (TRUNCATED, DROPPED_FIELDS)]
            if not droppable:
                break
            dropped: list[str] = list(fields.get(DROPPED_FIELDS, []))
            for key, key_size in sorted(((k, _json_size(fields[k])) for k in droppable), key=lambda kv: -kv[1]):
                del fields[key]
                dropped.append(key)
                over -= key_size + len(key) + 4
                if over <= 0:
                    break
            fields[DROPPED_FIELDS] = dropped
        minimal = {k: original[k] for k in PROTECTED if k in original and k != "message"}
        minimal[TRUNCATED] = True
        budget = limit - _json_size(self.to_doc(minimal)) - 64
        minimal["message"] = _shrink(str(original.get("message", "")), max(2, budget))
        return minimal

    # ------------------------------------------------------------ sending

    async def send(self, request: Request) -> Outcome:
        """Send, first re-stamping the logs of a request that waited so long they near the age limit."""
        oldest = request.meta.get("oldest_ms")
        if oldest is not None and oldest < time.time() * 1000 - STALE_MS:
            fresh = self.encode(self._aged(request.events))
            if not fresh:  # every event dropped as out of range (counted by _aged)
                request.events = []
                return DELIVERED
            if len(fresh) > 1:
                return Outcome("split", reason="stale", detail="re-encoded request no longer fits one request")
            request.body, request.events, request.meta = fresh[0].body, fresh[0].events, fresh[0].meta
            request.wire = None
        return await super().send(request)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes, request: Request) -> Outcome:
        """Where Datadog differs from the HttpSink defaults.

        - 400 on a batch: split until the bad log is alone, so one malformed entry does not cost
          999 good ones; a lone 400 is dropped (driver: counted, logged at most once a minute).
        - 401/403: unhealthy, data kept; the detail names the site (the key never appears).
        - 404/405: the endpoint is not a logs intake (a wrong `endpoint`): a config error, keep data.
        """
        detail = body[:512].decode("utf-8", "replace")
        if status == 400 and len(request.events) > 1:
            return Outcome("split", reason="http_400", detail=detail)
        if status in (401, 403):
            return Outcome(
                "unhealthy",
                reason=f"http_{status}",
                detail=f"Datadog refused the API key for {self.where} (HTTP {status}); "
                "data stays buffered and is retried until the key is fixed",
            )
        if status in (404, 405):
            return Outcome(
                "unhealthy",
                reason=f"http_{status}",
                detail=f"{self.intake} is not a Datadog logs intake (HTTP {status}); check site/endpoint",
            )
        return super().classify(status, headers, body, request)

    # ------------------------------------------------------------ shipper check

    async def check(self) -> CheckResult:
        """Validate the API key (GET /api/v1/validate on the API host, or on `endpoint` when set)
        and that the logs intake answers; no log is sent. The key never appears in the detail."""
        if importlib.util.find_spec("datadog_api_client") is None:
            key = await self._validate_plain()
        else:
            key = await asyncio.to_thread(self._validate_with_client)
        if not key.ok:
            return key
        reach = await self.probe(self.intake, {})  # without the key: only reachability is asked
        return CheckResult(reach.ok, f"{key.detail}; {reach.detail}")

    def _validate_with_client(self) -> CheckResult:
        # Imported by name: the package is an optional extra, and its functions are untyped.
        client_module: Any = importlib.import_module("datadog_api_client")
        exceptions: Any = importlib.import_module("datadog_api_client.exceptions")
        auth: Any = importlib.import_module("datadog_api_client.v1.api.authentication_api")
        ApiClient, Configuration = client_module.ApiClient, client_module.Configuration
        ApiException, AuthenticationApi = exceptions.ApiException, auth.AuthenticationApi

        configuration = Configuration(
            host=self.api_base,
            api_key={"apiKeyAuth": self.config.api_key.get_secret_value()},
            request_timeout=self.config.request_timeout,
        )
        try:
            with ApiClient(configuration) as client:
                response = AuthenticationApi(client).validate()
        except ApiException as exc:
            return self._validation_result(int(exc.status or 0))
        except Exception as exc:  # urllib3 connection errors and the like
            return CheckResult(False, f"cannot reach {self.api_base} for {self.where}: {type(exc).__name__}")
        return self._validation_result(200 if getattr(response, "valid", False) else 403)

    async def _validate_plain(self) -> CheckResult:
        import aiohttp

        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.get(self.api_base + VALIDATE_PATH, headers=self.auth_headers()) as resp:
                status = resp.status
                if status == 200:
                    doc = orjson.loads(await resp.content.read(4096) or b"{}")
                    status = 200 if isinstance(doc, dict) and doc.get("valid") is True else 403
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            return CheckResult(False, f"cannot reach {self.api_base} for {self.where}: {type(exc).__name__}")
        return self._validation_result(status)

    def _validation_result(self, status: int) -> CheckResult:
        if status == 200:
            return CheckResult(True, f"API key valid for {self.where}")
        if status in (401, 403):
            return CheckResult(False, f"API key rejected for {self.where} (HTTP {status})")
        return CheckResult(False, f"key validation at {self.api_base} failed (HTTP {status})")


REGISTRATION = (DatadogConfig, DatadogSink)
