"""POST events as a JSON array or NDJSON to any URL: how users reach a custom collector."""

from __future__ import annotations

from typing import Literal

from shipper.config import HttpSinkConfig
from shipper.encoding import FIELDS_JSON, json_array_of, ndjson_of, runs
from shipper.event import Event, PreparerSpec
from shipper.httpsink import HttpSink
from shipper.sink import BatchLimits, Request
from shipper.units import Size


class HttpConfig(HttpSinkConfig):
    type: Literal["http"]
    url: str
    encoding: Literal["json", "ndjson"] = "json"
    max_request_bytes: Size = 10 * 1024 * 1024


class GenericHttpSink(HttpSink):
    config: HttpConfig
    limits = BatchLimits(max_events=10_000, max_bytes=10 * 1024 * 1024, goal_bytes=1024 * 1024, timeout=1.0)

    def __init__(self, name: str, config: HttpConfig) -> None:
        super().__init__(name, config)
        self.content_type = "application/json" if config.encoding == "json" else "application/x-ndjson"
        self._frame = json_array_of if config.encoding == "json" else ndjson_of

    def url(self, request: Request) -> str:
        return self.config.url

    def preparer(self) -> PreparerSpec:
        return FIELDS_JSON

    def encode(self, events: list[Event]) -> list[Request]:
        """Each event's fields as prepared where it was parsed, framed into bodies of at most
        `max_request_bytes` (a single larger event goes alone)."""
        limit = int(self.config.max_request_bytes)
        return [Request(self._frame(run), run) for run in runs(self.encoded(events), self.limits.max_events, limit)]


REGISTRATION = (HttpConfig, GenericHttpSink)
