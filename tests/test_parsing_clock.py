"""Timestamps that do not lie: date-less times are never put in the future, invented milliseconds
never reorder a stream, and a line without a time gets its neighbours' time, marked as estimated.

Every time here is built from the clock: corpus captures are moved, whole seconds at a time, to
just before now (or to hours ago, for a replay), so the tests mean the same on any date.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from shipper.config import RedactConfig, SourceConfig, config_from_dict
from shipper.event import Event
from shipper.parsing import TIME_ESTIMATED, Processor, build_processor
from shipper.parsing.clock import FUTURE_SKEW_SECONDS
from shipper.workers import SinkRoute, WorkerPool, feed_setup
from sinks import build_sink
from tests.conftest import CORPUS, needs_corpus

NEST_STAMP = re.compile(rb"(\d\d)/(\d\d)/(\d{4}), (\d{1,2}):(\d\d):(\d\d) ([AP]M)")
ANSI = re.compile(rb"\x1b\[[0-9;]*m")


def lines_of(name: str) -> list[bytes]:
    return (CORPUS / name).read_bytes()[:-1].split(b"\n")


def processor(timezone: str = "UTC") -> Processor:
    config = SourceConfig(type="file", timezone=timezone)
    return build_processor("api", config, host="h", redact=RedactConfig())


def parse(lines: list[bytes], received: float, timezone: str = "UTC") -> list[Event]:
    proc = processor(timezone)
    return proc.parse(lines, None, received) + proc.flush(received, force=True)


def ms_of(event: Event) -> int:
    return int(datetime.fromisoformat(event.fields["timestamp"]).timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- corpus captures moved in time


def nest_second(match: re.Match[bytes]) -> int:
    """Epoch second of a corpus Nest stamp (en-US, captured in UTC)."""
    month, day, year, hour, minute, second, meridiem = match.groups()
    hours = int(hour) % 12 + (12 if meridiem == b"PM" else 0)
    return int(datetime(int(year), int(month), int(day), hours, int(minute), int(second), tzinfo=UTC).timestamp())


def en_us(second: int) -> bytes:
    t = datetime.fromtimestamp(second, UTC)
    return f"{t:%m/%d/%Y}, {t.hour % 12 or 12}:{t:%M:%S} {'AM' if t.hour < 12 else 'PM'}".encode()


def moved_nest(line: bytes, seconds: int) -> bytes:
    return NEST_STAMP.sub(lambda m: en_us(nest_second(m) + seconds), line, count=1)


def moved_record(line: bytes, key: str, ms: int) -> bytes:
    record = orjson.loads(line)
    record[key] += ms
    return orjson.dumps(record)


def is_nest(event: Event) -> bool:
    return ANSI.sub(b"", event.raw).startswith(b"[Nest] ")


def nest_blocks(lines: list[bytes]) -> list[list[bytes]]:
    """A Nest text capture cut into its events: header lines (and the crash printout) with what follows."""
    blocks: list[list[bytes]] = []
    for line in lines:
        plain = ANSI.sub(b"", line)
        if plain.startswith((b"[Nest] ", b"file:///")) or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return blocks


def mixed_stream(last_second: int) -> list[bytes]:
    """Nest on the Fastify adapter as `nest-fastify-mixed.log` has it (FORMATS.md §6): coloured
    Nest blocks (one-second times) and pino lines (milliseconds) of the same seconds in one
    stream, Node's crash printout last; the last Nest second moved to `last_second`."""
    blocks = nest_blocks(lines_of("nest-text-color.log"))
    timed = [block for block in blocks if NEST_STAMP.search(block[0])]
    seconds = [nest_second(m) for block in timed if (m := NEST_STAMP.search(block[0]))]
    shift = last_second - seconds[-1]
    pino_by_second: dict[int, list[bytes]] = {}
    for line in lines_of("fastify-pino.ndjson"):
        pino_by_second.setdefault(orjson.loads(line)["time"] // 1000, []).append(line)
    busiest = sorted(pino_by_second, key=lambda s: -len(pino_by_second[s]))
    distinct = sorted(set(seconds))
    out: list[bytes] = []
    for second, source_second in zip(distinct, busiest, strict=False):
        here = [block for block, s in zip(timed, seconds, strict=True) if s == second]
        moved = (second + shift - source_second) * 1000
        pino = [moved_record(line, "time", moved) for line in pino_by_second[source_second][:150]]
        for index, block in enumerate(here):
            out.extend(moved_nest(line, shift) for line in block)
            out.extend(pino[index * len(pino) // len(here) : (index + 1) * len(pino) // len(here)])
    for block in blocks:
        if block not in timed:
            out.extend(block)
    return out


def invented_inversions(events: list[Event]) -> list[tuple[str, str]]:
    """Neighbours sharing a second whose later (a one-second Nest time) sorts before the earlier."""
    return [
        (before.fields["timestamp"], after.fields["timestamp"])
        for before, after in pairwise(events)
        if is_nest(after)
        and after.fields["timestamp"][:19] == before.fields["timestamp"][:19]
        and after.fields["timestamp"] < before.fields["timestamp"]
    ]


# ---------------------------------------------------------------- date-less times


def on(day: date, hms: str, zone: str) -> int:
    """Epoch ms of `HH:MM:SS.mmm` local time in `zone` on `day`."""
    clock = day_time.fromisoformat(hms)
    return int(datetime.combine(day, clock, tzinfo=ZoneInfo(zone)).timestamp() * 1000)


@needs_corpus
def test_pino_pretty_times_are_never_put_after_their_receive_time() -> None:
    """The capture's `[00:47:26.845]` read at 14:15 (or any other hour of the day): earlier that
    day or the day before, never the next day."""
    lines = lines_of("fastify-pretty.log")
    for hour in range(24):
        received = datetime.now(UTC).replace(hour=hour, minute=15, second=0, microsecond=0).timestamp()
        events = parse(lines, received)
        assert len(events) == 747
        limit = int((received + FUTURE_SKEW_SECONDS) * 1000)
        late = [e.fields["timestamp"] for e in events if ms_of(e) > limit]
        assert not late, f"read at {iso(int(received * 1000))}: {late[:3]}"
        assert all(ms_of(e) > limit - 86_400_000 for e in events)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/New_York"])
def test_a_days_pretty_output_read_just_after_midnight_is_yesterdays(zone: str) -> None:
    """Times across the whole day before, read a second after local midnight (a file replayed, a
    pipe drained late): all yesterday's, except the one printed after midnight."""
    tz = ZoneInfo(zone)
    midnight = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    received = midnight.timestamp() + 1
    today, yesterday = midnight.date(), midnight.date() - timedelta(days=1)
    day = [f"{hour:02d}:30:00.000" for hour in range(24)] + ["23:59:59.900"]
    lines = [f"[{hms}] INFO (12): at {hms}".encode() for hms in [*day, "00:00:00.250"]]
    events = parse(lines, received, zone)
    expected = [iso(on(yesterday, hms, zone)) for hms in day] + [iso(on(today, "00:00:00.250", zone))]
    assert [e.fields["timestamp"] for e in events] == expected


def test_a_time_slightly_ahead_of_the_receive_time_is_clock_skew_not_yesterday() -> None:
    received_day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    received = received_day.timestamp()
    ahead = timedelta(seconds=FUTURE_SKEW_SECONDS)
    near = (received_day + ahead / 2).strftime("%H:%M:%S.000")
    far = (received_day + ahead * 2).strftime("%H:%M:%S.000")
    lines = [f"[{near}] INFO (1): skewed clock".encode(), f"[{far}] INFO (1): yesterday's".encode()]
    skewed, older = parse(lines, received)
    today, yesterday = received_day.date(), received_day.date() - timedelta(days=1)
    assert skewed.fields["timestamp"] == iso(on(today, near, "UTC"))
    assert older.fields["timestamp"] == iso(on(yesterday, far, "UTC"))


# ---------------------------------------------------------------- invented milliseconds


@needs_corpus
def test_one_second_nest_times_never_sort_before_the_pino_line_above_them() -> None:
    """Nest text (one-second times) and pino JSON (milliseconds) in one stream: a Nest event
    lands at or after the previous event of its second, and Nest events keep arrival order."""
    now = time.time()
    lines = mixed_stream(int(now) - 5)
    events = parse(lines, now)
    nest = [e for e in events if is_nest(e)]
    assert len(nest) == 71 and len(events) > 300
    assert invented_inversions(events) == []
    stamps = [e.fields["timestamp"] for e in nest]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(ms_of(e) <= (now + FUTURE_SKEW_SECONDS) * 1000 for e in events)
    # Only the sub-second part is made up: the second is the one printed.
    for event in nest:
        match = NEST_STAMP.search(event.raw)
        assert match is not None and ms_of(event) // 1000 == nest_second(match)


@needs_corpus
async def test_a_parse_worker_keeps_the_stream_clock_across_requests_as_the_agent_does() -> None:
    """The same mixed stream in many chunks through a real parse worker (per-feed state lives
    there between requests) and through the agent's processor: the same timestamps and marks,
    and no inversion."""
    table = {
        "sources": {"api": {"type": "stdin", "timezone": "UTC"}},
        "sinks": {"dd": {"type": "datadog", "inputs": ["api"], "api_key": "k" * 32}},
    }
    config = config_from_dict(table, environ={})
    sink = build_sink("dd", config.sinks["dd"])
    route = SinkRoute("dd", None, sink.preparer(), None)  # type: ignore[arg-type]
    setup = feed_setup("api", config.sources["api"], host="h", redact=config.redact, fields=None, routes=[route])
    now = time.time()
    lines = mixed_stream(int(now) - 3600)  # a replay: an hour old
    chunks = [lines[start : start + 37] for start in range(0, len(lines), 37)]
    agent = build_processor("api", config.sources["api"], host="h", redact=config.redact)
    in_agent: list[Event] = []
    pool = WorkerPool(1, "warning", "json", on_death=lambda: None)
    await pool.start()
    try:
        remote = pool.parser(setup)
        logs: list[dict[str, Any]] = []
        for index, chunk in enumerate(chunks):
            received = now + index * 0.5
            in_agent += agent.parse(chunk, None, received)
            _, _, routed = await (await remote.parse(b"\n".join(chunk), None, received))
            logs += [orjson.loads(line) for _, ndjson, _ in routed for line in ndjson.splitlines()]
        _, _, routed = await (await remote.flush(now + len(chunks), True, []))
        logs += [orjson.loads(line) for _, ndjson, _ in routed for line in ndjson.splitlines()]
        in_agent += agent.flush(now + len(chunks), force=True)
    finally:
        await pool.close()
    assert invented_inversions(in_agent) == []
    assert [(log["timestamp"], log.get(TIME_ESTIMATED)) for log in logs] == [
        (e.fields["timestamp"], e.fields.get(TIME_ESTIMATED)) for e in in_agent
    ]
    assert logs[-1][TIME_ESTIMATED] is True and logs[-1]["timestamp"] == logs[-2]["timestamp"]


# ---------------------------------------------------------------- lines without a time


@needs_corpus
@pytest.mark.parametrize("name", ["nest-text-plain.log", "nest-json.ndjson"])
def test_a_replayed_files_crash_printout_gets_the_time_of_the_event_before_it(name: str) -> None:
    """A file written five hours ago, read now: Node's crash printout (no time of its own) is
    stamped with the event before it, not with the read time, and says that it is estimated."""
    now = time.time()
    lines = lines_of(name)
    if name.endswith(".ndjson"):
        last = max(orjson.loads(line)["timestamp"] for line in lines if line.startswith(b"{"))
        shift = (int(now) - 5 * 3600) * 1000 - last
        lines = [moved_record(line, "timestamp", shift) if line.startswith(b"{") else line for line in lines]
    else:
        last = max(nest_second(m) for line in lines if (m := NEST_STAMP.search(line)))
        lines = [moved_nest(line, int(now) - 5 * 3600 - last) for line in lines]
    events = parse(lines, now)
    crash = events[-1]
    assert b"Node.js v20" in crash.raw and b"[Nest]" not in crash.raw and not crash.raw.startswith(b"{")
    assert crash.fields["timestamp"] == events[-2].fields["timestamp"]
    assert ms_of(crash) < (now - 4 * 3600) * 1000
    assert crash.fields[TIME_ESTIMATED] is True
    assert not any(TIME_ESTIMATED in e.fields for e in events[:-1])


def test_timeless_lines_of_a_replay_read_after_a_pause_keep_their_neighbours_time() -> None:
    """A replay slowed by a busy sink: the next chunk is read two minutes later, and the plain text
    and JSON without a time in it still take the stream's last time."""
    now = time.time()
    written = int((now - 3 * 3600) * 1000)
    proc = processor()
    first = proc.parse([orjson.dumps({"level": 30, "time": written, "pid": 1, "hostname": "h", "msg": "a"})], None, now)
    later = proc.parse([b"plain text from console.log", b'{"msg": "a record without a time"}'], None, now + 120)
    later += proc.flush(now + 120, force=True)
    assert [e.fields["timestamp"] for e in first + later] == [iso(written)] * 3
    assert [e.fields.get(TIME_ESTIMATED) for e in first + later] == [None, True, True]


def test_timeless_lines_of_a_live_stream_take_their_receive_time() -> None:
    """Read as written (the last time was read within milliseconds): a line with no time gets
    about its own receive time, a stream that never carried a time the receive time exactly."""
    proc = processor()
    now = time.time()
    written = int(now * 1000) + 1000
    pino = orjson.dumps({"level": 30, "time": written, "pid": 1, "hostname": "h", "msg": "a"})
    alone, _ = proc.parse([b"starting up"], None, now) + proc.parse([pino], None, now + 1.02)
    assert alone.fields["timestamp"] == iso(int(now * 1000)) and alone.fields[TIME_ESTIMATED] is True
    proc.parse([b"a console.log line three seconds later"], None, now + 4.02)
    (later,) = proc.flush(now + 5, force=True)
    assert written + 2900 <= ms_of(later) <= (now + 4.02) * 1000
    assert later.fields[TIME_ESTIMATED] is True
