"""The direct lane: plain pino lines straight to the fields-as-JSON wire form, in C.

For a sink that sends an event's normalized fields as one JSON object (http, file, console:
`FieldsJson`), parsing a plain pino line into a dict, normalizing it and encoding the dict again
is nearly all of the work, and the result is the line with a few members moved and added. The lane
(`direct_fields` in shipper/_speedups.c) checks that a line is JSON in the exact form msgspec
writes, then copies it member by member with the fast path's changes (shipper/parsing/pino.py):
no dict, no `Event`. A line it does not take (a redaction trigger word, an unusual record, any
JSON written otherwise) goes the normal way, in its place, so output order and the stream's clock
are as line by line. There is no Python twin: the normal path is what the lane must equal, byte
for byte (tests/test_direct.py), and without the compiled module the normal path runs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shipper.parsing.records import LEVEL_BY_NUM
from shipper.speedups import SPEEDUPS

_encoder = msgspec.json.Encoder()

# Keys the fast path adds, which a record it takes must not hold already (and extra fields must
# not be named, or fill_in would not add them after the lane's members).
ADDED = ("level_num", "timestamp", "message", "host", "service", "source")
_NAMED_BY_NORMALIZING = frozenset((*ADDED, "level", "stream", "http"))

if SPEEDUPS is not None:
    SPEEDUPS.set_level_words({number: _encoder.encode(word) for number, word in LEVEL_BY_NUM.items()})


class Lane:
    """What the lane writes after a stream's records: its constant members and the feed's extra
    fields, and the keys a record must not hold for the lane to take it."""

    __slots__ = ("constants", "extra", "forbidden")

    def __init__(self, const: dict[str, Any], extra: dict[str, Any] | None) -> None:
        self.constants = b"".join(b"," + _encoder.encode(key) + b":" + _encoder.encode(v) for key, v in const.items())
        fields = extra or {}
        self.extra = b"".join(b"," + _encoder.encode(key) + b":" + _encoder.encode(v) for key, v in fields.items())
        self.forbidden = tuple(key.encode() for key in (*ADDED, *(("stream",) if "stream" in const else ()), *fields))

    @staticmethod
    def serves(extra: dict[str, Any] | None) -> bool:
        """Whether the lane can write these extra fields (none named like a normalized field, all
        encodable) where `fill_in` would have added them."""
        if not extra:
            return True
        if not _NAMED_BY_NORMALIZING.isdisjoint(extra):
            return False
        try:
            _encoder.encode(extra)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError, UnicodeError):
            return False
        return True


# (lines, flagged: a byte per line, 1 where the normal path must take it, forbidden keys, constants,
# extra, second, prefix) -> (wire forms or None, slow indexes, the last lane time before each slow
# one, the last lane time after the last slow one, second, prefix); times as in normalize_records.
direct_fields = SPEEDUPS.direct_fields if SPEEDUPS is not None else None
