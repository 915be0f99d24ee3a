"""The unit that flows through the pipeline.

An event keeps the raw bytes it was parsed from (so sinks that ship the original line never
re-serialize) next to its normalized fields (what routing, redaction and encoders read).
"""

from __future__ import annotations

from typing import Any

# Normalized field names every sink encodes from.
TIMESTAMP = "timestamp"
LEVEL = "level"
MESSAGE = "message"
SOURCE = "source"
STREAM = "stream"
HOST = "host"
SERVICE = "service"

LEVELS: tuple[str, ...] = ("trace", "debug", "info", "warn", "error", "fatal")
LEVEL_RANK: dict[str, int] = {name: rank for rank, name in enumerate(LEVELS)}


class Event:
    """One log event: normalized `fields` plus the `raw` bytes it came from."""

    __slots__ = ("fields", "raw")

    def __init__(self, fields: dict[str, Any], raw: bytes) -> None:
        self.fields = fields
        self.raw = raw

    @property
    def size(self) -> int:
        """Bytes this event accounts for in channels and batches (raw size plus a small overhead)."""
        return len(self.raw) + 64

    def __repr__(self) -> str:
        return f"Event({self.fields!r})"
