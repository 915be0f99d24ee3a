"""Per-event rules every destination applies with limits of its own.

- A time window: a destination silently ignores (Datadog: older than 18 h) or refuses (CloudWatch:
  older than 14 days; Loki: older than its `reject_old_samples_max_age`) logs outside it. Those are
  re-stamped to now with the original kept in `shipper.original_timestamp`, or dropped when
  configured; either way counted and said at most once a minute.
- A size limit per event: an event whose wire form is over it is cut down (longest strings first,
  then the largest unprotected fields), flagged `shipper.truncated` and counted, never dropped and
  never left for the destination to truncate silently.
- Values JSON cannot carry (lone surrogates, huge ints, odd types) are replaced, flagged.

A sink states its limits (`TimeWindow`, a byte limit) and how it encodes an event (`to_doc`);
the rules run where its preparer runs (a parse worker, or the agent), so this module imports no
config models and no asyncio.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shipper import tally
from shipper.encoding import SANITIZED, sanitized
from shipper.event import Event
from shipper.log import RateLimitedLog
from shipper.parsing.clock import epoch_ms, format_ms

log = logging.getLogger("shipper.rules")

ORIGINAL_TIMESTAMP = "shipper.original_timestamp"
TRUNCATED = "shipper.truncated"
DROPPED_FIELDS = "shipper.dropped_fields"
# Never removed when cutting an oversized event down to size.
PROTECTED = frozenset({"timestamp", "level", "message", "service", "host", "source", "stream"})

OutOfRange = Literal["restamp", "drop"]
Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """The timestamps a destination keeps: at most `max_age_ms` old and `max_ahead_ms` ahead of
    now (margins for clock skew and queueing included); `text` names it in messages."""

    max_age_ms: int
    max_ahead_ms: int
    text: str

    def bounds(self, now_ms: int) -> tuple[int, int]:
        return now_ms - self.max_age_ms, now_ms + self.max_ahead_ms


class WindowRule:
    """One sink's time window over events (their normalized `timestamp`)."""

    def __init__(self, sink: str, window: TimeWindow, out_of_range: OutOfRange) -> None:
        self.sink = sink
        self.window = window
        self.drop = out_of_range == "drop"
        self._restamped = tally.events_restamped.labels(sink)
        self._dropped = tally.events_dropped.labels(sink, "out_of_range")
        self._notices = RateLimitedLog(log, interval=60.0)

    def lane_window(self, now: float) -> tuple[int, int, str, int] | None:
        """The window as the direct lane (shipper/parsing/direct.py) applies it at `now`: oldest
        and newest epoch ms, the re-stamp and its epoch ms. None when out-of-window events are
        dropped (the lane leaves those to the normal path)."""
        if self.drop:
            return None
        now_ms = int(now * 1000)
        return (*self.window.bounds(now_ms), format_ms(now_ms), now_ms)

    def outside(self, stamps: list[Any], now_ms: int) -> list[int]:
        """Indexes of the timestamps outside the window. The common list, all canonical UTC strings
        inside it, costs two C-level scans; a replay of old logs, one comparison each."""
        oldest, newest = self.window.bounds(now_ms)
        oldest_iso, newest_iso = format_ms(oldest), format_ms(newest)
        try:
            first, last = min(stamps), max(stamps)  # canonical UTC strings sort in time order
            if first.__class__ is str and last.__class__ is str and len(first) == len(last) == 24:
                if oldest_iso <= first and last <= newest_iso:
                    return []
                if last < oldest_iso or first > newest_iso:
                    return list(range(len(stamps)))  # every one: a replayed backlog
        except (TypeError, ValueError):  # mixed types, an event without a timestamp
            pass
        return [
            index
            for index, stamp in enumerate(stamps)
            if stamp is not None and self._outside(stamp, oldest, newest, oldest_iso, newest_iso)
        ]

    def fit(self, events: list[Event], now: float | None = None) -> list[Event]:
        """`events` with those outside the window re-stamped (replaced by new events, so that
        encoding them again neither re-stamps nor counts them twice) or dropped, and counted."""
        if not events:
            return events
        now_ms = int((time.time() if now is None else now) * 1000)
        stamps: list[Any] = [event.fields.get("timestamp") for event in events]
        outside = self.outside(stamps, now_ms)
        if not outside:
            return events
        now_iso = format_ms(now_ms)
        kept = list(events)
        for index in outside:
            fields = events[index].fields
            original = fields.get(ORIGINAL_TIMESTAMP, stamps[index])
            kept[index] = Event({**fields, "timestamp": now_iso, ORIGINAL_TIMESTAMP: original}, events[index].raw)
        self.count(len(outside))
        return self._kept(kept, outside)

    def fit_objects(
        self, events: list[Event], docs: list[Doc], now: float | None = None
    ) -> tuple[list[Event], list[Doc]]:
        """The same rule for a preparer, on the objects it built from `events` (one each, changed
        in place: a preparer's events are not kept, so they need no new copies). Returns the
        events and objects kept."""
        if not events:
            return events, docs
        now_ms = int((time.time() if now is None else now) * 1000)
        stamps: list[Any] = [event.fields.get("timestamp") for event in events]
        outside = self.outside(stamps, now_ms)
        if not outside:
            return events, docs
        now_iso = format_ms(now_ms)
        for index in outside:
            doc = docs[index]
            doc[ORIGINAL_TIMESTAMP] = events[index].fields.get(ORIGINAL_TIMESTAMP, stamps[index])
            doc["timestamp"] = now_iso
        self.count(len(outside))
        return self._kept(events, outside), self._kept(docs, outside)

    def _kept(self, items: list[Any], outside: list[int]) -> list[Any]:
        """`items` without those outside the window when they are dropped."""
        if not self.drop:
            return items
        gone = set(outside)
        return [item for index, item in enumerate(items) if index not in gone]

    @staticmethod
    def _outside(stamp: Any, oldest: int, newest: int, oldest_iso: str, newest_iso: str) -> bool:
        if stamp.__class__ is str and len(stamp) == 24 and stamp[23] == "Z":
            return bool(stamp < oldest_iso or stamp > newest_iso)
        ms = epoch_ms(stamp)
        return ms is not None and not oldest <= ms <= newest

    def count(self, outside: int) -> None:
        """Count `outside` events re-stamped or dropped, and say so at most once a minute."""
        if self.drop:
            self._dropped.inc(outside)
            self._notices.warning(
                "out_of_range", f"events outside {self.window.text} dropped", sink=self.sink, events=outside
            )
        else:
            self._restamped.inc(outside)
            self._notices.warning(
                "out_of_range",
                f"events outside {self.window.text} re-stamped to now; the original is in {ORIGINAL_TIMESTAMP}",
                sink=self.sink,
                events=outside,
            )


