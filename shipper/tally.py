"""Counters that code running in a parse worker increments, without a metrics library.

Importing prometheus_client costs a process ~9 MiB (its HTTP and WSGI helpers come with it), more
than a parse worker's whole parsing state. So the counters that parsing, redaction, transforms and a
sink's per-event encoding increment are plain tallies here: a worker reports their totals to the agent
(shipper/workers.py), and the agent exposes them on /metrics through a collector
(shipper/metrics.py) under the same names, types and labels as any other counter.

Cells are incremented from one thread (the event loop, or the worker's only thread).
"""

from __future__ import annotations

# (tally index, label values) -> total: what a worker reports, and what the agent adds up.
Totals = dict[tuple[int, tuple[str, ...]], float]


class Cell:
    """One labelled child of a tally: the value a hot loop increments."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Tally:
    """A counter family: name and help as Prometheus shows them, and a cell per label values."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.cells: dict[tuple[str, ...], Cell] = {}

    def labels(self, *values: str) -> Cell:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        cell = self.cells.get(values)
        if cell is None:
            cell = self.cells[values] = Cell()
        return cell


events_dropped = Tally("shipper_events_dropped", "Events a sink gave up on, by reason.", ("sink", "reason"))
events_truncated = Tally("shipper_events_truncated", "Events shortened to fit a destination's limit.", ("sink",))
events_restamped = Tally(
    "shipper_events_restamped",
    "Events whose timestamp was replaced because the destination would not index it.",
    ("sink",),
)
redactions = Tally("shipper_redactions", "Values replaced by [REDACTED], by rule.", ("rule",))
parse_fallbacks = Tally(
    "shipper_parse_fallbacks", "Lines kept as text because they did not parse as expected.", ("source", "reason")
)
events_filtered = Tally(
    "shipper_events_filtered",
    "Events a source's transforms left out on purpose (reason: drop, sample), by the transform's position in "
    "the source's transforms list.",
    ("source", "transform", "reason"),
)
events_rerouted = Tally(
    "shipper_events_rerouted",
    "Events a sink sent under fallback labels instead of their own (reason stream_limit: its cardinality guard).",
    ("sink", "reason"),
)

TALLIES: tuple[Tally, ...] = (
    parse_fallbacks,
    redactions,
    events_truncated,
    events_restamped,
    events_dropped,
    events_filtered,
    events_rerouted,
)


def totals() -> Totals:
    """Every cell's running total, keyed by tally index and label values."""
    return {
        (index, values): cell.value
        for index, tally in enumerate(TALLIES)
        for values, cell in tally.cells.items()
        if cell.value
    }


def add_deltas(current: Totals, reported: Totals) -> None:
    """Add what a worker counted since its `reported` totals (its `current` ones) to this process's tallies."""
    for (index, values), total in current.items():
        delta = total - reported.get((index, values), 0.0)
        if delta > 0:
            TALLIES[index].labels(*values).inc(delta)
