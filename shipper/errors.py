"""One exception hierarchy for the agent.

Configuration errors carry the key path (and TOML line where known); sink errors carry whether a
retry can help and a short `reason` that becomes a metric label.
"""

from __future__ import annotations


class ShipperError(Exception):
    """Base of every error shipper raises on purpose."""


class ConfigError(ShipperError):
    """The configuration is invalid; `key` is a dotted path such as `sinks.dd.batch.max_events`."""

    def __init__(self, key: str, message: str, line: int | None = None, path: str | None = None) -> None:
        self.key = key
        self.message = message
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:" if self.path else ""
        where += f"{self.line}: " if self.line else (" " if where else "")
        return f"{where}{self.key}: {self.message}"


class SinkError(ShipperError):
    """A sink failed to deliver; `retryable` says whether the same data may succeed later."""

    def __init__(self, reason: str, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message)
