"""Grafana Loki sink: the push API (`POST <endpoint>/loki/api/v1/push`), JSON or protobuf.

Config, auth, how Loki's answers are classified, and `shipper check`. Entries are made where the
events are parsed (sinks/loki_entries.py) and framed into pushes here (sinks/loki_push.py):
grouped by stream, ordered, kept within what Loki accepts behind each stream's newest entry.
A 400 is a partial accept: the entries it names are counted by reason and never sent again,
except those refused for being too far behind a stream, which are sent again re-stamped.
"""

from __future__ import annotations

import re
from base64 import b64encode
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from shipper import tally
from shipper.config import HttpSinkConfig
from shipper.event import Event, PreparerSpec
from shipper.httpclient import HttpError
from shipper.httpsink import HttpSink, connection_failure, retry_after
from shipper.lines import events_of
from shipper.rules import OutOfRange
from shipper.sink import DELIVERED, BatchLimits, CheckResult, Outcome, Rejection, Request
from shipper.template import Template, template_error
from shipper.units import Duration, Size
from sinks.loki_entries import MAX_LINE_BYTES, LokiEntries
from sinks.loki_push import Framer, Matcher, go_time_ns, protobuf_push, reason_of

PUSH_PATH = "/loki/api/v1/push"
READY_PATH = "/ready"
EMPTY_PUSH = b'{"streams":[{"stream":{"source":"shipper"},"values":[]}]}'
MAX_LABEL_NAMES = 15  # Loki's max_label_names_per_series (service_name, which Loki adds, not counted)
MAX_TENANT_BYTES = 150
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Fields that hold one value per request, process or user: as labels they make a stream each.
HIGH_CARDINALITY = re.compile(
    r"(^|[._])(id|ids|pid|uuid|trace|span|url|path|ip|message|msg|time|timestamp)$|[a-z](Id|ID|Ids)$|_id$",
)
DEFAULT_LABELS = {"service": "{service}", "level": "{level}", "source": "{source}"}


class LokiConfig(HttpSinkConfig):
    """`[sinks.<name>]` with `type = "loki"`; see docs/loki.md."""

    type: Literal["loki"]
    endpoint: str
    tenant: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    labels: dict[str, str] = DEFAULT_LABELS
    structured_metadata: dict[str, str] = {}
    allow_high_cardinality_labels: bool = False
    encoding: Literal["json", "protobuf"] = "json"
    line: Literal["json", "raw"] = "json"
    max_line_bytes: Size = Field(default=MAX_LINE_BYTES, ge=1024)
    max_request_bytes: Size = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=6 * 1000 * 1000)
    max_streams: int = Field(default=1000, ge=1)
    # Loki reports only the last stream's refusals in a push: more than one risks unreported losses.
    streams_per_push: int = Field(default=1, ge=1)
    fallback_labels: dict[str, str] = {}
    max_age: Duration = 7 * 86400.0  # Loki's reject_old_samples_max_age
    max_ahead: Duration = 600.0  # Loki's creation_grace_period
    max_behind: Duration = 3600.0  # half of Loki's max_chunk_age
    out_of_range: OutOfRange = "restamp"

    @field_validator("endpoint")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected a base URL such as https://logs-prod-eu-west-0.grafana.net, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("the endpoint must not have a query or fragment")
        if parts.username or parts.password:
            raise ValueError("put credentials in username and password, not in the URL")
        return value.strip().rstrip("/").removesuffix(PUSH_PATH)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        if value is not None and not 0 < len(value.encode()) <= MAX_TENANT_BYTES:
            raise ValueError(f"a tenant id is 1 to {MAX_TENANT_BYTES} bytes")
        if value is not None and (any(c in value for c in "|/\\") or value in (".", "..")):
            raise ValueError(f"invalid tenant id {value!r}")
        return value

    @field_validator("labels", "fallback_labels", "structured_metadata")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"invalid name {name!r}: [a-zA-Z_][a-zA-Z0-9_]*, not starting with __")
            problem = template_error(template)
            if problem:
                raise ValueError(f"{name}: {problem}")
        return value

    @field_validator("labels")
    @classmethod
    def _few_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("Loki needs at least one label per stream")
        if len(value) > MAX_LABEL_NAMES:
            raise ValueError(f"{len(value)} labels; Loki accepts at most {MAX_LABEL_NAMES} per stream")
        return value

    @model_validator(mode="after")
    def _settings(self) -> LokiConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password (Grafana Cloud: the user id and a token)")
        if not self.allow_high_cardinality_labels:
            for name, text in self.labels.items():
                risky = [path for path in Template(text).paths if HIGH_CARDINALITY.search(path)]
                if risky:
                    raise ValueError(
                        f"labels.{name} = {text!r} takes {risky[0]!r}, which has a value per request or process: "
                        "a stream each, which Loki refuses past its limits. Put it in structured_metadata "
                        "(or the line), or set allow_high_cardinality_labels = true"
                    )
        return self