class SizeRule:
    """One sink's limit on an event's wire form, in bytes, given how the sink encodes an event
    (`to_doc`: normalized fields to the object it sends)."""

    def __init__(self, sink: str, max_event_bytes: int, to_doc: Callable[[dict[str, Any]], Doc]) -> None:
        self.sink = sink
        self.limit = max_event_bytes
        self.to_doc = to_doc
        self._truncated = tally.events_truncated.labels(sink)
        self._notices = RateLimitedLog(log, interval=60.0)

    def fit(self, event: Event, doc: Doc) -> tuple[Event, Doc]:
        """The event and its object, made encodable and at most `limit` bytes once encoded."""
        fields = event.fields
        try:
            size = json_size(doc)
        except orjson.JSONEncodeError:
            fields = {**sanitized(fields), SANITIZED: True}
            doc = self.to_doc(fields)
            size = json_size(doc)
            self._notices.warning("sanitized", "event had values JSON cannot carry; replaced", sink=self.sink)
        if size > self.limit:
            fields = self.truncated(fields, size)
            doc = self.to_doc(fields)
            self._truncated.inc()
            notice = f"event over {self.limit} bytes truncated (flagged {TRUNCATED})"
            self._notices.warning("truncated", notice, sink=self.sink, bytes=size)
        return (event, doc) if fields is event.fields else (Event(fields, event.raw), doc)

    def truncated(self, original: dict[str, Any], size: int) -> dict[str, Any]:
        """Shorten the longest strings first, then drop the largest unprotected fields, until the
        encoded object fits; as a last resort keep only the protected fields with a cut message."""
        limit, to_doc = self.limit, self.to_doc
        fields = dict(original)
        fields[TRUNCATED] = True
        for _ in range(64):
            size = json_size(to_doc(fields))
            if size <= limit:
                return fields
            over = size - limit
            length, path = _largest_string(fields)
            if length >= 256 and path:
                value: Any = fields
                for step in path:
                    value = value[step]
                text = str(value)
                _replace_at(fields, path, _shrink(text, max(128, json_size(text) - over - 16)))
                continue
            droppable = [k for k in fields if k not in PROTECTED and k not in (TRUNCATED, DROPPED_FIELDS)]
            if not droppable:
                break
            dropped: list[str] = list(fields.get(DROPPED_FIELDS, []))
            for key, key_size in sorted(((k, json_size(fields[k])) for k in droppable), key=lambda kv: -kv[1]):
                del fields[key]
                dropped.append(key)
                over -= key_size + len(key) + 4
                if over <= 0:
                    break
            fields[DROPPED_FIELDS] = dropped
        minimal = {k: original[k] for k in PROTECTED if k in original and k != "message"}
        minimal[TRUNCATED] = True
        budget = limit - json_size(to_doc(minimal)) - 64
        minimal["message"] = _shrink(str(original.get("message", "")), max(2, budget))
        return minimal


def json_size(value: Any) -> int:
    return len(orjson.dumps(value))


def _shrink(text: str, target: int) -> str:
    """`text` cut so its JSON encoding takes at most `target` bytes (quotes included)."""
    size = json_size(text)
    while size > target and text:
        text = text[: max(0, int(len(text) * target / size) - 1)]
        size = json_size(text)
    return text


def _largest_string(node: Any, path: tuple[str | int, ...] = ()) -> tuple[int, tuple[str | int, ...]]:
    """Length and path of the longest string anywhere in `node` (dicts and lists)."""
    best: tuple[int, tuple[str | int, ...]] = (-1, ())
    items: Any
    if isinstance(node, str):
        return len(node), path
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return best
    for key, child in items:
        found = _largest_string(child, (*path, key))
        if found[0] > best[0]:
            best = found
    return best


def _replace_at(root: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Set `root[path] = value`, copying every container on the way (the originals may be shared)."""
    node: Any = root
    for step in path[:-1]:
        child = node[step]
        child = dict(child) if isinstance(child, dict) else list(child)
        node[step] = child
        node = child
    node[path[-1]] = value
