"""The per-event rules every sink applies with its own limits (shipper/rules.py): a time window and a
size limit, shown here with two destinations' limits each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from shipper import metrics
from shipper.event import Event
from shipper.rules import ORIGINAL_TIMESTAMP, TRUNCATED, SizeRule, TimeWindow, WindowRule

HOUR_MS = 3600 * 1000
DATADOG = TimeWindow(18 * HOUR_MS, 2 * HOUR_MS, "Datadog's window")
CLOUDWATCH = TimeWindow(14 * 24 * HOUR_MS, 2 * HOUR_MS, "CloudWatch's window")


def stamp(ago: timedelta) -> str:
    return (datetime.now(UTC) - ago).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(ago: timedelta, **fields: Any) -> Event:
    return Event({"timestamp": stamp(ago), "level": "info", "message": "m", **fields}, b"raw")


def counted(name: str, sink: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"sink": sink, **labels}) or 0.0


@pytest.mark.parametrize(
    ("window", "ages_outside", "ages_inside"),
    [
        (DATADOG, [timedelta(hours=19), timedelta(days=3), -timedelta(hours=3)], [timedelta(hours=17), timedelta(0)]),
        (CLOUDWATCH, [timedelta(days=15), -timedelta(hours=3)], [timedelta(hours=19), timedelta(days=13)]),
    ],
    ids=["datadog", "cloudwatch"],
)
def test_a_window_restamps_what_falls_outside_it_keeps_the_original_and_counts_once(
    window: TimeWindow, ages_outside: list[timedelta], ages_inside: list[timedelta]
) -> None:
    sink = f"rules-{window.text}"
    rule = WindowRule(sink, window, "restamp")
    events = [event(age, i=i) for i, age in enumerate([*ages_outside, *ages_inside])]
    before = counted("shipper_events_restamped_total", sink)
    fitted = rule.fit(events)
    assert [e.fields["i"] for e in fitted] == list(range(len(events)))
    now = datetime.now(UTC)
    for original, kept in zip(events[: len(ages_outside)], fitted, strict=False):
        assert abs(datetime.fromisoformat(kept.fields["timestamp"]) - now) < timedelta(seconds=5)
        assert kept.fields[ORIGINAL_TIMESTAMP] == original.fields["timestamp"]
        assert ORIGINAL_TIMESTAMP not in original.fields  # shared events are never changed in place
    assert fitted[len(ages_outside) :] == events[len(ages_outside) :]  # the very same objects
    assert counted("shipper_events_restamped_total", sink) == before + len(ages_outside)
    assert rule.fit(fitted) == fitted  # fitting again (a split's re-encoding) changes and counts nothing
    assert counted("shipper_events_restamped_total", sink) == before + len(ages_outside)


def test_a_window_can_drop_instead_and_reads_epoch_and_offset_timestamps() -> None:
    rule = WindowRule("rules-drop", DATADOG, "drop")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    events = [
        Event({"timestamp": now_ms - 20 * HOUR_MS}, b""),  # epoch ms
        Event({"timestamp": "2020-01-01T00:00:00+02:00"}, b""),  # an offset, not canonical UTC
        Event({"timestamp": now_ms - HOUR_MS}, b""),
        Event({"message": "no time at all"}, b""),
    ]
    before = counted("shipper_events_dropped_total", "rules-drop", reason="out_of_range")
    assert rule.fit(events) == events[2:]
    assert counted("shipper_events_dropped_total", "rules-drop", reason="out_of_range") == before + 2


@pytest.mark.parametrize("limit", [1_000, 256 * 1024], ids=["1KB", "256KiB-cloudwatch"])
def test_a_size_limit_cuts_an_event_down_flags_it_and_keeps_what_matters(limit: int) -> None:
    def to_doc(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "envelope": "x" * 50}  # a sink's own additions count too

    rule = SizeRule(f"rules-size-{limit}", limit, to_doc)
    big = event(timedelta(0), stack="s" * (limit * 2), extra={"list": ["y" * 300] * (limit // 100)})
    before = counted("shipper_events_truncated_total", rule.sink)
    fitted, doc = rule.fit(big, to_doc(big.fields))
    assert len(orjson.dumps(doc)) <= limit
    assert doc[TRUNCATED] is True and fitted.fields[TRUNCATED] is True
    assert {"timestamp", "level", "message"} <= fitted.fields.keys()
    assert len(big.fields["stack"]) == limit * 2 and TRUNCATED not in big.fields  # the original is untouched
    assert counted("shipper_events_truncated_total", rule.sink) == before + 1
    small = event(timedelta(0))
    assert rule.fit(small, to_doc(small.fields))[0] is small


def test_values_json_cannot_carry_are_replaced_and_flagged() -> None:
    rule = SizeRule("rules-sanitize", 10_000, dict)
    odd = Event({"message": "bad \udcff surrogate", "big": 2**80, 3: "int key"}, b"")
    with pytest.raises(TypeError):
        orjson.dumps(odd.fields)
    fitted, doc = rule.fit(odd, odd.fields)
    assert fitted.fields["shipper.sanitized"] is True and odd.fields.get("shipper.sanitized") is None
    decoded = orjson.loads(orjson.dumps(doc))
    assert decoded["shipper.sanitized"] is True and decoded["big"] == str(2**80) and decoded["3"] == "int key"


@pytest.mark.parametrize("mode", ["restamp", "drop"])
def test_a_preparer_applies_the_window_to_its_objects_as_the_events_rule_does(mode: str) -> None:
    """A preparer keeps no events: the rule changes the objects it built in place, and they equal
    what fitting the events first would have built; a replay of nothing but old logs included."""
    by_events = WindowRule(f"rules-objects-{mode}", DATADOG, mode)  # type: ignore[arg-type]
    by_objects = WindowRule(f"rules-objects-{mode}-2", DATADOG, mode)  # type: ignore[arg-type]
    mixed = [event(timedelta(days=2), i=0), event(timedelta(0), i=1), event(-timedelta(hours=3), i=2)]
    replay = [event(timedelta(days=30, seconds=i), i=i) for i in range(4)]
    for events in (mixed, replay):
        now = datetime.now(UTC).timestamp()
        expected = [e.fields for e in by_events.fit(events, now=now)]
        kept, docs = by_objects.fit_objects(events, [dict(e.fields) for e in events], now=now)
        assert docs == expected
        assert [e.fields["i"] for e in kept] == [d["i"] for d in docs]
        assert all(ORIGINAL_TIMESTAMP not in e.fields for e in events)  # the events are left as they were
