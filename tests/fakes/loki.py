"""A fake Grafana Loki that judges pushes the way Loki does: a real aiohttp server on loopback.

Read from Loki's sources (github.com/grafana/loki, main of 2026-08) and reproduced here, with the exact
message texts (the sink parses them; `%s` stream = Prometheus' `{a="1", b="2"}`, sorted, values Go-quoted,
with Loki's own `service_name` added; ts printed RFC3339 = whole seconds, UTC):

Order of judgement (pkg/distributor/http.go pushHandler, distributor.go pushWithResolver):
1. (optional gateway) raw body over `gateway_max_bytes` -> 413 nginx HTML page, before Loki sees it.
2. Tenant: missing `X-Scope-OrgID` -> 401 `no org id` (dskit middleware.AuthenticateUser); an invalid one
   -> 400 (dskit tenant.ValidTenantID: `tenant ID is too long: max 150 characters`, `tenant ID '%s'
   contains unsupported character '%c'`, `multiple org IDs present`). With `basic_auth` set (Grafana
   Cloud) credentials are checked instead (401) and the user is the tenant. `auth_enabled=False`: tenant "fake".
3. Body (see loki_wire.py): a push that does not decode is refused WHOLE: 400, nothing stored. That
   includes a numeric JSON timestamp and a label string that does not parse (`couldn't parse labels: ...`).
4. No streams at all -> 422 `error at least one valid stream is required for ingestion`. A stream
   without entries is skipped unvalidated (a push of one empty stream is a 204 that writes nothing).
5. Per stream, labels (pkg/distributor/validator.go ValidateLabels; pkg/validation/validate.go texts):
   `error at least one label pair is required per stream`, `entry for stream '%s' has %d label names;
   limit %d` (service_name not counted), `stream '%s' has label name too long: '%s'`, `stream '%s' has
   label value too long: '%s'`, `stream '%s' has duplicate label name: '%s'`. A stream that fails loses
   all its entries; the other streams go on.
6. Per entry, in this order (ValidateEntry): `entry for stream '%s' has timestamp too old: %v, oldest
   acceptable timestamp is: %v`, `entry for stream '%s' has timestamp too new: %v`, `max entry size '%d'
   bytes exceeded for stream '%s' while adding an entry with length '%d' bytes`, then structured metadata:
   `stream '%s' includes structured metadata, but this feature is disallowed. Please see ...`, `stream
   '%s' has structured metadata too large: '%d' bytes, limit: '%d' bytes. Please see ...`, `stream '%s'
   has too many structured metadata labels: '%d', limit: '%d'. Please see ...`.
   These texts are joined as Loki's util.GroupedErrors does: one error alone as is, else each distinct
   text once as `%d errors like: %s`, joined by `; ` (Loki's order is a Go map's, random; here, first seen).
   So a client cannot always tell WHICH entries failed (equal texts merge, line-too-long has no timestamp).
7. Tenant rate limit on the valid entries' bytes (line + structured metadata): over the burst (6 MiB) or
   over an injected 429 -> 429 `ingestion rate limit exceeded for user %s (limit: %d bytes/sec) while
   attempting to ingest '%d' lines totaling '%d' bytes, reduce log volume or contact your Loki
   administrator to see if the limit can be increased`; NOTHING is stored, validation errors unsaid.
8. The ingester (pkg/ingester/stream.go, instance.go), stream by stream in push order: an entry equal to
   the stream's last stored one (ts, line, metadata) is skipped; one more than `max_behind` (1 h) behind
   the NEWEST entry of its stream (including those earlier in the same push) is refused with `entry too far
   behind, entry timestamp is: %s, oldest acceptable timestamp is: %s`; an exact duplicate (same ts, line,
   metadata) of a stored entry is deduplicated silently (unorderedHeadBlock.Append); a limited stream
   (injected per-stream rate limit, whole stream as Loki shards streams by default) refuses every entry
   with `Per stream rate limit exceeded (limit: 3MB/sec) while attempting to ingest for stream '%s'
   totaling %s, consider splitting a stream via additional labels or contact your Loki administrator to
   see if the limit can be increased`; stream 5001 of a tenant -> 429 `maximum active stream limit
   exceeded when trying to create stream %s, ...`. A stream's failures become ONE error, status 400
   (behind) or 429 (rate limit):
       entry with timestamp 2026-08-22 10:00:00.5 +0000 UTC ignored, reason: '<reason>',\\n  (at most 10)
       user '<tenant>', total ignored: 2 out of 5 for stream: {app="api", service_name="api"}
9. Answer: Loki's instance.Push keeps only the LAST stream's ingester error (earlier ones are overwritten)
   and, when there is one, it replaces the distributor's 400. Otherwise the 400 of step 6, else 204.
   So a 204 (or a 400 naming other entries) can hide refused entries: the fake counts those in
   `hidden_rejections`, and every refusal by reason in `rejected`, so tests can see what Loki would not say.
Error bodies are text/plain, the message plus "\\n" (Go's http.Error).

Not emulated: the ingestion rate per second (4 MiB/s in Loki) unless `LokiLimits.ingestion_rate_bytes` is
set; the per-stream rate (3 MiB/s, burst 15 MiB) except on command; log level detection (Loki adds
`detected_level` metadata); the backfill header; label values as JSON numbers (refused here, Loki takes
them as text). Label names starting with `__` are accepted, as Loki accepts them, and counted in
`reserved_labels` (WIRE.md: a client must not send them). Structured metadata names are normalized as
Loki does (otlptranslator.LabelNamer: `trace.id` -> `trace_id`, `1x` -> `key_1x`).

Faults on command: `fail_next(n, 429)` (tenant rate limit: stores nothing), `fail_next(n, 503,
retry_after="1")`, `fail_for(seconds, 502)`, 401/403/413/500..., `limit_streams({"level": "error"}, count=1)`
(per-stream 429 for the streams carrying those labels: the others are stored), `set_ready(False)`.

Three ways to run it:
- `async with FakeLoki() as loki:` on the test's event loop;
- `with FakeLoki().threaded() as loki:` on its own loop in a thread (synchronous tests);
- `python -m tests.fakes.loki --port P [--no-auth] [--basic-auth USER:PASSWORD] [--gateway-max-bytes N]`
  as a process; it prints `listening http://127.0.0.1:PORT` and serves GET /control/stats (the same as
  `stats()`), POST /control/fault (`{"status": 429, "count": 2, "retry_after": "1"}`, `{"status": 503,
  "seconds": 1.5}`, `{"streams": {"level": "error"}, "count": 1}`), POST /control/ready (`{"ready": false}`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from tests.fakes.faults import Fault, Faults
from tests.fakes.loki_wire import (
    BodyTooLarge,
    LabelSyntaxError,
    PushedEntry,
    PushedStream,
    WireError,
    datasize,
    decode_body,
    go_time,
    parse_labels,
    render_labels,
    rfc3339,
    utf8_len,
)
from tests.fakes.threaded import FakeServer

KIB = 1024
MIB = 1024 * KIB
NS = 1_000_000_000
PUSH_PATH = "/loki/api/v1/push"
SERVICE_NAME = "service_name"
UNKNOWN_SERVICE = "unknown_service"
INTERNAL_STREAM_LABELS = ("__aggregated_metric__", "__pattern__")  # Loki's own streams skip label checks
LEVEL_METADATA = "detected_level"  # not counted in a line's structured metadata size
MAX_TENANT_ID = 150
JSON_BODY = {"Content-Type": "application/json"}
_TENANT_CHARS = re.compile(r"[a-zA-Z0-9!\-_.*'()]*")
PER_STREAM_RATE = 3 * MIB


@dataclass
class LokiLimits:
    """Loki's defaults (pkg/validation/limits.go, pkg/ingester, pkg/distributor); sizes as Loki's
    flagext.ByteSize reads "256KB" (binary units)."""

    max_line_bytes: int = 256 * KIB
    reject_old_samples_max_age_s: float = 7 * 86400
    creation_grace_s: float = 600
    max_label_names_per_series: int = 15
    max_label_name_length: int = 1024
    max_label_value_length: int = 2048
    max_behind_s: float = 3600  # half of max_chunk_age (2 h)
    ingestion_burst_bytes: int = 6 * MIB
    ingestion_rate_bytes: float | None = None  # Loki: 4 MiB/s; None = only the burst is enforced
    allow_structured_metadata: bool = True
    max_structured_metadata_bytes: int = 64 * KIB
    max_structured_metadata_entries: int = 128
    max_streams_per_tenant: int = 5000
    max_returned_stream_errors: int = 10
    max_recv_bytes: int = 100 * MIB
    max_decompressed_bytes: int = 100 * MIB  # Loki: 5000 MiB; kept small so a bomb cannot eat the test's memory
    discover_service_name: tuple[str, ...] = (
        "service", "app", "application", "app_name", "name", "app_kubernetes_io_name", "container",
        "container_name", "k8s_container_name", "component", "workload", "job", "k8s_job_name",
    )  # fmt: skip


class Entry(NamedTuple):
    ts_ns: int
    line: str
    metadata: dict[str, str]


class Stream(NamedTuple):
    tenant: str
    labels: dict[str, str]  # as Loki stores them: empty values dropped, service_name added
    entries: list[Entry]  # arrival order (a query returns them by time, equal times in this order)


class Push(NamedTuple):
    """One POST to the push endpoint, as the fake saw it."""

    status: int
    tenant: str | None
    raw_bytes: int
    decoded_bytes: int  # the JSON text or the protobuf message, every compression undone
    content_type: str
    content_encoding: str
    entries: int
    body: str  # the answer's text ("" for 204)


@dataclass
class _StoredStream:
    labels: dict[str, str]
    text: str
    entries: list[Entry] = field(default_factory=list)
    keys: set[tuple[int, str, tuple[tuple[str, str], ...]]] = field(default_factory=set)
    newest_ns: int | None = None
    last: tuple[int, str, tuple[tuple[str, str], ...]] | None = None


@dataclass
class _Tenant:
    tokens: float  # the ingestion rate limiter's bucket, when a rate is set
    refilled: float
    streams: dict[str, _StoredStream] = field(default_factory=dict)


@dataclass
class _Seen:
    content_type: str
    encoding: str
    tenant: str | None = None
    decoded: int = 0
    entries: int = 0


@dataclass
class _Candidate:
    """A stream that passed the distributor's checks, with its valid entries."""

    labels: list[tuple[str, str]]
    text: str
    entries: list[tuple[PushedEntry, dict[str, str]]]


