"""Print events to shipper's stdout: colourised text on a terminal, NDJSON when piped."""

from __future__ import annotations

import sys
from typing import Literal

from shipper.config import SinkConfig, ZoneName, time_zone
from shipper.encoding import ndjson
from shipper.event import Event
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

    def encode(self, events: list[Event]) -> list[Request]:
        if self.pretty:
            body = "".join(render(event, self.color, self.zone) + "\n" for event in events).encode("utf-8", "replace")
        else:
            body = ndjson(events)
        return [Request(body, events)]

    async def send(self, request: Request) -> Outcome:
        sys.stdout.buffer.write(request.body)
        sys.stdout.buffer.flush()
        return DELIVERED


REGISTRATION = (ConsoleConfig, ConsoleSink)
