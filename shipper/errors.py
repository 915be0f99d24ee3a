"""One exception hierarchy for the agent.

Configuration errors carry the key path (and TOML line where known). A sink's failures are not
exceptions but `shipper.sink.Outcome` values (retry / split / reject / unhealthy, with a `reason`
that becomes a metric label), so the driver's handling of them is explicit and typed.
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
