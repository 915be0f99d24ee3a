"""Time handling for parsers: RFC 3339 formatting and the local-time forms Node loggers print.

Formatting is on the hot path, so the `YYYY-MM-DDTHH:MM:SS` part is computed once per second and
the millisecond suffix comes from a table. Local times (Nest's locale-dependent timestamps,
pino-pretty's time of day) are read in the source's zone, with results cached per distinct string
because a busy stream repeats the same second many times.
"""

from __future__ import annotations

import math
import os
import re
import time
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MS_SUFFIX: tuple[str, ...] = tuple(f".{ms:03d}Z" for ms in range(1000))
MAX_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z: RFC 3339 has four year digits
_CACHE_LIMIT = 4096
# Epoch numbers are read by magnitude, on every path: below 1e11 they are seconds (as milliseconds
# they would be before 1973), then milliseconds up to 1e14 (as seconds: after the year 5000), then
# microseconds up to 1e17, then nanoseconds.
EPOCH_MS_MIN = 100_000_000_000
EPOCH_MS_END = 100_000_000_000_000
# How far a line's time may be ahead of its receive time and still be taken as written (the
# writer's clock may run a little ahead of ours); a date-less time further ahead is yesterday's.
FUTURE_SKEW_SECONDS = 300


def second_prefix(sec: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` in UTC for an epoch second (0 <= sec < MAX_MS / 1000)."""
    tm = time.gmtime(sec)
    return f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"


_last: tuple[int, str] = (-1, "")


def format_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds and `Z` for epoch milliseconds in [0, MAX_MS)."""
    global _last
    sec = ms // 1000
    cached = _last  # one tuple read: safe if another thread swaps it meanwhile
    if cached[0] != sec:
        cached = _last = (sec, second_prefix(sec))
    return cached[1] + MS_SUFFIX[ms - sec * 1000]


def epoch_ms(value: object) -> int | None:
    """Epoch milliseconds from a record's time value (s, ms, µs, ns numbers, an ISO string, `{seconds, nanos}`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, dict):  # Cloud Logging's JSON Timestamp (Google's pino config writes it)
        seconds, nanos = value.get("seconds"), value.get("nanos", 0)
        if len(value) > 2 or type(seconds) is not int or type(nanos) is not int:
            return None
        value = seconds * 1000 + nanos // 1_000_000
        return value if 0 <= value < MAX_MS else None
    if isinstance(value, int | float):
        if value != value or value in (math.inf, -math.inf):
            return None
        magnitude = abs(value)
        if magnitude < EPOCH_MS_MIN:  # seconds (pino's unixTime); a float second is not exact in binary
            ms = round(value * 1000)
        elif magnitude < EPOCH_MS_END:
            ms = int(value)
        elif magnitude < EPOCH_MS_END * 1000:  # integer division: exact for any int
            ms = int(value // 1000)
        else:
            ms = int(value // 1_000_000)
        return ms if 0 <= ms < MAX_MS else None
    if isinstance(value, str) and value[:4].isdigit() and (parsed := iso_datetime(value)) is not None:
        ms = int(parsed.timestamp() * 1000)
        return ms if 0 <= ms < MAX_MS else None
    return None


def iso_datetime(value: str) -> datetime | None:
    """An ISO 8601 time as written in logs (10 to 40 characters; no zone marker means UTC), or None."""
    if not 10 <= len(value) <= 40:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def resolve_zone(name: str | None) -> tzinfo:
    """The source's zone: an IANA name, else the machine's zone ($TZ, /etc/localtime), else UTC."""
    if name:
        return ZoneInfo(name)
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        try:
            return ZoneInfo(env)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return UTC


# Intl.DateTimeFormat(undefined, {year, month: '2-digit', day: '2-digit', hour, minute, second}) in the
# common locales: en-US `11/23/2026, 12:47:50 AM`, de-DE `23.11.2026, 01:47:56`, en-GB `23/11/2026, 01:46:17`,
# ja-JP `2026/11/23 1:46:17`, nl-NL `23-11-2026, 01:46:17`, sv-SE `2026-11-23 01:46:17`.
_LOCAL = re.compile(
    r"(\d{1,4})([./-])(\d{1,2})[./-](\d{1,4}),?\s+(\d{1,2}):(\d{2}):(\d{2})(?:[.,]\d+)?"
    r"(?:\s*([AaPp])\.?\s?[Mm]\.?)?"
)


class LocalTimes:
    """Reads local wall-clock strings in one zone, caching the epoch second of each distinct string."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._dates: dict[str, int | None] = {}
        self._days: dict[str, tuple[int, int]] = {}

    def nest(self, text: str) -> int | None:
        """Epoch seconds of a Nest ConsoleLogger timestamp, None when the form is unknown."""
        cached = self._dates.get(text, -1)
        if cached != -1:
            return cached
        result = self._parse_date_time(text)
        if len(self._dates) >= _CACHE_LIMIT:
            self._dates.clear()
        self._dates[text] = result
        return result

    def _parse_date_time(self, text: str) -> int | None:
        match = _LOCAL.fullmatch(text.strip())
        if match is None:
            return None
        a, sep, b, c, hour, minute, second, meridiem = match.groups()
        first, middle, last = int(a), int(b), int(c)
        if len(a) == 4:
            year, month, day = first, middle, last
        elif len(c) == 4:
            year = last
            if meridiem is not None and sep == "/":
                month, day = first, middle  # en-US
            else:
                day, month = first, middle
            if month > 12 >= day:
                month, day = day, month
        else:
            return None
        hours = int(hour)
        if meridiem is not None:
            if not 1 <= hours <= 12:
                return None
            hours = hours % 12 + (12 if meridiem in "Pp" else 0)
        try:
            return int(datetime(year, month, day, hours, int(minute), int(second), tzinfo=self.zone).timestamp())
        except ValueError:
            return None

    def time_of_day(self, text: str, received_at: float) -> int | None:
        """Epoch ms of `HH:MM:SS.mmm` (pino-pretty's default, local time, no date): its latest
        occurrence not after the receive time plus FUTURE_SKEW_SECONDS.

        A line cannot come from the future, so a time of day later than the receive time (beyond
        the skew allowed between the writer's clock and ours) is the day before's: a file
        replayed after midnight, a pipe drained late. Each time of day caches its answer with the
        range of receive times it holds for (until its next occurrence), so a busy stream pays
        one comparison per line.
        """
        if len(text) != 12 or text[2] != ":" or text[5] != ":" or text[8] != ".":
            return None
        hms, millis = text[:8], text[9:]
        if not (hms[:2] + hms[3:5] + hms[6:] + millis).isdigit():
            return None
        limit = int((received_at + FUTURE_SKEW_SECONDS) * 1000) - int(millis)
        span = self._days.get(hms)
        if span is None or not span[0] <= limit < span[1]:
            span = self._occurrence(hms, limit)
            if span is None:
                return None
            if len(self._days) >= _CACHE_LIMIT:
                self._days.clear()
            self._days[hms] = span
        return span[0] + int(millis)

    def _occurrence(self, hms: str, limit: int) -> tuple[int, int] | None:
        """Epoch ms of the latest `hms` at or before `limit` (epoch ms) and of the one after it."""
        hour, minute, second = int(hms[:2]), int(hms[3:5]), int(hms[6:])
        if hour > 23 or minute > 59 or second > 59:
            return None

        def on(day: date) -> int:
            local = datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=self.zone)
            return int(local.timestamp()) * 1000

        day = datetime.fromtimestamp(limit / 1000, self.zone).date()
        if on(day) > limit:
            day -= timedelta(days=1)
        return on(day), on(day + timedelta(days=1))

    def stamp(self, text: str) -> int | None:
        """Epoch ms of a full date-time printed without an offset (pino-pretty `translateTime`)."""
        try:
            parsed = datetime.fromisoformat(text.strip().replace(" +", "+").replace(" -", "-"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self.zone)
        ms = int(parsed.timestamp() * 1000)
        return ms if 0 <= ms < MAX_MS else None
