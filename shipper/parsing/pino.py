"""The pino record fast path: a run of parsed records made into events in one call.

A plain pino record (integer `level`, epoch-ms integer `time`, string `msg` and `hostname`, none
of the keys normalization adds) is normalized here: the level word (the number stays as
`level_num`), the RFC 3339 `timestamp`, `msg` to `message`, `hostname` to `host`, the stream's
`service`/`source`/`stream`, and Fastify's `http` fields. Any other record is left untouched and
listed as slow, with the time of the last fast record before it, so the careful path
(`Processor._normalize`) notes the stream's clock in the same order as line by line.

`normalize_records` is the C version (shipper/_speedups.c) when it was built, else the Python one
below, which defines what both do (see shipper/speedups.py).
tests/test_speedups.py checks that both give the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shipper.event import Event
from shipper.parsing.clock import EPOCH_MS_END, EPOCH_MS_MIN, MS_SUFFIX, second_prefix
from shipper.parsing.records import LEVEL_BY_NUM, http_fields, level_from_number
from shipper.speedups import SPEEDUPS

# events (None where slow), slow indexes, the last fast record's time before each slow one (-1:
# none since the previous slow one), the last fast time after the last slow one, the second and
# prefix of the timestamp cache.
Normalized = tuple[list[Event | None], list[int], list[int], int, int, str]
NormalizeRecords = Callable[[list[Any], list[bytes], str, str, "str | None", int, str], Normalized]

# Keys a plain pino record must not hold already (normalization adds them).
_ADDED = ("level_num", "timestamp", "message", "host", "service", "source")


def _access_fields(record: dict[str, Any]) -> dict[str, Any] | None:
    """Fastify's `incoming request` (req) and `request completed` (res) lines, the common shapes
    without a helper call."""
    req = record.get("req")
    if req is not None:
        if "res" not in record and type(req) is dict and "method" in req and "url" in req:
            return {"method": req["method"], "url": req["url"]}
        return http_fields(record)
    res = record.get("res")
    if res is None:
        return None
    if type(res) is dict and "statusCode" in res and "responseTime" in record:
        return {"status_code": res["statusCode"], "duration_ms": record["responseTime"]}
    return http_fields(record)


def normalize_records_py(
    records: list[Any], raws: list[bytes], service: str, source: str, stream: str | None, second: int, prefix: str
) -> Normalized:
    """The fast path over `records` (raws: each one's raw bytes); see the module docstring."""
    events: list[Event | None] = []
    slow: list[int] = []
    before: list[int] = []
    fresh = -1
    level_name, suffixes = LEVEL_BY_NUM.get, MS_SUFFIX
    for index, record in enumerate(records):
        if type(record) is dict:
            level = record.get("level")
            stamp = record.get("time")
            msg = record.get("msg")
            hostname = record.get("hostname")
            if (
                type(level) is int
                and type(stamp) is int
                and type(msg) is str
                and type(hostname) is str
                and EPOCH_MS_MIN <= stamp < EPOCH_MS_END
                and not any(key in record for key in _ADDED)
                and (stream is None or "stream" not in record)
            ):
                http = _access_fields(record)
                if http is None or "http" not in record:
                    sec = stamp // 1000
                    if sec != second:
                        second, prefix = sec, second_prefix(sec)
                    del record["msg"], record["hostname"]
                    record["level_num"] = level
                    record["level"] = level_name(level) or level_from_number(level)
                    record["timestamp"] = prefix + suffixes[stamp % 1000]
                    record["message"] = msg
                    record["host"] = hostname
                    record["service"] = service
                    record["source"] = source
                    if stream is not None:
                        record["stream"] = stream
                    if http is not None:
                        record["http"] = http
                    events.append(Event(record, raws[index]))
                    fresh = stamp
                    continue
        events.append(None)
        slow.append(index)
        before.append(fresh)
        fresh = -1
    return events, slow, before, fresh, second, prefix


def _choose() -> NormalizeRecords:
    if SPEEDUPS is None:
        return normalize_records_py
    SPEEDUPS.configure(LEVEL_BY_NUM, level_from_number, http_fields, second_prefix, Event)
    compiled: NormalizeRecords = SPEEDUPS.normalize_records
    return compiled


normalize_records: NormalizeRecords = _choose()
