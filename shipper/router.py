"""Routes events from sources to sink channels by `inputs` and the optional `when` filter."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shipper.acks import Ack
from shipper.channel import Channel, Part
from shipper.config import WhenConfig
from shipper.event import LEVEL_RANK, Event, memory_size

Predicate = Callable[[Event], bool]

def field_value(fields: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`res.statusCode`), or None where any step is missing."""
    if path in fields:
        return fields[path]
    value: Any = fields
    for step in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def compile_when(when: WhenConfig | None) -> Predicate | None:
    """A predicate for a sink's `when` table; every condition given must hold."""
    if when is None:
        return None
    checks: list[Predicate] = []
    if when.level is not None:
        floor = LEVEL_RANK[when.level]
        checks.append(lambda e: LEVEL_RANK.get(e.fields.get("level", "info"), 2) >= floor)
    for path, expected in when.equals.items():
        checks.append(lambda e, p=path, x=expected: field_value(e.fields, p) == x)  # type: ignore[misc]
    for path, regex in when.matches.items():
        pattern = re.compile(regex)

        def matches(e: Event, p: str = path, rx: re.Pattern[str] = pattern) -> bool:
            value = field_value(e.fields, p)
            return value is not None and rx.search(value if isinstance(value, str) else str(value)) is not None

        checks.append(matches)
    if len(checks) == 1:
        return checks[0]
    return lambda e: all(check(e) for check in checks)


@dataclass(slots=True)
class Route:
    channel: Channel
    predicate: Predicate | None


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, list[Route]] = {}

    def add(self, source: str, channel: Channel, predicate: Predicate | None) -> None:
        self.routes.setdefault(source, []).append(Route(channel, predicate))

    async def route(self, source: str, events: list[Event], ack: Ack) -> None:
        """Hand each sink its share; `ack` gains one unit per event per sink that receives it."""
        total: int | None = None
        for route in self.routes.get(source, ()):
            if route.predicate is None:
                selected = events
                if total is None:
                    total = memory_size(events)
                nbytes = total
            else:
                selected = [e for e in events if route.predicate(e)]
                if not selected:
                    continue
                nbytes = memory_size(selected)
            ack.add(len(selected))
            await route.channel.put(Part(selected, ack, nbytes))
