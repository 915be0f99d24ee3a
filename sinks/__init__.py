"""Sink types: `type = "<name>"` in a `[sinks.*]` table maps to the module that implements it.

Each module ends with `REGISTRATION = (ConfigModel, SinkClass)`. Modules are imported on first
use, so a deployment that never ships to CloudWatch never imports boto3.
"""

from __future__ import annotations

import importlib

from shipper.config import SinkConfig
from shipper.sink import Sink

MODULES = {
    "console": "sinks.console",
    "datadog": "sinks.datadog",
    "file": "sinks.file",
    "http": "sinks.http",
}


def registration(type_name: str) -> tuple[type[SinkConfig], type[Sink]]:
    module = importlib.import_module(MODULES[type_name])
    config_model, sink_class = module.REGISTRATION
    return config_model, sink_class


def config_models() -> dict[str, type[SinkConfig]]:
    return {name: registration(name)[0] for name in MODULES}


def build_sink(name: str, config: SinkConfig) -> Sink:
    return registration(config.type)[1](name, config)
