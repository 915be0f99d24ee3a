"""Supabase's logs endpoint on paper: the SQL of a page, the window of each request, what was already
sent (the cursor and the ids remembered for deduplication), and a row as a record.

No HTTP and no asyncio here (sources/supabase.py asks, this decides), so every rule of the polling
plan is a plain function or a small state machine a test drives row by row:

- A table is read in windows `[cursor - overlap, now - lag]` (never before `floor`: `start_at`, or
  where remembered ids had to be let go), at most 24 h wide, both bounds sent.
- A page is `ORDER BY timestamp, id LIMIT 1000`. A full page narrows the window: the next one starts
  at its last row, and a keyset condition skips what that row's timestamp already gave.
- Rows whose id was sent before (the overlap reads the last minutes again, to catch rows ingested
  late) are skipped. The ids of rows at or after `cursor - overlap` are remembered, at most
  `max_ids`; past that the oldest go, and `floor` rises past them so they cannot come back twice.
- `Position` is what a table's checkpoint holds after a page is delivered: cursor, floor, ids.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shipper.parsing.clock import iso_datetime
from shipper.parsing.records import LEVEL_BY_WORD

US = 1_000_000  # microseconds per second: every time here is epoch microseconds (ClickHouse's DateTime64(6))
MAX_ROWS = 1000  # the endpoint returns at most this many rows per query
MAX_WINDOW_US = 24 * 3600 * US  # and accepts windows of at most 24 h
PROBE_WINDOW_US = 60 * US  # `shipper check` and the source column's probe read one minute at most
FUTURE_SLACK_US = 600 * US  # a checkpointed cursor further ahead of the clock than this is not believed

# Supabase's log sources, as the source column names them (followed by default: the first five).
DEFAULT_TABLES = ("function_edge_logs", "function_logs", "edge_logs", "postgres_logs", "auth_logs")
KNOWN_TABLES = (
    *DEFAULT_TABLES,
    "postgrest_logs",
    "storage_logs",
    "realtime_logs",
    "supavisor_logs",
    "pgbouncer_logs",
    "auth_audit_logs",
)

# The `log_attributes` keys selected per table (queries are metered by data scanned, and reading the
# map reads all of it): what a developer filters and groups by. A table not named here, or set to
# ["*"] in `attributes`, gets the whole map, once per row.
DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "function_edge_logs": (
        "function_id",
        "deployment_id",
        "version",
        "execution_time_ms",
        "request.method",
        "request.pathname",
        "response.status_code",
    ),
    "function_logs": ("function_id", "execution_id", "event_type", "level", "region", "version"),
    "edge_logs": ("request.method", "request.path", "request.host", "response.status_code"),
    "postgres_logs": (
        "parsed.error_severity",
        "parsed.sql_state_code",
        "parsed.user_name",
        "parsed.database_name",
        "parsed.application_name",
        "parsed.detail",
        "parsed.hint",
    ),
    "auth_logs": ("level", "status", "method", "path", "error", "request_id"),
}
WHOLE_MAP = "*"

# Where a row states a level word, in order (the first known word wins), and a status code.
_LEVEL_SOURCES = ("level", "parsed.error_severity", "error_severity")
_STATUS_SOURCES = ("response.status_code", "status_code", "status")
_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")
# Attributes whose last segment names a number Supabase stores as text: shipped as numbers.
_NUMERIC = frozenset({"status_code", "status", "execution_time_ms", "duration_ms", "process_id"})
# Top-level names the normalizer owns (or reads as a level, a time, a message): an attribute there
# goes into `log_attributes` under its full key instead, so nothing is renamed or lost.
_RESERVED = frozenset(
    {
        "id", "timestamp", "message", "msg", "level", "level_num", "severity_text", "host", "hostname",
        "service", "source", "stream", "time", "ts", "@timestamp", "supabase_table", "project_ref",
        "log_attributes", "shipper",
    }
)  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ------------------------------------------------------------------------------------ time


def to_micros(value: object) -> int | None:
    """Epoch microseconds of a row's `timestamp`: ClickHouse text (no zone marker means UTC) or a
    number of epoch microseconds; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    parsed = iso_datetime(value) if isinstance(value, str) else None
    if parsed is None:
        return None
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def _utc(us: int) -> datetime:
    return datetime.fromtimestamp(us // US, UTC).replace(microsecond=us % US)


def iso_micros(us: int) -> str:
    """RFC 3339 UTC to the microsecond: the request's bounds, and times in checkpoints."""
    return _utc(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sql_time(us: int) -> str:
    """A time as `toDateTime64(text, 6, 'UTC')` reads it."""
    return _utc(us).strftime("%Y-%m-%d %H:%M:%S.%f")


def sql_string(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ------------------------------------------------------------------------------------ SQL


@dataclass(frozen=True, slots=True)
class TableQuery:
    """What is asked of one table: its rows, with the columns and attribute keys it needs."""

    table: str
    source_column: str  # `source` or `source_name`: see sources/supabase.py's probe
    attributes: tuple[str, ...] | None  # None: the whole `log_attributes` map
    condition: str | None = None  # the user's extra SQL, ANDed

    def sql(self, after: tuple[int, str] | None, limit: int = MAX_ROWS) -> str:
        """The page after the row `after` (timestamp, id), or the window's first page."""
        columns = ["id", "timestamp", "event_message", "severity_text"]
        if self.attributes is None:
            columns.append("log_attributes")
        else:
            columns += [f"log_attributes[{sql_string(key)}] AS `{key}`" for key in self.attributes]
        where = [f"{self.source_column} = {sql_string(self.table)}"]
        if after is not None:
            at, row_id = f"toDateTime64({sql_string(sql_time(after[0]))}, 6, 'UTC')", sql_string(after[1])
            where.append(f"(timestamp > {at} OR (timestamp = {at} AND id > {row_id}))")
        if self.condition:
            where.append(f"({self.condition})")
        return (
            f"SELECT {', '.join(columns)} FROM logs WHERE {' AND '.join(where)} "
            f"ORDER BY timestamp ASC, id ASC LIMIT {limit}"
        )


def probe_sql(source_column: str, table: str) -> str:
    """The smallest query that proves the token, the project and the source column's name."""
    return f"SELECT id FROM logs WHERE {source_column} = {sql_string(table)} LIMIT 1"


def names_unknown_column(error: str, column: str) -> bool:
    """Whether a query error says `column` does not exist (ClickHouse: "Unknown expression
    identifier `source`", "Missing columns: 'source'"; code 47)."""
    lowered = error.lower()
    named = re.search(rf"[`'\"]{re.escape(column)}[`'\"]", error) is not None
    return named and any(
        words in lowered for words in ("unknown expression identifier", "missing columns", "unknown identifier",
                                       "unknown column", "no such column", "there's no column")
    )  # fmt: skip


def attribute_key(key: str) -> str:
    """A `log_attributes` key as config may name it: dotted words (`response.status_code`)."""
    if key == WHOLE_MAP or all(_IDENT.fullmatch(part) for part in key.split(".")):
        return key
    raise ValueError(f"expected an attribute key such as response.status_code (or {WHOLE_MAP!r}), got {key!r}")


# ------------------------------------------------------------------------------------ rows


def row_id(row: Mapping[str, Any]) -> str:
    """A row's id; one without (never seen) is named by its content, so it is still sent once."""
    value = row.get("id")
    if isinstance(value, str) and value:
        return value
    return f"crc32:{zlib.crc32(repr(sorted(row.items(), key=lambda item: str(item[0]))).encode()):08x}"


def level_of(severity_text: object, attributes: Mapping[str, Any]) -> str:
    """The normalized level: the first level word the row states (severity_text, a function's
    `level`, Postgres's error_severity; DEBUG1..5 are debug, LOG and NOTICE info), raised to warn
    by a 4xx status and to error by a 5xx; info when it states neither."""
    level = "info"
    for text in (severity_text, *(attributes.get(key) for key in _LEVEL_SOURCES)):
        if isinstance(text, str) and (word := LEVEL_BY_WORD.get(text.strip().lower().rstrip("0123456789"))):
            level = word
            break
    for key in _STATUS_SOURCES:
        status = _number(attributes.get(key))
        if isinstance(status, int) and 100 <= status <= 599:
            by_status = "error" if status >= 500 else "warn" if status >= 400 else "info"
            return max(level, by_status, key=_LEVELS.index)
    return level


def _number(value: object) -> object:
    """`"500"` as 500, `"12.5"` as 12.5; anything else as it is."""
    if isinstance(value, str) and value and len(value) < 32:
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return value
            return number if number == number and abs(number) != float("inf") else value
    return value


def _place(record: dict[str, Any], key: str, value: Any) -> None:
    """An attribute as a field at its dotted path (`request.method` -> {"request": {"method": ..}}),
    or under `log_attributes` by its full key when the path is a name the normalizer owns or is
    already taken by another value."""
    path = key.split(".")
    node = record
    if path[0] not in _RESERVED:
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if type(child) is not dict:
                break
            node = child
        else:
            if path[-1] not in node:
                node[path[-1]] = value
                return
    record.setdefault("log_attributes", {})[key] = value


def record_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the record the pipeline normalizes: `timestamp` as ClickHouse gave it (the parser
    reads zoneless text as UTC), `message` from event_message, `level` from the row's words and
    status, and every non-empty attribute as a field (numbers Supabase stores as text as numbers)."""
    attributes = row.get("log_attributes")
    pairs: Iterable[tuple[str, Any]]
    if isinstance(attributes, Mapping):
        pairs = attributes.items()
    else:
        pairs = ((k, v) for k, v in row.items() if k not in ("id", "timestamp", "event_message", "severity_text"))
    values = {key: _number(value) if key.rsplit(".", 1)[-1] in _NUMERIC else value for key, value in pairs}
    severity = row.get("severity_text")
    message = row.get("event_message")
    record: dict[str, Any] = {
        "id": row_id(row),
        "timestamp": row.get("timestamp"),
        "message": "" if message is None else message,
        "level": level_of(severity, values),
    }
    if isinstance(severity, str) and severity:
        record["severity_text"] = severity
    for key, value in values.items():
        if value not in ("", None):
            _place(record, key, value)
    return record


# ------------------------------------------------------------------------------------ cursor


@dataclass(frozen=True, slots=True)
class Position:
    """A table's checkpoint: rows before `cursor` were all read (as ingested then); windows start
    at `cursor - overlap`, never before `floor`; `seen` are the (timestamp, id) of rows sent that a
    window may return again. Immutable: each delivered page's ack holds one."""

    cursor: int
    floor: int
    seen: tuple[tuple[int, str], ...] = ()

    @classmethod
    def starting_at(cls, us: int) -> Position:
        return cls(us, us)

    def to_state(self) -> dict[str, Any]:
        return {"cursor": iso_micros(self.cursor), "floor": iso_micros(self.floor), "seen": self.seen}

    def implausible(self, now_us: int) -> str | None:
        """Why a checkpointed position cannot be true, if it cannot: trusting a cursor in the future
        would skip every row until then (a cursor is never later than the clock when it is saved)."""
        if self.cursor > now_us + FUTURE_SLACK_US:
            return f"cursor {iso_micros(self.cursor)} is in the future"
        if self.floor > self.cursor:
            return f"floor {iso_micros(self.floor)} is after the cursor {iso_micros(self.cursor)}"
        return None

    @classmethod
    def from_state(cls, state: object) -> Position | None:
        """The position a checkpoint holds; None when it is not one (then the table starts over)."""
        if not isinstance(state, dict):
            return None
        cursor, floor, seen = to_micros(state.get("cursor")), to_micros(state.get("floor")), state.get("seen")
        if cursor is None or floor is None or not isinstance(seen, list):
            return None
        pairs = []
        for pair in seen:
            if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int and isinstance(pair[1], str)):
                return None
            pairs.append((pair[0], pair[1]))
        return cls(cursor, floor, tuple(pairs))


@dataclass(frozen=True, slots=True)
class Window:
    """One request's bounds (epoch µs, both sent) and, inside a window being paged, the last row
    of the previous page: only rows after it (timestamp, then id) are asked for."""

    start: int
    end: int
    after: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Taken:
    """What a page gave: the rows not sent before, in order, and how many were skipped as sent."""

    rows: list[Mapping[str, Any]]
    duplicates: int
    more: bool  # the window (or the 24 h cut of a longer one) has more rows to page through


class TableCursor:
    """One table's reading state: where the next window starts, the page being paged, the ids
    already sent."""

    def __init__(self, position: Position, overlap_us: int, max_ids: int) -> None:
        self.cursor = position.cursor
        self.floor = position.floor
        self.overlap = overlap_us
        self.max_ids = max_ids
        self.seen: dict[str, tuple[int, str]] = {pair[1]: pair for pair in position.seen}
        self.paging: Window | None = None
        self.forgot_before: int | None = None  # set when ids were let go inside the overlap

    def window(self, now_us: int, lag_us: int) -> Window | None:
        """The next request's window: the rest of the one being paged, else a new one up to
        `now - lag` (at most 24 h of it); None when there is nothing to read yet."""
        if self.paging is not None:
            return self.paging
        start = max(self.cursor - self.overlap, self.floor)
        end = min(now_us - lag_us, start + MAX_WINDOW_US)
        return Window(start, end) if end > start else None

    def take(self, window: Window, rows: list[Mapping[str, Any]], limit: int) -> Taken:
        """Note a page of `window` (its rows in timestamp, id order) and return the rows to send."""
        fresh: list[Mapping[str, Any]] = []
        duplicates = 0
        last: tuple[int, str] | None = None
        for row in rows:
            at = to_micros(row.get("timestamp"))
            key = row_id(row)
            last = (window.start if at is None else at, key)
            if at is not None and at < self.floor:
                continue  # before `start_at` (or ids let go): never this table's to send
            if key in self.seen:
                duplicates += 1
                continue
            self.seen[key] = last
            fresh.append(row)
        if len(rows) >= min(limit, MAX_ROWS) and last is not None:
            # A full page: the window is narrowed to start at its last row.
            self.paging = Window(max(last[0], window.start), window.end, last)
            self.cursor = max(self.cursor, last[0])
        else:
            self.paging = None
            self.cursor = max(self.cursor, window.end)
        self._let_go()
        return Taken(fresh, duplicates, self.paging is not None)

    def _let_go(self) -> None:
        """Forget the ids no window can return again; past `max_ids`, the oldest too, whole
        timestamps at a time and only before the page being read, raising `floor` past them."""
        horizon = self.cursor - self.overlap
        if any(at < horizon for at, _ in self.seen.values()):
            self.seen = {key: pair for key, pair in self.seen.items() if pair[0] >= horizon}
        excess = len(self.seen) - self.max_ids
        if excess <= 0:
            return
        times = sorted(at for at, _ in self.seen.values())
        cut = times[excess - 1]
        reading = self.paging.after[0] if self.paging is not None and self.paging.after is not None else self.cursor
        if cut >= reading:
            return  # all of them are needed to page on; kept over the bound until the page moves on
        self.seen = {key: pair for key, pair in self.seen.items() if pair[0] > cut}
        self.floor = max(self.floor, cut + 1)
        self.forgot_before = self.floor

    def position(self) -> Position:
        return Position(self.cursor, self.floor, tuple(self.seen.values()))
