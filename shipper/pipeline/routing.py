"""Which events go to which sink, and in what form: the one routing path, wherever parsing ran.

A source's events reach each sink it feeds (`inputs`) that the sink's `when` filter accepts. Each
sink's share is then encoded where the events were parsed by the sink's `Preparer` (its per-event
wire form, as NDJSON bytes), so the agent, with or without parse workers, only frames and sends.
The same `Routing` runs in the agent (`agent.parse_workers = 0`, or a source a worker cannot serve)
and in a parse worker; it imports neither asyncio nor config models, so a worker stays lean.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from shipper.event import Event, PreparedLines, Preparer, PreparerSpec, fill_in
from shipper.parsing.direct import Lane
from shipper.when import Predicate, compile_when

if TYPE_CHECKING:
    from shipper.config import WhenConfig
    from shipper.parsing import Processor

# One sink's share of a list of events: prepared (its wire form, `PreparedLines`) or, for a sink
# without a preparer, the events themselves.
Share = PreparedLines | list[Event]


def build_preparer(sink: str, spec: PreparerSpec) -> Preparer:
    """The preparer of the sink named `sink`, from its `module:Class` path and plain settings."""
    path, settings = spec
    module, _, attribute = path.partition(":")
    kind = getattr(importlib.import_module(module), attribute)
    return cast(Preparer, kind(sink, **settings))


class Routing:
    """A source's routes in config order: per sink, its `when` predicate and its preparer."""

    def __init__(self, routes: list[tuple[Predicate | None, Preparer | None]]) -> None:
        self.routes = routes
        # The direct lane may serve routes that all take every event, through preparers it can
        # write for (`lane_form`).
        lane = [preparer for predicate, preparer in routes if predicate is None and hasattr(preparer, "lane_form")]
        self._lane: list[Any] = lane if routes and len(lane) == len(routes) else []

    @classmethod
    def build(cls, routes: Sequence[tuple[WhenConfig | Any | None, str, PreparerSpec | None]]) -> Routing:
        """From (when settings, sink name, preparer spec) per route; `when` may be a config model
        or a plain attribute tree with the same names (in a parse worker)."""
        return cls(
            [
                (compile_when(when), build_preparer(sink, spec) if spec is not None else None)
                for when, sink, spec in routes
            ]
        )

    def split(self, events: list[Event], now: float | None = None) -> list[tuple[int, Share]]:
        """Each route's share of `events` (routes that take none are left out), by route index;
        time windows judged at `now` (the chunk's time), else by the clock."""
        shares: list[tuple[int, Share]] = []
        for index, (predicate, preparer) in enumerate(self.routes):
            selected = events if predicate is None else [event for event in events if predicate(event)]
            if selected:
                shares.append((index, preparer.prepare(selected, now) if preparer is not None else selected))
        return shares

    def direct(
        self, processor: Processor, joined: bytes, stream: str | None, now: float, extra: dict[str, Any] | None
    ) -> tuple[int, list[tuple[int, Share]]] | None:
        """Complete lines (`joined` by newlines) parsed and prepared through the direct lane (shipper/parsing/direct.py)
        when every route takes every event, as the normalized fields or, for a lone Datadog or Loki
        route, in its form (the lines the lane leaves go the normal way in their place): events
        parsed and each route's share. None when the lane does not serve the chunk (see
        `Processor.parse_direct`), nothing parsed then. The caller runs no transforms."""
        if not self._lane or not Lane.serves(extra):
            return None
        forms = [preparer.lane_form(now) for preparer in self._lane]
        if None in forms or (len(forms) > 1 and any(form.kind != "fields" for form in forms)):
            return None  # several routes share one body: only in the fields form
        form = forms[0]
        direct = processor.parse_direct(joined, stream, now, extra, form)
        if direct is None:
            return None
        count, wire, cuts, slow, events, stamps, restamped = direct
        if restamped and form.restamped is not None:
            form.restamped(restamped)
        if events:  # the lines the normal way took, each in its place between the lane's
            fill_in(events, extra)
            body, prepared_stamps = self._lane[0].prepare(events, now)  # the lane's time: in order
            lines = body.split(b"\n")
            lines.pop()
            pieces: list[bytes] = []
            start = 0
            for cut, line in zip(cuts, lines, strict=True):  # a log each: the lane serves no dropping preparer
                pieces += (wire[start:cut], line, b"\n")
                start = cut
            pieces.append(wire[start:])
            wire = b"".join(pieces)
            if stamps is not None and prepared_stamps is not None:
                for index, stamp in zip(slow, prepared_stamps, strict=True):
                    stamps[index] = stamp
        return count, [(index, (wire, stamps)) for index in range(len(self.routes))]
