"""Raw lines in, normalized and redacted events out.

`build_processor` is the one entry point sources use. A processor is per (source, stream-group):
it may hold the tail of a multi-line event between `feed` calls, and reports those bytes in
`held_bytes` so a replayable source never checkpoints past them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from shipper.config import RedactConfig, SourceConfig
from shipper.event import Event
from shipper.metrics import parse_fallbacks


class Processor:
    """Parses lines of one input stream. Minimal version: JSON objects keep their fields, other lines are text."""

    def __init__(self, source: str, config: SourceConfig, *, host: str, redact: RedactConfig) -> None:
        self.source = source
        self.config = config
        self.host = host
        self.service = config.service or source
        self.held_bytes = 0
        self._fallbacks = parse_fallbacks.labels(source, "not_json")

    def feed(self, lines: list[bytes], stream: str | None, received_at: float) -> list[Event]:
        """Parse complete lines (no terminators) read at `received_at` (epoch seconds)."""
        received = datetime.fromtimestamp(received_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events: list[Event] = []
        for line in lines:
            fields: dict[str, Any] | None = None
            if line[:1] == b"{":
                try:
                    parsed = orjson.loads(line)
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    fields = parsed
            if fields is None:
                self._fallbacks.inc()
                fields = {"message": line.decode("utf-8", "replace")}
            fields.setdefault("timestamp", received)
            fields.setdefault("level", "info")
            fields.setdefault("message", "")
            fields["source"] = self.source
            if stream is not None:
                fields["stream"] = stream
            fields.setdefault("host", self.host)
            fields.setdefault("service", self.service)
            events.append(Event(fields, line))
        return events

    def flush(self, now: float | None = None, force: bool = False) -> list[Event]:
        """Emit multi-line groups idle longer than the flush timeout (all of them when `force`)."""
        del now, force
        return []


def build_processor(source: str, config: SourceConfig, *, host: str, redact: RedactConfig) -> Processor:
    return Processor(source, config, host=host, redact=redact)


def now() -> float:
    return time.time()
