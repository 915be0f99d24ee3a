"""The direct lane: plain pino lines straight to a sink's wire form, in C.

For a sink that sends an event's normalized fields as one JSON object (http, file, console:
`FieldsJson`) or as a Datadog log object (`LogEncoder`), parsing a plain pino line into a dict,
normalizing it and encoding the dict again is nearly all of the work, and the result is the line
with a few members moved and added. The lane (`direct_lines` in shipper/_speedups.c) checks that
a line is JSON in the exact form msgspec writes, then copies it member by member with the fast
path's changes (shipper/parsing/pino.py), and Datadog's (`LogEncoder.to_doc`, its time window
re-stamping and its size limit): no dict, no `Event`. A line it does not take (a redaction
trigger word, an unusual record, any JSON written otherwise) goes the normal way, in its place, so
output order and the stream's clock are as line by line. There is no Python twin: the normal path
is what the lane must equal, byte for byte (tests/test_direct.py), and without the compiled module
the normal path runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from shipper.event import Event
from shipper.parsing.records import LEVEL_BY_NUM
from shipper.speedups import SPEEDUPS

_encoder = msgspec.json.Encoder()

# Keys the fast path adds, which a record it takes must not hold already (and extra fields must
# not be named, or fill_in would not add them after the lane's members).
ADDED = ("level_num", "timestamp", "message", "host", "service", "source")
_NAMED_BY_NORMALIZING = frozenset((*ADDED, "level", "stream", "http"))

if SPEEDUPS is not None:
    SPEEDUPS.set_level_words({number: _encoder.encode(word) for number, word in LEVEL_BY_NUM.items()})


# Keys Datadog reads specially (sinks/datadog_logs.py SHADOWED, but pino's `hostname`, which
# normalizing moved to `host`): a record holding one goes the normal way; an extra field must not
# be named like one, nor `hostname`.
DATADOG_KEYS = ("status", "ddsource", "ddtags")
# Where a re-stamp keeps the original time (shipper/rules.py ORIGINAL_TIMESTAMP).
ORIGINAL_TIMESTAMP = "shipper.original_timestamp"


class Direct(NamedTuple):
    """A chunk through the lane: how many lines it had, the lines the lane wrote (NDJSON) and, for
    each line the normal path took, where its wire form goes in them (`cuts`, in order); those lines' indexes and their
    events (extra fields not added yet); for Datadog and Loki what the preparer gives with each log
    (None where the normal path took it) and how many logs the lane re-stamped."""

    line_count: int
    wire: bytes
    cuts: list[int]
    slow: list[int]
    events: list[Event]
    stamps: list[Any] | None
    restamped: int


class LaneForm(NamedTuple):
    """How the lane writes a preparer's logs (`Preparer.lane_form`).

    - `kind`: "fields" (the normalized fields), "datadog" (log objects), "loki" (lines) or
      "cloudwatch" (log events: the fields as the message, a fixed log stream).
    - `settings`: for Datadog its ddsource member and its ddtags member per level number, for
      CloudWatch its log stream; then, for all three, the window as `WindowRule.lane_window` gives
      it and the longest log, line or message.
    - `service`: the service the sink sets (Datadog), else the event's.
    - `labels`: Loki's label fields, which leave the line; `stream_of` gives an event's stream.
    - `restamped`: counts the logs the lane re-stamped.
    """

    kind: str = "fields"
    settings: tuple[Any, ...] = ()
    service: str | None = None
    labels: frozenset[str] = frozenset()
    stream_of: Callable[[dict[str, Any]], str] | None = None
    restamped: Callable[[int], None] | None = None


FIELDS_FORM = LaneForm()
# The label fields the lane can place: each constant over a stream's records or the level.
LOKI_LABEL_FIELDS = frozenset(("level", "service", "source", "stream"))


def member(key: str, value: Any) -> bytes:
    """`,"key":value` as msgspec writes it."""
    return b"," + _encoder.encode(key) + b":" + _encoder.encode(value)


class Lane:
    """What the lane writes for a stream's records in one form: the constant members (the service
    as the sink sets it, label fields left out), the feed's extra fields, the keys a record must
    not hold, and the sink's settings as the C function takes them."""

    __slots__ = ("constants", "extra", "forbidden", "streams")

    def __init__(self, const: dict[str, Any], extra: dict[str, Any] | None, form: LaneForm) -> None:
        values = {**const, "service": form.service} if form.service is not None else const
        self.constants = b"".join(member(key, value) for key, value in values.items() if key not in form.labels)
        fields = extra or {}
        self.extra = b"".join(member(key, value) for key, value in fields.items())
        named = [*ADDED, *(("stream",) if "stream" in const else ()), *fields]
        if form.kind != "fields":
            named += [*(DATADOG_KEYS if form.kind == "datadog" else ()), ORIGINAL_TIMESTAMP]
        self.forbidden = tuple(key.encode() for key in named)
        # Loki: the stream of this source's records at each level.
        self.streams: dict[int, str] = {}
        if form.stream_of is not None:
            self.streams = {number: form.stream_of({**const, "level": word}) for number, word in LEVEL_BY_NUM.items()}

    def settings(self, form: LaneForm) -> tuple[Any, ...] | None:
        """The sink's settings as `direct_lines` takes them (None: the fields form)."""
        if form.kind == "datadog":
            return ("datadog", *form.settings)
        if form.kind == "loki":
            return ("loki", self.streams, *form.settings, "level" in form.labels)
        if form.kind == "cloudwatch":
            return ("cloudwatch", *form.settings)
        return None

    @staticmethod
    def serves(extra: dict[str, Any] | None) -> bool:
        """Whether the lane can write these extra fields (none named like a normalized field or
        one Datadog reads, all encodable) where `fill_in` would have added them."""
        if not extra:
            return True
        named = {*DATADOG_KEYS, "hostname", ORIGINAL_TIMESTAMP}
        if not _NAMED_BY_NORMALIZING.isdisjoint(extra) or not named.isdisjoint(extra):
            return False
        try:
            _encoder.encode(extra)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError):
            return False
        return True


# (lines joined by newlines, flagged: a byte per line up to the last flagged one, 1 where the normal
# path must take it, forbidden keys, constants, extra, second, prefix[, sink settings]) -> (the
# lines the lane wrote as NDJSON, slow indexes, the last lane time before each slow one, the last
# lane time after the last slow one, second, prefix, what the preparer gives with each log or None
# (None for the fields form), how many were re-stamped, where each slow line's log goes in the
# NDJSON, the slow lines, how many lines); times as in normalize_records.
direct_lines = SPEEDUPS.direct_lines if SPEEDUPS is not None else None
