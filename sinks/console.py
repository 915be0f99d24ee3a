"""Print events to shipper's stdout: colourised text on a terminal, NDJSON when piped."""

from __future__ import annotations

import sys
from typing import Literal

import orjson

from shipper.config import SinkConfig, ZoneName, time_zone
from shipper.encoding import FIELDS_JSON, ndjson_of
from shipper.event import Event, PreparerSpec, raw_of
from shipper.pretty import render
from shipper.sink import DELIVERED, BatchLimits, Outcome, Request, Sink


class ConsoleConfig(SinkConfig):
    type: Literal["console"]
    format: Literal["auto", "pretty", "json"] = "auto"
    timezone: ZoneName | None = None  # pretty times of day in this IANA zone (default UTC)


class ConsoleSink(Sink):
    config: ConsoleConfig
    limits = BatchLimits(max_events=10_000, max_bytes=4 * 1024 * 1024, timeout=0.2)

    def __init__(self, name: str, config: ConsoleConfig) -> None:
        super().__init__(name, config)
        tty = sys.stdout.isatty()
        self.pretty = config.format == "pretty" or (config.format == "auto" and tty)
        self.color = self.pretty and tty
        self.zone = time_zone(config.timezone) if config.timezone else None

    def preparer(self) -> PreparerSpec:
        return FIELDS_JSON

    def encode(self, events: list[Event]) -> list[Request]:
        """NDJSON as prepared; pretty text rendered from it (a terminal reads far slower than this)."""
        events = self.encoded(events)
        if self.pretty:
            raws = map(raw_of, events)
            text = "".join([render(Event(orjson.loads(raw), raw), self.color, self.zone) + "\n" for raw in raws])
            return [Request(text.encode("utf-8", "replace"), events)]
        return [Request(ndjson_of(events), events)]

    async def send(self, request: Request) -> Outcome:
        sys.stdout.buffer.write(request.body)
        sys.stdout.buffer.flush()
        return DELIVERED


REGISTRATION = (ConsoleConfig, ConsoleSink)
