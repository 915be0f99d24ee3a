"""A sink's `when` filter as a predicate on events, and dotted-path field lookup.

Kept apart from the router (and its channels and asyncio) because parse workers route too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shipper.event import LEVEL_RANK, Event

if TYPE_CHECKING:
    from shipper.config import WhenConfig

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
