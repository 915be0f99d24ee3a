"""Sink types: `type = "<name>"` in a `[sinks.*]` table maps to the module that implements it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipper.registry import Registry

if TYPE_CHECKING:
    from shipper.config import SinkConfig
    from shipper.sink import Sink

REGISTRY: Registry[SinkConfig, Sink] = Registry(
    {
        "cloudwatch": "sinks.cloudwatch",
        "console": "sinks.console",
        "datadog": "sinks.datadog",
        "file": "sinks.file",
        "http": "sinks.http",
        "loki": "sinks.loki",
    }
)


def build_sink(name: str, config: SinkConfig) -> Sink:
    return REGISTRY.component(config.type)(name, config)
