"""Source types: `type = "<name>"` in a `[sources.*]` table maps to the module that implements it.

Each module ends with `REGISTRATION = (ConfigModel, SourceClass)`.
"""

from __future__ import annotations

import importlib

from shipper.config import SourceConfig
from shipper.source import Source, SourceContext

MODULES = {
    "stdin": "sources.stdin",
    "file": "sources.file",
    "process": "sources.process",
}


def registration(type_name: str) -> tuple[type[SourceConfig], type[Source]]:
    module = importlib.import_module(MODULES[type_name])
    config_model, source_class = module.REGISTRATION
    return config_model, source_class


def config_models() -> dict[str, type[SourceConfig]]:
    return {name: registration(name)[0] for name in MODULES}


def build_source(name: str, config: SourceConfig, context: SourceContext) -> Source:
    return registration(config.type)[1](name, config, context)
