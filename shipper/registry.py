"""Maps a config `type = "<name>"` to the module implementing it, importing that module on first use.

Each source or sink module ends with `REGISTRATION = (ConfigModel, ComponentClass)`. Only the types
a config names are imported, so a deployment that never ships to CloudWatch never imports boto3.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

ConfigT = TypeVar("ConfigT")
ComponentT = TypeVar("ComponentT")


class Registry(Generic[ConfigT, ComponentT]):
    def __init__(self, modules: dict[str, str]) -> None:
        self.modules = modules

    @property
    def names(self) -> list[str]:
        return sorted(self.modules)

    def load(self, type_name: str) -> tuple[type[ConfigT], type[ComponentT]]:
        module: Any = importlib.import_module(self.modules[type_name])
        config_model, component = module.REGISTRATION
        return config_model, component

    def config_model(self, type_name: str) -> type[ConfigT]:
        return self.load(type_name)[0]

    def component(self, type_name: str) -> type[ComponentT]:
        return self.load(type_name)[1]
