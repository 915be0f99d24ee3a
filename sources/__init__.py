"""Source types: `type = "<name>"` in a `[sources.*]` table maps to the module that implements it."""

from __future__ import annotations

from shipper.config import SourceConfig
from shipper.registry import Registry
from shipper.source import Source, SourceContext

REGISTRY: Registry[SourceConfig, Source] = Registry(
    {
        "file": "sources.file",
        "process": "sources.process",
        "stdin": "sources.stdin",
        "supabase": "sources.supabase",
    }
)


def build_source(name: str, config: SourceConfig, context: SourceContext) -> Source:
    return REGISTRY.component(config.type)(name, config, context)
