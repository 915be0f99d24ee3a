"""The agent's own logs: JSON lines on stderr (readable text on a terminal), never a secret.

Structured context goes in `extra={...}`; the formatters print every extra attribute, so callers
must only pass values that are safe to show (names, counts, reasons, never keys or event content).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    _COLORS = {
        "DEBUG": "\x1b[2m",
        "INFO": "\x1b[32m",
        "WARNING": "\x1b[33m",
        "ERROR": "\x1b[31m",
        "CRITICAL": "\x1b[41m",
    }

    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        if self.color:
            level = f"{self._COLORS.get(record.levelname, '')}{level}\x1b[0m"
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {level} {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Send the agent's logs to stderr: JSON unless stderr is a terminal (or `fmt` says otherwise)."""
    handler = logging.StreamHandler(sys.stderr)
    tty = sys.stderr.isatty()
    if fmt == "json" or (fmt == "auto" and not tty):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(color=tty))
    root = logging.getLogger("shipper")
    root.handlers[:] = [handler]
    root.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    """Log at `level` and above (`agent.log_level`; a reload applies it live)."""
    logging.getLogger("shipper").setLevel({"warn": "WARNING"}.get(level, level.upper()))


class RateLimitedLog:
    """Logs a given kind of problem at most once per `interval`, with how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def _log(self, level: int, key: str, message: str, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-self.interval, 0))
        if now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return
        if suppressed:
            fields["suppressed"] = suppressed
        self._last[key] = (now, 0)
        self.logger.log(level, message, extra=fields)

    def warning(self, key: str, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, key, message, fields)

    def error(self, key: str, message: str, **fields: Any) -> None:
        self._log(logging.ERROR, key, message, fields)
