"""POST events as a JSON array or NDJSON to any URL: how users reach a custom collector."""

from __future__ import annotations

from typing import Literal

from shipper.config import HttpSinkConfig
from shipper.encoding import ndjson
from shipper.event import Event
from shipper.httpsink import HttpSink, encode_json_array
from shipper.sink import BatchLimits, Request
from shipper.units import Size


def _fields(event: Event) -> object:
    return event.fields


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

    def url(self, request: Request) -> str:
        return self.config.url

    def encode(self, events: list[Event]) -> list[Request]:
        if self.config.encoding == "json":
            return encode_json_array(events, _fields, self.config.max_request_bytes)
        return [Request(ndjson(events), events)]


REGISTRATION = (HttpConfig, GenericHttpSink)