class LokiSink(HttpSink):
    config: LokiConfig
    limits = BatchLimits(max_events=100_000, max_bytes=6 * 1000 * 1000, goal_bytes=1024 * 1024, timeout=1.0)

    def __init__(self, name: str, config: LokiConfig) -> None:
        super().__init__(name, config)
        self.push_url = config.endpoint + PUSH_PATH
        self.content_type = "application/json" if config.encoding == "json" else "application/x-protobuf"
        self._entries: dict[str, Any] = {
            "labels": dict(config.labels),
            "structured_metadata": dict(config.structured_metadata),
            "line": config.line,
            "max_line_bytes": int(config.max_line_bytes),
            "max_age_ms": int(config.max_age * 1000) - 10 * 60 * 1000,
            "max_ahead_ms": int(config.max_ahead * 1000) - 60 * 1000,
            "out_of_range": config.out_of_range,
        }
        self.framer = Framer(
            name,
            max_streams=config.max_streams,
            max_behind_ns=int(config.max_behind * 1e9),
            drop_behind=config.out_of_range == "drop",
            fallback_labels={k: v for k, v in config.fallback_labels.items() if v},
            streams_per_push=config.streams_per_push,
        )
        self._blocked = tally.events_dropped.labels(name, "blocked")

    # ------------------------------------------------------------ HttpSink hooks

    def url(self, request: Request) -> str:
        return self.push_url

    def auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.config.tenant is not None:
            headers["X-Scope-OrgID"] = self.config.tenant
        if self.config.username is not None and self.config.password is not None:
            token = f"{self.config.username}:{self.config.password.get_secret_value()}"
            headers["Authorization"] = "Basic " + b64encode(token.encode()).decode()
        return headers

    # ------------------------------------------------------------ encoding

    def preparer(self) -> PreparerSpec:
        return f"{LokiEntries.__module__}:{LokiEntries.__name__}", self._entries

    def encode(self, events: list[Event]) -> list[Request]:
        limit = int(self.config.max_request_bytes)
        return self.framer.requests(self.framer.ordered(self.encoded(events)), self.limits.max_events, limit)

    def wire_in_thread(self) -> bool:
        return self.config.encoding == "protobuf" or super().wire_in_thread()

    def wire_form(self, request: Request) -> bytes:
        """JSON as framed; protobuf built from the entries and compressed with RAW snappy (Loki
        refuses the framed snappy format); either gzipped on top when configured."""
        if self.config.encoding == "protobuf":
            import cramjam  # here, not at the top: its ~2 MiB are paid only by protobuf pushes

            request.body = bytes(
                cramjam.snappy.compress_raw(protobuf_push(events_of(request.events), self.framer.line))
            )
        return super().wire_form(request)

    # ------------------------------------------------------------ answers

    def classify(self, status: int, headers: Mapping[str, str], body: bytes, request: Request) -> Outcome:
        """Where Loki differs from the HttpSink defaults.

        - 260 (ingestion blocked for the tenant) and any other 2xx but 204/200: accepted and not
          stored: delivered, every entry counted as `blocked`.
        - 400: a partial accept; the entries named are refused for good (counted by reason), except
          those too far behind their stream, which are sent again re-stamped (see loki_push).
        - 429: the tenant's rate limit stores nothing: retry the push. A stream's rate limit or the
          stream limit refuses only the streams named: those are sent again after the backoff.
        - 401/403: unhealthy, data kept (HttpSink).
        """
        if status in (200, 204):
            return DELIVERED
        if 200 <= status < 300:
            self._blocked.inc(len(request.events))
            return Outcome(
                "delivered",
                reason=f"http_{status}",
                rejected=[Rejection(i, "blocked", f"HTTP {status}") for i in range(len(request.events))],
            )
        text = body.decode("utf-8", "replace")
        if status == 400:
            return self._partial(text, request)
        if status == 429:
            return self._rate_limited(text, headers, request)
        if status in (401, 403):
            who = f"tenant {self.config.tenant!r} at " if self.config.tenant else ""
            return Outcome(
                "unhealthy",
                reason=f"http_{status}",
                detail=f"Loki refused the credentials for {who}{self.config.endpoint} (HTTP {status}); "
                "data stays buffered and is retried until they are fixed",
            )
        return super().classify(status, headers, body, request)

    def _partial(self, text: str, request: Request) -> Outcome:
        matcher = Matcher(events_of(request.events), self.config.labels, self.framer.line)
        refusal = matcher.refusals(text)
        rejected: list[Rejection] = []
        resend: list[int] = []
        for index, (reason, line) in sorted(refusal.named.items()):
            if reason in ("too_far_behind", "out_of_order"):
                resend.append(index)
                self._learn_newest(request.events[index].stamp[0], line)  # type: ignore[attr-defined]
            else:
                rejected.append(Rejection(index, reason, line[:512]))
        for key, (count, reason, line) in refusal.unnamed.items():
            if reason in ("too_far_behind", "out_of_order"):
                # Loki names ten entries a stream; those behind are the oldest of their stream.
                self._learn_newest(key, line)
                chosen = [i for i in matcher.by_stream[key] if i not in refusal.named][:count]
                resend += chosen
            else:  # which ones Loki did not say: counted, but no entry can be parked for them
                self._unnamed(reason).inc(count)
        if not rejected and not resend:
            # Nothing Loki said maps to an entry: a push it refused whole (a body it could not read).
            if len(request.events) > 1:
                return Outcome("split", reason=f"http_400_{reason_of(text)}", detail=text[:512])
            return Outcome("reject", reason=reason_of(text), detail=text[:512])
        return Outcome("delivered", reason="too_far_behind", rejected=rejected, resend=sorted(set(resend)))

    def _unnamed(self, reason: str) -> tally.Cell:
        return tally.events_dropped.labels(self.name, reason)

    def _learn_newest(self, key: str, line: str) -> None:
        """Remember how far Loki says a stream has moved on: "oldest acceptable timestamp is: T"."""
        _, _, after = line.partition("oldest acceptable timestamp is:")
        oldest = go_time_ns(after.replace("T", " ").replace("Z", " +0000 UTC")) if after else None
        if oldest is not None:
            self.framer.streams.learn(key, oldest + self.framer.max_behind_ns)

    def _rate_limited(self, text: str, headers: Mapping[str, str], request: Request) -> Outcome:
        wait = retry_after(headers)
        if "ingestion rate limit exceeded" not in text.lower():  # the tenant's limit: nothing was stored
            matcher = Matcher(events_of(request.events), self.config.labels, self.framer.line)
            refusal = matcher.refusals(text)
            streams = refusal.streams | set(refusal.unnamed)
            streams |= {request.events[index].stamp[0] for index in refusal.named}  # type: ignore[attr-defined]
            limited = sorted(index for key in streams for index in matcher.by_stream[key])
            if 0 < len(limited) < len(request.events):
                return Outcome("delivered", reason="http_429", retry_after=wait, resend=limited)
        return Outcome("retry", reason=f"http_429_{reason_of(text)}", retry_after=wait, detail=text[:512])

    # ------------------------------------------------------------ shipper check

    async def check(self) -> CheckResult:
        """`/ready` when it answers (Grafana Cloud's gateway may not serve it), then a push of no
        stream with the sink's tenant and credentials and no entries: Loki checks them and writes
        nothing (a push of no streams at all is a 422)."""
        client = await self.http()
        ready = ""
        try:
            answer = await client.request("GET", self.config.endpoint + READY_PATH, read_limit=0)
            if answer.status == 200:
                ready = "ready; "
            elif answer.status == 503:
                return CheckResult(False, f"{self.config.endpoint} is not ready (HTTP 503 from {READY_PATH})")
            headers = {"Content-Type": "application/json", **self.config.headers, **self.auth_headers()}
            answer = await client.request("POST", self.push_url, headers=headers, body=EMPTY_PUSH, read_limit=512)
            status = answer.status
            text = answer.body.decode("utf-8", "replace").strip()
        except (HttpError, TimeoutError) as exc:
            return CheckResult(False, f"{self.push_url} unreachable: {connection_failure(exc, self.push_url)}")
        tenant = f" for tenant {self.config.tenant!r}" if self.config.tenant else ""
        if 200 <= status < 300:
            return CheckResult(
                True, f"{self.config.endpoint}: {ready}an empty push{tenant} was accepted (HTTP {status})"
            )
        if status in (401, 403):
            return CheckResult(False, f"{self.push_url} refused the credentials{tenant} (HTTP {status}): {text}")
        return CheckResult(False, f"{self.push_url} answered an empty push with HTTP {status}: {text}")


REGISTRATION = (LokiConfig, LokiSink)