class _Outcome(NamedTuple):
    """One stream's push in the ingester: its error, entries refused, and how many of them the error counts."""

    refusal: _Refusal | None
    refused: int
    said: int


class _Refusal(Exception):
    def __init__(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, dict(headers or {})


def grouped(errors: list[str]) -> str:
    """Loki's util.GroupedErrors.Error()."""
    counts = Counter(errors)
    if len(counts) == 1 and len(errors) == 1:
        return errors[0]
    return "; ".join(f"{n} errors like: {text}" for text, n in counts.items())


def metadata_name(name: str) -> str:
    """otlptranslator.LabelNamer{}.Build, which Loki applies to structured metadata names."""
    if not name:
        raise ValueError("label name is empty")
    reserved = len(name) >= 4 and name.startswith("__") and name.endswith("__")
    core = re.sub(r"[^a-zA-Z0-9]+", "_", name[2:-2] if reserved else name)
    normalized = f"__{core}__" if reserved else core
    if normalized[0].isdigit():
        normalized = "key_" + normalized
    if set(normalized) == {"_"}:
        raise ValueError(f"normalization for label name {name!r} resulted in invalid name {normalized!r}")
    return normalized


def _nginx_page(status: int, title: str) -> str:
    return (
        f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


_FAULT_TEXTS = {
    401: "no org id",
    403: "forbidden",
    413: _nginx_page(413, "Request Entity Too Large"),
    500: "rpc error: code = Unavailable desc = connection refused",
    502: _nginx_page(502, "Bad Gateway"),
    503: _nginx_page(503, "Service Temporarily Unavailable"),
    504: _nginx_page(504, "Gateway Time-out"),
}


class FakeLoki(FakeServer):
    thread_name = "fake-loki"

    def __init__(
        self,
        *,
        port: int = 0,
        auth_enabled: bool = True,
        basic_auth: tuple[str, str] | None = None,
        gateway_max_bytes: int | None = None,
        limits: LokiLimits | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(port)
        self.auth_enabled = auth_enabled
        self._basic_auth = basic_auth  # (user, password): Grafana Cloud's way; the user is the tenant
        self.gateway_max_bytes = gateway_max_bytes
        self.limits = limits or LokiLimits()
        self.delay = delay  # seconds before each answer: a slow Loki, so the shipper's buffers fill
        self.pushes: list[Push] = []
        self.statuses: Counter[int] = Counter()
        self.rejected: Counter[str] = Counter()  # entries refused, by Loki's reason name
        self.hidden_rejections = 0  # refused entries the answer did not mention (see the docstring, 9.)
        self.deduplicated = 0
        self.reserved_labels: Counter[str] = Counter()  # `__` label names pushed (Loki takes them)
        self.label_queries = 0
        self.ready = True
        self._tenants: dict[str, _Tenant] = {}
        self._faults = Faults()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ control

    def fail_next(self, count: int, status: int = 503, *, retry_after: str | None = None) -> None:
        """Answer the next `count` pushes with `status`. A 429 is the tenant rate limit: nothing stored; like
        Loki's it comes after validation, so a push without a valid entry gets its 400 instead."""
        with self._lock:
            self._faults.add(Fault(status, count, None, retry_after))

    def fail_for(self, seconds: float, status: int = 503, *, retry_after: str | None = None) -> None:
        """Answer every push with `status` for the next `seconds`."""
        with self._lock:
            self._faults.add(Fault(status, None, time.monotonic() + seconds, retry_after))

    def limit_streams(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        count: int | None = 1,
        seconds: float | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Per-stream rate limit (429) on the streams carrying `labels` (all streams when None) for the
        next `count` pushes or `seconds`: their entries are refused, the other streams' stored."""
        with self._lock:
            until = None if seconds is None else time.monotonic() + seconds
            self._faults.add(
                Fault(429, None if seconds is not None else count, until, retry_after, streams=dict(labels or {}))
            )

    def set_ready(self, ready: bool) -> None:
        """GET /ready answers 503 while not ready."""
        self.ready = ready

    # ------------------------------------------------------------ inspection

    def streams(self, tenant: str | None = None) -> list[Stream]:
        """Every stored stream (of `tenant`, or of all tenants), entries in arrival order."""
        with self._lock:
            return [
                Stream(name, dict(stream.labels), list(stream.entries))
                for name, state in self._tenants.items()
                if tenant is None or name == tenant
                for stream in state.streams.values()
            ]

    def entries(self, tenant: str | None = None) -> list[Entry]:
        """Every stored entry, stream after stream."""
        return [entry for stream in self.streams(tenant) for entry in stream.entries]

    def stats(self) -> dict[str, Any]:
        """Counters and every stored stream, JSON-ready (what GET /control/stats serves)."""
        streams = self.streams()
        with self._lock:
            return {
                "pushes": len(self.pushes),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "raw_bytes": sum(p.raw_bytes for p in self.pushes),
                "decoded_bytes": sum(p.decoded_bytes for p in self.pushes),
                "max_decoded_bytes": max((p.decoded_bytes for p in self.pushes), default=0),
                "content_types": dict(Counter(p.content_type for p in self.pushes)),
                "content_encodings": dict(Counter(p.content_encoding for p in self.pushes)),
                "accepted": sum(len(s.entries) for s in streams),
                "deduplicated": self.deduplicated,
                "rejected": dict(self.rejected),
                "hidden_rejections": self.hidden_rejections,
                "reserved_labels": dict(self.reserved_labels),
                "label_queries": self.label_queries,
                "tenants": {
                    tenant: [
                        {"labels": s.labels, "entries": [[e.ts_ns, e.line, e.metadata] for e in s.entries]}
                        for s in streams
                        if s.tenant == tenant
                    ]
                    for tenant in dict.fromkeys(s.tenant for s in streams)
                },
            }

    # ------------------------------------------------------------ the push

    async def _push(self, request: web.Request) -> web.Response:
        raw = await request.read()  # raw bytes: the app runs with auto_decompress=False
        if self.delay:
            await asyncio.sleep(self.delay)
        seen = _Seen(request.headers.get("Content-Type", ""), request.headers.get("Content-Encoding", ""))
        refusal: _Refusal | None = None
        with self._lock:
            try:
                self._judge(request, raw, seen)
            except _Refusal as exc:
                refusal = exc
            status = 204 if refusal is None else refusal.status
            text = "" if refusal is None else refusal.text
            self.statuses[status] += 1
            self.pushes.append(
                Push(status, seen.tenant, len(raw), seen.decoded, seen.content_type, seen.encoding, seen.entries, text)
            )
        if refusal is None:
            return web.Response(status=204)
        return _text_response(refusal.status, refusal.text, refusal.headers)

    def _judge(self, request: web.Request, raw: bytes, seen: _Seen) -> None:
        """Store what Loki would store, or raise the answer Loki would give (a 204 when nothing is raised)."""
        if self.gateway_max_bytes is not None and len(raw) > self.gateway_max_bytes:
            raise _Refusal(413, _nginx_page(413, "Request Entity Too Large"), {"Content-Type": "text/html"})
        fault = self._faults.next()
        if fault is not None and fault.status != 429:
            raise _fault_refusal(fault)
        seen.tenant = tenant = self._tenant(request)
        if len(raw) > self.limits.max_recv_bytes:
            raise _Refusal(
                413,
                f"request body too large: message size too large than max ({len(raw)} vs {self.limits.max_recv_bytes})",
            )
        try:
            pushed, seen.decoded = decode_body(
                raw, seen.content_type, seen.encoding, self.limits.max_decompressed_bytes
            )
        except BodyTooLarge as exc:
            raise _Refusal(413, str(exc)) from None
        except WireError as exc:
            raise _Refusal(400, str(exc)) from None
        seen.entries = sum(len(s.entries) for s in pushed)
        if not pushed:
            raise _Refusal(422, "error at least one valid stream is required for ingestion")
        candidates, errors, refused = self._distribute(tenant, pushed)
        if not candidates:
            if errors:
                raise _Refusal(400, grouped(errors))
            return
        per_stream = fault if fault is not None and fault.streams is not None else None
        self._admit(tenant, candidates, tenant_limited=fault is not None and per_stream is None, fault=fault)
        self._ingest(tenant, candidates, errors, refused, per_stream)

    def _tenant(self, request: web.Request) -> str:
        if self._basic_auth is not None:
            return self._check_basic_auth(request.headers.get("Authorization"))
        if not self.auth_enabled:
            return "fake"  # Loki's single tenant when auth_enabled: false
        org_id = request.headers.get("X-Scope-OrgID")
        if not org_id:
            raise _Refusal(401, "no org id")
        first, *others = org_id.split("|")
        if not _TENANT_CHARS.fullmatch(first):
            bad = next(c for c in first if not _TENANT_CHARS.fullmatch(c))
            raise _Refusal(400, f"tenant ID '{first}' contains unsupported character '{bad}'")
        if len(first.encode()) > MAX_TENANT_ID:
            raise _Refusal(400, f"tenant ID is too long: max {MAX_TENANT_ID} characters")
        if first in (".", ".."):
            raise _Refusal(400, "tenant ID is '.' or '..'")
        if any(other != first for other in others):
            raise _Refusal(400, "multiple org IDs present")
        return first

    def _check_basic_auth(self, header: str | None) -> str:
        assert self._basic_auth is not None
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            raise _Refusal(401, '{"status": "error", "error": "no credentials provided"}', JSON_BODY)
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if (user, password) != self._basic_auth:
            raise _Refusal(401, '{"status": "error", "error": "authentication error: invalid token"}', JSON_BODY)
        return user

    def _distribute(self, tenant: str, pushed: list[PushedStream]) -> tuple[list[_Candidate], list[str], int]:
        """The distributor: labels parsed for every stream (any failure fails the push), then each
        stream's labels and entries validated. Returns the valid streams, the error texts and the number
        of entries refused."""
        parsed: list[tuple[list[tuple[str, str]], PushedStream]] = []
        for stream in pushed:
            try:
                labels = parse_labels(stream.labels)
            except LabelSyntaxError as exc:
                raise _Refusal(400, f"couldn't parse labels: {exc}") from None
            parsed.append((self._with_service_name(labels), stream))
        now = time.time_ns()
        errors: list[str] = []
        candidates: list[_Candidate] = []
        refused = 0
        for labels, stream in parsed:
            if not stream.entries:
                continue
            text = render_labels(labels)
            self.reserved_labels.update(n for n, _ in labels if n.startswith("__") and n not in INTERNAL_STREAM_LABELS)
            label_error = self._label_error(labels, text)
            if label_error is not None:
                reason, message = label_error
                self.rejected[reason] += len(stream.entries)
                refused += len(stream.entries)
                errors.append(message)
                continue
            candidate = _Candidate(labels, text, [])
            for entry in stream.entries:
                entry_error = self._entry_error(entry, text, now)
                if entry_error is not None:
                    self.rejected[entry_error[0]] += 1
                    refused += 1
                    errors.append(entry_error[1])
                    continue
                try:
                    metadata = {metadata_name(name): value for name, value in entry.metadata}
                except ValueError as exc:  # Loki returns this plain error from the push: a 500
                    raise _Refusal(500, str(exc)) from None
                candidate.entries.append((entry, metadata))
            if candidate.entries:
                candidates.append(candidate)
        return candidates, errors, refused

    def _with_service_name(self, labels: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """ParseLokiRequest: Loki adds service_name from the first discovery label present."""
        names: dict[str, str] = {}
        for name, value in labels:
            names.setdefault(name, value)  # labels.Get: the first of duplicate names
        if SERVICE_NAME in names or not self.limits.discover_service_name:
            return labels
        if any(name in names for name in INTERNAL_STREAM_LABELS):
            return labels
        service = next((names[n] for n in self.limits.discover_service_name if names.get(n)), UNKNOWN_SERVICE)
        return sorted([*labels, (SERVICE_NAME, service)], key=lambda pair: pair[0])

    def _label_error(self, labels: list[tuple[str, str]], text: str) -> tuple[str, str] | None:
        if not labels:
            return "missing_labels", "error at least one label pair is required per stream"
        names = [name for name, _ in labels]
        if any(name in INTERNAL_STREAM_LABELS for name in names):
            return None
        limits = self.limits
        count = len(names) - (SERVICE_NAME in names)
        if count > limits.max_label_names_per_series:
            return (
                "max_label_names_per_series",
                f"entry for stream '{text}' has {count} label names; limit {limits.max_label_names_per_series}",
            )
        previous = ""
        for name, value in labels:
            if utf8_len(name) > limits.max_label_name_length:
                return "label_name_too_long", f"stream '{text}' has label name too long: '{name}'"
            if utf8_len(value) > limits.max_label_value_length:
                return "label_value_too_long", f"stream '{text}' has label value too long: '{value}'"
            if name == previous:
                return "duplicate_label_names", f"stream '{text}' has duplicate label name: '{name}'"
            previous = name
        return None

    def _entry_error(self, entry: PushedEntry, text: str, now_ns: int) -> tuple[str, str] | None:
        limits = self.limits
        oldest = now_ns - int(limits.reject_old_samples_max_age_s * NS)
        if entry.ts_ns < oldest:
            return (
                "greater_than_max_sample_age",
                f"entry for stream '{text}' has timestamp too old: {rfc3339(entry.ts_ns)}, "
                f"oldest acceptable timestamp is: {rfc3339(oldest)}",
            )
        if entry.ts_ns > now_ns + int(limits.creation_grace_s * NS):
            return "too_far_in_future", f"entry for stream '{text}' has timestamp too new: {rfc3339(entry.ts_ns)}"
        line_bytes = utf8_len(entry.line)
        if limits.max_line_bytes and line_bytes > limits.max_line_bytes:
            return (
                "line_too_long",
                f"max entry size '{limits.max_line_bytes}' bytes exceeded for stream '{text}' "
                f"while adding an entry with length '{line_bytes}' bytes",
            )
        if not entry.metadata:
            return None
        if not limits.allow_structured_metadata:
            return (
                "disallowed_structured_metadata",
                f"stream '{text}' includes structured metadata, but this feature is disallowed. Please see "
                "`limits_config.allow_structured_metadata` or contact your Loki administrator to enable it",
            )
        size = _metadata_bytes(entry)
        if limits.max_structured_metadata_bytes and size > limits.max_structured_metadata_bytes:
            return (
                "structured_metadata_too_large",
                f"stream '{text}' has structured metadata too large: '{size}' bytes, limit: "
                f"'{limits.max_structured_metadata_bytes}' bytes. Please see "
                "`limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it",
            )
        count = len(entry.metadata)
        if limits.max_structured_metadata_entries and count > limits.max_structured_metadata_entries:
            return (
                "structured_metadata_too_many",
                f"stream '{text}' has too many structured metadata labels: '{count}', limit: "
                f"'{limits.max_structured_metadata_entries}'. Please see "
                "`limits_config.max_structured_metadata_entries_count` or contact your Loki administrator to "
                "increase it",
            )
        return None

    def _admit(self, tenant: str, candidates: list[_Candidate], *, tenant_limited: bool, fault: Fault | None) -> None:
        """The tenant's ingestion rate limit, all or nothing (distributor.enforceIngestionRateLimits)."""
        lines = sum(len(c.entries) for c in candidates)
        size = sum(utf8_len(e.line) + _metadata_bytes(e) for c in candidates for e, _ in c.entries)
        limits = self.limits
        allowed = size <= limits.ingestion_burst_bytes and not tenant_limited
        if allowed and limits.ingestion_rate_bytes is not None:
            state, now = self._tenant_state(tenant), time.monotonic()
            refill = (now - state.refilled) * limits.ingestion_rate_bytes
            state.tokens, state.refilled = min(limits.ingestion_burst_bytes, state.tokens + refill), now
            allowed = size <= state.tokens
            if allowed:
                state.tokens -= size
        if allowed:
            return
        self.rejected["rate_limited"] += lines
        rate = int(limits.ingestion_rate_bytes or 4 * MIB)
        raise _Refusal(
            429,
            f"ingestion rate limit exceeded for user {tenant} (limit: {rate} bytes/sec) while attempting to ingest "
            f"'{lines}' lines totaling '{size}' bytes, reduce log volume or contact your Loki administrator to see "
            "if the limit can be increased",
            _retry(fault),
        )

    def _tenant_state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(self.limits.ingestion_burst_bytes, time.monotonic())
        return state

    def _ingest(
        self, tenant: str, candidates: list[_Candidate], errors: list[str], refused: int, limit: Fault | None
    ) -> None:
        """The ingester, stream after stream. Loki's instance.Push keeps the outcome of the LAST stream
        only; when that is an error it replaces the distributor's 400. Refusals left unsaid are counted."""
        state = self._tenant_state(tenant)
        outcomes = []
        for candidate in candidates:
            labels = dict(candidate.labels)
            limited = limit is not None and all(labels.get(k) == v for k, v in (limit.streams or {}).items())
            outcomes.append(self._ingest_stream(tenant, state, candidate, limited))
        last = outcomes[-1]
        unsaid = sum(outcome.refused for outcome in outcomes[:-1]) + last.refused - last.said
        if last.refusal is not None:
            self.hidden_rejections += unsaid + refused
            last.refusal.headers.update(_retry(limit) if last.refusal.status == 429 else {})
            raise last.refusal
        self.hidden_rejections += unsaid
        if errors:
            raise _Refusal(400, grouped(errors))

    def _ingest_stream(self, tenant: str, state: _Tenant, candidate: _Candidate, rate_limited: bool) -> _Outcome:
        """One stream's push in the ingester."""
        stream = state.streams.get(candidate.text)
        if stream is None:
            if len(state.streams) >= self.limits.max_streams_per_tenant:
                self.rejected["stream_limit"] += len(candidate.entries)
                refusal = _Refusal(
                    429,
                    f"maximum active stream limit exceeded when trying to create stream {candidate.text}, reduce the "
                    "number of active streams (reduce labels or reduce label values), or contact your Loki "
                    f"administrator to see if the limit can be increased, user: '{tenant}'",
                )
                return _Outcome(refusal, len(candidate.entries), len(candidate.entries))
            stream = _StoredStream(dict(candidate.labels), candidate.text)
            state.streams[candidate.text] = stream
        failed: list[tuple[int, str]] = []
        keep: list[tuple[PushedEntry, dict[str, str], tuple[int, str, tuple[tuple[str, str], ...]]]] = []
        newest, last = stream.newest_ns, stream.last
        behind_ns = int(self.limits.max_behind_s * NS)
        for entry, metadata in candidate.entries:
            key = (entry.ts_ns, entry.line, tuple(sorted(metadata.items())))
            if key == last:
                self.deduplicated += 1
                continue
            if newest is not None and entry.ts_ns < newest - behind_ns:
                failed.append((
                    entry.ts_ns,
                    f"entry too far behind, entry timestamp is: {rfc3339(entry.ts_ns)}, "
                    f"oldest acceptable timestamp is: {rfc3339(newest - behind_ns)}",
                ))  # fmt: skip
                self.rejected["too_far_behind"] += 1
                continue
            last = key
            newest = entry.ts_ns if newest is None else max(newest, entry.ts_ns)
            keep.append((entry, metadata, key))
        if rate_limited and keep:  # Loki shards streams by default, so a stream is rate limited whole
            self.rejected["per_stream_rate_limit"] += len(keep)
            behind = len(failed)
            failed = [(entry.ts_ns, _stream_rate_limited(candidate.text, entry)) for entry, _, _ in keep]
            return _Outcome(self._stream_refusal(429, tenant, candidate, failed), behind + len(failed), len(failed))
        for entry, metadata, key in keep:
            if key in stream.keys:
                self.deduplicated += 1
            else:
                stream.keys.add(key)
                stream.entries.append(Entry(entry.ts_ns, entry.line, metadata))
        stream.newest_ns, stream.last = newest, last
        if not failed:
            return _Outcome(None, 0, 0)
        return _Outcome(self._stream_refusal(400, tenant, candidate, failed), len(failed), len(failed))

    def _stream_refusal(
        self, status: int, tenant: str, candidate: _Candidate, failed: list[tuple[int, str]]
    ) -> _Refusal:
        """The ingester's errorForFailedEntries."""
        shown = failed[: self.limits.max_returned_stream_errors or None]
        text = "".join(f"entry with timestamp {go_time(ts)} ignored, reason: '{reason}',\n" for ts, reason in shown)
        total = len(candidate.entries)
        text += f"user '{tenant}', total ignored: {len(failed)} out of {total} for stream: {candidate.text}"
        return _Refusal(status, text)

    # ------------------------------------------------------------ other endpoints

    async def _ready(self, request: web.Request) -> web.Response:
        if self.ready:
            return _text_response(200, "ready")
        return _text_response(503, "Ingester not ready: waiting for 15s after being ready")

    async def _labels(self, request: web.Request) -> web.Response:
        """Label names of the tenant's streams (the time range is not applied); auth as for a push."""
        try:
            with self._lock:
                self.label_queries += 1
                tenant = self._tenant(request)
                state = self._tenants.get(tenant)
                names = sorted({n for s in state.streams.values() for n in s.labels}) if state else []
        except _Refusal as exc:
            return _text_response(exc.status, exc.text, exc.headers)
        body: dict[str, Any] = {"status": "success"}
        if names:  # Loki's LabelResponse has `data,omitempty`
            body["data"] = names
        return web.Response(body=orjson.dumps(body) + b"\n", content_type="application/json")

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _control_fault(self, request: web.Request) -> web.Response:
        spec = await request.json()
        retry_after = spec.get("retry_after")
        if "streams" in spec:
            seconds = spec.get("seconds")
            self.limit_streams(
                spec["streams"], count=int(spec.get("count", 1)), seconds=seconds, retry_after=retry_after
            )
        elif "seconds" in spec:
            self.fail_for(float(spec["seconds"]), int(spec.get("status", 503)), retry_after=retry_after)
        else:
            self.fail_next(int(spec.get("count", 1)), int(spec.get("status", 503)), retry_after=retry_after)
        return web.json_response({"ok": True})

    async def _control_ready(self, request: web.Request) -> web.Response:
        self.set_ready(bool((await request.json())["ready"]))
        return web.json_response({"ok": True})

    # ------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_recv_bytes + MIB)  # Loki's 413, not aiohttp's
        app.router.add_post(PUSH_PATH, self._push)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/loki/api/v1/labels", self._labels)
        app.router.add_get("/control/stats", self._control_stats)
        app.router.add_post("/control/fault", self._control_fault)
        app.router.add_post("/control/ready", self._control_ready)
        return app


def _stream_rate_limited(stream: str, entry: PushedEntry) -> str:
    """validation.ErrStreamRateLimit.Error()."""
    return (
        f"Per stream rate limit exceeded (limit: {datasize(PER_STREAM_RATE)}/sec) while attempting to ingest for "
        f"stream '{stream}' totaling {datasize(utf8_len(entry.line) + _metadata_bytes(entry))}, consider splitting "
        "a stream via additional labels or contact your Loki administrator to see if the limit can be increased"
    )


def _metadata_bytes(entry: PushedEntry) -> int:
    """util.StructuredMetadataSize: names and values, detected_level left out."""
    return sum(utf8_len(name) + utf8_len(value) for name, value in entry.metadata if name != LEVEL_METADATA)


def _fault_refusal(fault: Fault) -> _Refusal:
    headers = _retry(fault)
    text = _FAULT_TEXTS.get(fault.status, f"HTTP {fault.status}")
    if text.startswith("<html>"):
        headers["Content-Type"] = "text/html"
    return _Refusal(fault.status, text, headers)


def _retry(fault: Fault | None) -> dict[str, str]:
    return {"Retry-After": fault.retry_after} if fault is not None and fault.retry_after is not None else {}


def _text_response(status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """Go's http.Error (the text and a newline, text/plain), or a gateway's own body when its type is given."""
    headers = dict(headers or {})
    content_type = headers.pop("Content-Type", None)
    return web.Response(
        status=status,
        text=text + "\n" if content_type is None else text,
        content_type=content_type or "text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", **headers},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Grafana Loki on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-auth", action="store_true", help="auth_enabled: false (tenant 'fake')")
    parser.add_argument("--basic-auth", metavar="USER:PASSWORD", help="require these credentials (Grafana Cloud)")
    parser.add_argument("--gateway-max-bytes", type=int, help="a gateway's 413 above this raw body size")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer (a slow Loki)")
    args = parser.parse_args(argv)
    basic_auth = None
    if args.basic_auth:
        user, _, password = args.basic_auth.partition(":")
        basic_auth = (user, password)

    async def serve() -> None:
        loki = FakeLoki(
            port=args.port,
            auth_enabled=not args.no_auth,
            basic_auth=basic_auth,
            gateway_max_bytes=args.gateway_max_bytes,
            delay=args.delay,
        )
        await loki.serve_until_signalled()
        summary = {k: v for k, v in loki.stats().items() if k != "tenants"}
        print(orjson.dumps(summary).decode(), file=sys.stderr, flush=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
