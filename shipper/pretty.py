"""Human-readable rendering of events for terminals (`console` sink, `shipper tail`)."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

import orjson

from shipper.event import Event

_LEVEL_COLORS = {
    "trace": "\x1b[2m",
    "debug": "\x1b[36m",
    "info": "\x1b[32m",
    "warn": "\x1b[33m",
    "error": "\x1b[31m",
    "fatal": "\x1b[1;41m",
}
_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_SHOWN = {"timestamp", "level", "message", "service", "source", "host", "stream"}
_HIDDEN_WHEN_PRETTY = {"time", "msg", "pid", "hostname", "level_num"}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else orjson.dumps(value).decode()
    return orjson.dumps(value, default=str).decode()


def _clock(timestamp: str, zone: tzinfo | None) -> str:
    """`HH:MM:SS.mmm` of an RFC 3339 UTC timestamp, in `zone` when given."""
    if zone is not None:
        try:
            moment = datetime.fromisoformat(timestamp).astimezone(zone)
        except ValueError:
            return timestamp
        return f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}"
    return timestamp[11:23] if len(timestamp) >= 23 else timestamp


def render(event: Event, color: bool, zone: tzinfo | None = None) -> str:
    """One event as `HH:MM:SS.mmm LEVEL service message key=value ...` (plus an error stack below);
    the time of day is UTC's, or `zone`'s."""
    fields = event.fields
    clock = _clock(str(fields.get("timestamp", "")), zone)
    level = str(fields.get("level", "info"))
    message = str(fields.get("message", ""))
    extras = " ".join(
        f"{key}={_value(value)}"
        for key, value in fields.items()
        if key not in _SHOWN and key not in _HIDDEN_WHEN_PRETTY and key != "err"
    )
    err = fields.get("err")
    # A crash printout's location and source excerpt (caret aligned) come before its stack, as Node prints them.
    below = [err.get(key) for key in ("location", "source", "stack")] if isinstance(err, dict) else []
    stack = "\n".join(part for part in below if isinstance(part, str) and part)
    service = str(fields.get("service", ""))
    if color:
        paint = _LEVEL_COLORS.get(level, "")
        line = f"{_DIM}{clock}{_RESET} {paint}{level.upper():5}{_RESET} {_DIM}{service}{_RESET} {message}"
        if extras:
            line += f" {_DIM}{extras}{_RESET}"
    else:
        line = f"{clock} {level.upper():5} {service} {message}"
        if extras:
            line += f" {extras}"
    if stack:
        line += "\n" + "\n".join("    " + row for row in stack.splitlines())
    return line
