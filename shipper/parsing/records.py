"""Normalization shared by every format: levels, messages, errors and HTTP access fields."""

from __future__ import annotations

import re
from typing import Any

import orjson

# pino's numeric levels; a custom level maps to the standard level at or below it.
LEVEL_BY_NUM: dict[int, str] = {10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal"}

# Words of pino, Nest, winston (npm and syslog levels), Cloud Logging `severity`, ECS `log.level`
# and Python `levelname`. winston's order is error, warn, info, http, verbose, debug, silly: its
# `verbose` is above `debug`, so it is debug (Nest's own `verbose` is below debug: see NEST_VERBOSE).
LEVEL_BY_WORD: dict[str, str] = {
    "trace": "trace",
    "silly": "trace",
    "verbose": "debug",
    "debug": "debug",
    "info": "info",
    "log": "info",
    "http": "info",
    "notice": "info",
    "information": "info",
    "default": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "panic": "fatal",
}

NEST_VERBOSE = "trace"  # Nest's levels: verbose < debug < log < warn < error < fatal

# Where other tools put the level word when there is no `level`: Cloud Logging, ECS (dotted key),
# log15/logfmt style, Python's logging, Datadog's log objects (a Datadog sink's dead letters).
LEVEL_KEYS = ("severity", "log.level", "lvl", "levelname", "status")


def level_field(record: dict[str, Any]) -> object:
    """The level a record states under another name (ECS's may be nested: `{"log": {"level": ..}}`)."""
    for key in LEVEL_KEYS:
        if key in record:
            return record[key]
    log = record.get("log")
    return log.get("level") if isinstance(log, dict) else None


def level_from_number(number: int) -> str:
    """Map a (possibly custom) pino level by range: 35 is above info and below warn, so info."""
    if number >= 60:
        return "fatal"
    if number >= 50:
        return "error"
    if number >= 40:
        return "warn"
    if number >= 30:
        return "info"
    if number >= 20:
        return "debug"
    return "trace"


def render(value: Any) -> str:
    """A message that is not a string, as compact JSON (strings pass through)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


def http_fields(record: dict[str, Any]) -> dict[str, Any] | None:
    """Datadog-style `http` {method, url, status_code, duration_ms} from pino's req/res/responseTime."""
    http: dict[str, Any] = {}
    req = record.get("req")
    if type(req) is dict:
        if "method" in req:
            http["method"] = req["method"]
        if "url" in req:
            http["url"] = req["url"]
    res = record.get("res")
    if type(res) is dict and "statusCode" in res:
        http["status_code"] = res["statusCode"]
    duration = record.get("responseTime")
    if duration is not None:
        http["duration_ms"] = duration
    return http or None


_ERROR_LINE = re.compile(r"([A-Za-z_$][\w$.]*)(?: \[[\w-]+\])?(?::\s?(.*))?")


def error_from_stack(stack: str) -> dict[str, Any]:
    """{type, message, stack} from a stack string whose first line is `Type: message`."""
    first = stack.split("\n", 1)[0]
    match = _ERROR_LINE.fullmatch(first)
    if match is None:
        return {"type": "Error", "message": first, "stack": stack}
    return {"type": match.group(1), "message": match.group(2) or "", "stack": stack}


def error_from_object(error: dict[str, Any]) -> dict[str, Any]:
    """Nest's `error` {name, message, stack, cause, ...} in pino's `err` shape (name becomes type, recursively)."""
    err = dict(error)
    kind = err.pop("type", None)
    name = err.pop("name", None)
    err = {"type": name if isinstance(name, str) else kind if isinstance(kind, str) else "Error", **err}
    err.setdefault("message", "")
    if "stack" not in err and isinstance(err.get("stack_trace"), str):  # ECS's error.stack_trace
        err["stack"] = err.pop("stack_trace")
    cause = err.get("cause")
    if isinstance(cause, dict):
        err["cause"] = error_from_object(cause)
    return err
