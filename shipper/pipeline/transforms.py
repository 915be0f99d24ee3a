"""A source's own transforms (`[[sources.NAME.transforms]]`): plain functions over a chunk's events,
applied in order after parsing and before routing, wherever the source is parsed.

Built-ins: `drop` (events a `when` matches), `sample` (1 in `rate`, by arrival or by a hash of a
`key` field; events at or above `keep_level` always kept), `set`, `remove`, `rename` (dotted field
paths, read as `when.field_value` reads them: an exact top-level key first, `shipper.fragment`, else
nested tables, `req.headers.cookie`). What drop and sample leave out is counted in
`shipper_events_filtered_total{source, transform, reason}` (transform: its position in the list).

Parsing redacted the events before any transform ran, so a `set` or `rename` could bring a secret
back (a value such as `Bearer ...`, a field moved to `password`). The events whose fields changed
get their `raw` rewritten as the JSON of their new fields (so a `remove` also takes the value out
of what a sink shipping the original line would send), and those a `set` or `rename` changed go
through the redactor again first: one prefilter pass over their new JSON per chunk, as parsing
does, and the walk of each suspect. Redaction stays the last step before every sink.

Runs in parse workers too: imports no config models (settings may be plain attribute trees) and
counts with tallies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from zlib import crc32

import orjson

from shipper.encoding import sanitized
from shipper.event import LEVEL_RANK, Event
from shipper.redact import Redactor
from shipper.tally import events_filtered
from shipper.when import compile_when, field_value

if TYPE_CHECKING:
    from shipper.config import (
        DropTransform,
        RedactConfig,
        RemoveTransform,
        RenameTransform,
        SampleTransform,
        SetTransform,
        TransformConfig,
    )

Step = Callable[[list[Event]], list[Event]]
# Events whose fields a step changed in the chunk being transformed: True when a step may have
# brought in something to redact (set, rename), False when it only took something out (remove).
Changed = dict[Event, bool]


class Transforms:
    """One feed's transform steps (a sample's count runs per feed, as its multi-line state does)."""

    def __init__(self, source: str, configs: Sequence[TransformConfig], redact: RedactConfig) -> None:
        self._changed: Changed = {}
        self.steps = [
            _BUILDERS[config.type](config, source, str(index), self._changed) for index, config in enumerate(configs)
        ]
        adds = any(config.type in ("set", "rename") for config in configs)
        self._redactor = Redactor(redact) if adds and redact.enabled else None

    def __call__(self, events: list[Event]) -> list[Event]:
        """The events that remain after every step, changed ones re-encoded (and re-redacted)."""
        for step in self.steps:
            events = step(events)
        changed = self._changed
        if changed:
            self._reencode([event for event in events if event in changed])
            changed.clear()
        return events

    def _reencode(self, events: list[Event]) -> None:
        """Each changed event's raw as its new JSON, redacted first where a set or rename changed it."""
        raws = [_json(event.fields) for event in events]
        redactor = self._redactor
        if redactor is not None:
            added = [index for index, event in enumerate(events) if self._changed[event]]
            lines = [raws[index] for index in added]
            suspects = redactor.suspects(b"\n".join(lines))  # None: every one
            for at in range(len(lines)) if suspects is None else suspects:
                event = events[added[at]]
                if redactor.record(event.fields) is not None:
                    raws[added[at]] = _json(event.fields)
        for event, raw in zip(events, raws, strict=True):
            event.raw = raw


def build_transforms(source: str, configs: Sequence[TransformConfig], redact: RedactConfig) -> Transforms | None:
    """The source's transforms, or None when it has none (so a feed pays nothing per event)."""
    return Transforms(source, configs, redact) if configs else None


def _json(fields: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(fields)
    except (orjson.JSONEncodeError, TypeError):  # a lone surrogate, an integer past 64 bits
        return orjson.dumps(sanitized(fields))


def _slot(fields: dict[str, Any], path: str, create: bool = False) -> tuple[dict[str, Any] | None, str]:
    """The table that holds the field at `path`, and its key there: the top-level key `path` when
    there is one, else the nested one. With `create`, missing (or null) tables on the way are made;
    None when a step on the way is missing or holds a value that is not a table."""
    if path in fields or "." not in path:
        return fields, path
    *steps, last = path.split(".")
    node = fields
    for step in steps:
        child = node.get(step)
        if child is None and create:
            child = node[step] = {}
        elif not isinstance(child, dict):
            return None, last
        node = child
    return node, last


def _drop(config: DropTransform, source: str, position: str, changed: Changed) -> Step:
    matches = compile_when(config.when)
    assert matches is not None  # the config requires a condition
    counter = events_filtered.labels(source, position, "drop")

    def drop(events: list[Event]) -> list[Event]:
        kept = [event for event in events if not matches(event)]
        if len(kept) != len(events):
            counter.inc(len(events) - len(kept))
        return kept

    return drop


def _sample(config: SampleTransform, source: str, position: str, changed: Changed) -> Step:
    rate, key = config.rate, config.key
    floor = LEVEL_RANK.get(config.keep_level, len(LEVEL_RANK))  # "none": no level is always kept
    counter = events_filtered.labels(source, position, "sample")
    seen = 0  # events sampled by arrival: the first of every `rate` is kept

    def sample(events: list[Event]) -> list[Event]:
        nonlocal seen
        kept: list[Event] = []
        for event in events:
            fields = event.fields
            if LEVEL_RANK.get(fields.get("level", "info"), 2) >= floor:
                kept.append(event)
                continue
            value = None if key is None else field_value(fields, key)
            if value is None:
                keep = seen % rate == 0
                seen += 1
            else:  # the same in every process (Python's str hash is salted per process)
                keep = crc32(str(value).encode("utf-8", "surrogatepass")) % rate == 0
            if keep:
                kept.append(event)
        if len(kept) != len(events):
            counter.inc(len(events) - len(kept))
        return kept

    return sample


def _set(config: SetTransform, source: str, position: str, changed: Changed) -> Step:
    path, overwrite, value = config.field, config.overwrite, config.value
    # A table or array is copied into each event: a later step (or redaction) may change it there.
    copied = orjson.dumps(value) if isinstance(value, dict | list) else None

    def set_field(events: list[Event]) -> list[Event]:
        for event in events:
            node, name = _slot(event.fields, path, create=True)
            if node is not None and (overwrite or node.get(name) is None):
                node[name] = value if copied is None else orjson.loads(copied)
                changed[event] = True
        return events

    return set_field


def _remove(config: RemoveTransform, source: str, position: str, changed: Changed) -> Step:
    paths = config.fields

    def remove(events: list[Event]) -> list[Event]:
        for event in events:
            for path in paths:
                node, name = _slot(event.fields, path)
                if node is not None and name in node:
                    del node[name]
                    changed.setdefault(event, False)
        return events

    return remove


def _rename(config: RenameTransform, source: str, position: str, changed: Changed) -> Step:
    old, new = config.from_, config.to

    def rename(events: list[Event]) -> list[Event]:
        for event in events:
            fields = event.fields
            node, name = _slot(fields, old)
            if node is None or name not in node:
                continue
            target, new_name = _slot(fields, new, create=True)
            if target is not None:
                target[new_name] = node.pop(name)
                changed[event] = True
        return events

    return rename


_BUILDERS: dict[str, Callable[[Any, str, str, Changed], Step]] = {
    "drop": _drop,
    "sample": _sample,
    "set": _set,
    "remove": _remove,
    "rename": _rename,
}
