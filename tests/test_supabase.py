"""The Supabase logs source in the agent's process, against the fake Management API (tests/fakes/supabase_api.py):
the polling plan (windows, paging, dedupe, the 24 h and 1,000-row limits), the rate budget and 429s,
errors inside a 200, refusals, the source column's probe, checkpoints, and rows as normalized events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.agent import Agent
from shipper.config import config_from_dict, config_warnings
from shipper.errors import ConfigError
from shipper.pipeline.channel import Channel
from shipper.source import SourceContext
from sinks import build_sink
from sources import build_source
from sources.supabase import RateBudget
from sources.supabase_logs import MAX_ROWS, Position, TableCursor, iso_micros, record_of
from tests.driving import one_sink_context, parse_worker
from tests.fakes.supabase_api import US, Seen, SupabaseLogsApi, clickhouse_text, now_us, rows
from tests.test_record_feed import logs, parts_of

TOKEN = "sbp_test_5f0c2a9e81d34b7aa6c1e0f9d2b84c17e3a05d66"
REF = "abcdefghijklmnopqrst"


def minimal(tmp_path: Path, **source: Any) -> dict[str, Any]:
    """A config of a Supabase source with only what it requires (and `source`), and a file sink."""
    table = {"type": "supabase", "project_ref": REF, "access_token": TOKEN, **source}
    return {"sources": {"sb": table}, "sinks": {"out": {"type": "file", "inputs": ["sb"], "path": str(tmp_path / "o")}}}


def settings(api: SupabaseLogsApi, **overrides: Any) -> dict[str, Any]:
    """A source table for the fake: quick polls, a generous budget, short backoffs."""
    return {
        "type": "supabase",
        "project_ref": api.ref,
        "access_token": api.token,
        "api_url": api.url,
        "start_at": iso_micros(now_us() - 900 * US),
        "poll_interval": 0.2,
        "lag": 0.5,
        "overlap": 30,
        "requests_per_minute": 6000,
        "retry": {"initial_backoff": "50ms", "max_backoff": "200ms"},
        "request_timeout": 2,
        **overrides,
    }


def config_of(tmp_path: Path, source: dict[str, Any], workers: int = 0) -> dict[str, Any]:
    return {
        "agent": {"state_dir": str(tmp_path / "state"), "parse_workers": workers, "shutdown_timeout": "5s"},
        "sources": {"sb": source},
        "sinks": {"out": {"type": "file", "inputs": ["sb"], "path": str(tmp_path / "out.ndjson")}},
    }


def delivered(tmp_path: Path) -> list[dict[str, Any]]:
    try:
        data = (tmp_path / "out.ndjson").read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in data.splitlines()]


async def run_agent(
    tmp_path: Path, source: dict[str, Any], until: Callable[[], bool], timeout: float = 20, workers: int = 0
) -> tuple[int, Agent]:
    """Run an agent with `source` and a file sink until `until()` holds, then stop it as SIGTERM does."""
    agent = Agent(config_from_dict(config_of(tmp_path, source, workers), environ={}))
    task = asyncio.create_task(agent.run())
    deadline = time.monotonic() + timeout
    while not until() and not task.done():
        if time.monotonic() > deadline:
            agent.request_stop("SIGTERM")
            await asyncio.wait_for(task, 20)
            raise AssertionError(f"timed out; {len(delivered(tmp_path))} events delivered")
        await asyncio.sleep(0.05)
    agent.request_stop("SIGTERM")
    return await asyncio.wait_for(task, 20), agent


def is_probe(seen: Seen) -> bool:
    return seen.sql.startswith("SELECT id FROM logs WHERE") and seen.sql.endswith("LIMIT 1")


def ids(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(event["id"] for event in events)


# ------------------------------------------------------------------------------------ the fake itself


async def test_the_fake_enforces_what_wire_md_says(tmp_path: Path) -> None:
    """A fake that ignored these would prove nothing about a source that breaks them."""
    import aiohttp

    async with SupabaseLogsApi(TOKEN, limit=9, window=30) as api, aiohttp.ClientSession() as http:
        api.add(rows("edge_logs", 1500, now_us() - 3 * 3600 * US, 1000))  # 1.5 s of rows, three hours ago
        api.add(rows("edge_logs", 3, now_us() - 20 * US, US, prefix="recent"))
        url = f"{api.url}/v1/projects/{api.ref}/analytics/endpoints/logs"

        async def get(sql: str, **params: str) -> tuple[int, Any]:
            async with http.get(url, params={"sql": sql, **params}, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                return r.status, await r.json()

        day_ago = {"iso_timestamp_start": iso_micros(now_us() - 86000 * US), "iso_timestamp_end": iso_micros(now_us())}
        status, body = await get("SELECT id FROM logs WHERE source = 'edge_logs'", **day_ago)
        assert status == 200 and body["error"] is None and len(body["result"]) == MAX_ROWS  # no LIMIT: the cap
        status, body = await get("SELECT id FROM logs ORDER BY timestamp LIMIT 5000", **day_ago)
        assert len(body["result"]) == MAX_ROWS
        # One bound alone: the last minute only (the hours-old rows are not there).
        status, body = await get("SELECT id FROM logs", iso_timestamp_start=day_ago["iso_timestamp_start"])
        assert [row["id"][:6] for row in body["result"]] == ["recent"] * 3
        status, body = await get(
            "SELECT id FROM logs",
            iso_timestamp_start=iso_micros(now_us() - 25 * 3600 * US),
            iso_timestamp_end=iso_micros(now_us()),
        )
        assert status == 400 and "24 hours" in body["error"]["message"]
        for sql, words in [
            ("select * from logs", "select *"),
            ("SELECT count(*) FROM logs", "count()"),
            ("SELECT id FROM logs WHERE source_name = 'edge_logs'", "Unknown expression identifier `source_name`"),
            ("SELECT id FROM logs WHERE log_attributes['response.status_code'] >= 500", "no supertype"),
        ]:
            status, body = await get(sql, **day_ago)
            assert status == 200 and body["result"] == [] and words in body["error"], sql  # an error inside a 200
        status, body = await get("SELECT count() AS `n` FROM logs WHERE source = 'edge_logs'", **day_ago)
        assert body["result"] == [{"n": 1503}]
        async with http.get(url, params={"sql": "SELECT id FROM logs", **day_ago}) as unauthenticated:
            assert unauthenticated.status == 401
        status, body = await get("SELECT id FROM logs", **day_ago)
        assert status == 429  # the tenth request of this window
        assert api.requests(429)[0].status == 429


def test_the_fakes_sql_is_evaluated_not_ignored() -> None:
    from tests.fakes.supabase_api import Query

    table = [
        {"id": f"r{i}", "timestamp": now_us() + i, "event_message": m, "severity_text": s, "source": src,
         "log_attributes": {"response.status_code": code}}
        for i, (m, s, src, code) in enumerate(
            [("a", "ERROR", "edge_logs", "500"), ("b", "INFO", "edge_logs", "200"), ("c", "LOG", "auth_logs", "404")]
        )
    ]  # fmt: skip
    from tests.fakes.supabase_api import Timestamp

    for row in table:
        row["timestamp"] = Timestamp(row["timestamp"])
    query = Query(
        "SELECT id, log_attributes['response.status_code'] AS `status` FROM logs "
        "WHERE (source = 'edge_logs' OR severity_text IN ('LOG')) "
        "AND toInt32OrZero(log_attributes['response.status_code']) >= 300 "
        "ORDER BY timestamp DESC, id ASC LIMIT 10",
        "source",
    )
    assert query.run(table) == [{"id": "r2", "status": "404"}, {"id": "r0", "status": "500"}]
    after = clickhouse_text(table[0]["timestamp"]).replace("T", " ")
    keyset = Query(
        f"SELECT id FROM logs WHERE (timestamp > '{after}' OR (timestamp = '{after}' AND id > 'r0'))", "source"
    )
    assert keyset.run(table) == [{"id": "r1"}, {"id": "r2"}]


# ------------------------------------------------------------------------------------ rows as events


# An hour ago, on a whole second: each row's time is this plus its offset in µs.
SECOND_US = (now_us() // US - 3600) * US


def at(offset_us: int) -> str:
    """A row's `timestamp` as the endpoint gives it: ClickHouse text, no zone marker."""
    return clickhouse_text(SECOND_US + offset_us)


def normalized_time(offset_us: int) -> str:
    """What shipper makes of it: RFC 3339 UTC to the millisecond, `Z`."""
    moment = SECOND_US + offset_us
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment // US)) + f".{moment % US // 1000:03d}Z"


ROWS = [
    # ClickHouse text, no zone: UTC; a Postgres ERROR; a function's level; a 5xx and a 4xx; DEBUG3; LOG.
    {"id": "a", "timestamp": at(215_000), "event_message": "relation does not exist",
     "severity_text": "ERROR", "parsed.sql_state_code": "42P01"},
    {"id": "b", "timestamp": at(216_999), "event_message": "boot", "severity_text": "",
     "function_id": "f-1", "level": "warning", "execution_id": "e-1"},
    {"id": "c", "timestamp": at(1_000_001), "event_message": "POST /rest/v1/orders",
     "severity_text": "INFO", "request.method": "POST", "request.path": "/rest/v1/orders",
     "response.status_code": "503"},
    {"id": "d", "timestamp": at(2_500_000)[:-5], "event_message": "GET /x", "severity_text": "",  # `.5`
     "response.status_code": "404", "request.method": ""},
    {"id": "e", "timestamp": at(3_000_000), "event_message": "checkpoint", "severity_text": "DEBUG3"},
    {"id": "f", "timestamp": at(4_000_000), "event_message": "connection authorized: Bearer "
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "severity_text": "LOG", "msg": "an attribute the normalizer would read as the message"},
]  # fmt: skip


async def normalized(tmp_path: Path, workers: bool) -> list[dict[str, Any]]:
    config = config_from_dict(minimal(tmp_path), environ={})
    channel = Channel("out", 1 << 30, "block")
    sink = build_sink("out", config.sinks["out"])

    async def push(pool: Any) -> None:
        context = one_sink_context(config, "sb", sink, channel, tmp_path, pool)
        feed = context.open_record_feed(
            fields={"supabase_table": "postgres_logs", "project_ref": "abcdefghijklmnopqrst"}
        )
        await feed.push_records([record_of(row) for row in ROWS], "cursor")
        await feed.flush(force=True)

    if workers:
        async with parse_worker() as pool:
            await push(pool)
    else:
        await push(None)
    return logs(await parts_of(channel))


@pytest.mark.parametrize("workers", [False, True], ids=["in-agent", "parse-worker"])
async def test_rows_become_normalized_redacted_events(tmp_path: Path, workers: bool) -> None:
    got = {event["id"]: event for event in await normalized(tmp_path, workers)}
    a, b, c, d, f = (got[key] for key in "abcdf")
    assert a["timestamp"] == normalized_time(215_000)  # zoneless ClickHouse text read as UTC, to the ms
    assert b["timestamp"] == normalized_time(216_000) and d["timestamp"] == normalized_time(2_500_000)
    assert ROWS[3]["timestamp"].endswith(".5") and c["timestamp"] == normalized_time(1_000_000)
    assert [got[key]["level"] for key in "abcdef"] == ["error", "warn", "error", "warn", "debug", "info"]
    assert a["message"] == "relation does not exist" and a["severity_text"] == "ERROR"
    assert a["parsed"] == {"sql_state_code": "42P01"} and a["supabase_table"] == "postgres_logs"
    assert a["project_ref"] == "abcdefghijklmnopqrst" and a["source"] == "sb"
    assert b["function_id"] == "f-1" and b["execution_id"] == "e-1" and b["log_attributes"] == {"level": "warning"}
    assert c["request"] == {"method": "POST", "path": "/rest/v1/orders"} and c["response"] == {"status_code": 503}
    assert "request" not in d and d["response"] == {"status_code": 404}  # empty attributes are left out
    assert f["message"].startswith("connection authorized: Bearer ") and "eyJzdWIi" not in orjson.dumps(f).decode()
    assert f["log_attributes"] == {"msg": "an attribute the normalizer would read as the message"}
    assert "shipper.time_estimated" not in a


# ------------------------------------------------------------------------------------ the plan


def page(cursor: TableCursor, table: list[tuple[int, str]], now: int, lag: int, limit: int) -> tuple[Any, list[str]]:
    """One request against a list of (timestamp, id) rows, as the endpoint answers it."""
    window = cursor.window(now, lag)
    assert window is not None
    found = sorted(
        r for r in table if window.start <= r[0] <= window.end and (window.after is None or r > window.after)
    )
    answer = [{"id": key, "timestamp": clickhouse_text(at)} for at, key in found[:limit]]
    taken = cursor.take(window, answer, limit)
    return taken, [row["id"] for row in taken.rows]


def test_full_pages_narrow_the_window_and_ties_are_paged_by_id() -> None:
    start = now_us() - 600 * US
    # 7 rows at one microsecond, then 5 more: pages of 3 must walk the tie by id.
    table = [(start + 10, f"t{i}") for i in range(7)] + [(start + 20 + i, f"u{i}") for i in range(5)]
    cursor = TableCursor(Position.starting_at(start), 30 * US, 2000)
    sent: list[str] = []
    for _ in range(10):
        taken, got = page(cursor, table, now_us(), US, 3)
        sent += got
        if not taken.more:
            break
    assert sent == sorted(key for _, key in table)


def test_the_overlap_reads_again_but_sends_once_and_catches_late_rows() -> None:
    start = now_us() - 600 * US
    table = [(start + i * US, f"r{i}") for i in range(100)]
    cursor = TableCursor(Position.starting_at(start), 300 * US, 2000)
    _, first = page(cursor, table, start + 200 * US, 0, MAX_ROWS)
    late = (start + 150 * US, "late")  # written before the cursor, ingested after the first read
    table.append(late)
    taken, second = page(cursor, table, start + 210 * US, 0, MAX_ROWS)
    assert len(first) == 100 and second == ["late"] and taken.duplicates == 100


def test_remembered_ids_are_bounded_and_none_is_sent_twice() -> None:
    start = now_us() - 600 * US
    table = [(start + i * 1000, f"r{i:05d}") for i in range(3000)]  # 3 s of rows, all within the overlap
    cursor = TableCursor(Position.starting_at(start), 300 * US, 2000)
    sent: Counter[str] = Counter()
    for _ in range(20):
        _, got = page(cursor, table, start + 10 * US, 0, MAX_ROWS)
        sent.update(got)
        assert len(cursor.seen) <= 2000 + MAX_ROWS
    assert set(sent) == {key for _, key in table} and max(sent.values()) == 1
    assert len(cursor.seen) <= 2000 and cursor.forgot_before is not None and cursor.floor > start


def test_a_position_survives_its_checkpoint() -> None:
    position = Position(now_us(), now_us() - 5, ((now_us() - 3, "x"), (now_us() - 2, "y")))
    state = orjson.loads(orjson.dumps(position.to_state()))
    assert Position.from_state(state) == position
    assert Position.from_state({"cursor": "garbage", "floor": 1, "seen": []}) is None


def test_the_rate_budget_spaces_requests_and_waits_out_a_reset() -> None:
    now = [1000.0]
    budget = RateBudget(3, clock=lambda: now[0])
    for _ in range(3):
        assert budget.wait() == 0
        budget.spend()
    assert budget.wait() == 60.0  # a fourth in the same minute waits for the first to age out
    now[0] += 60.0
    assert budget.wait() == 0
    budget.observe(429, {"X-RateLimit-Reset": "17"})
    assert budget.wait() == 17.0
    now[0] += 17.0
    budget.observe(200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4"})  # the last one: wait before asking
    assert budget.wait() == 4.0
    budget.observe(429, {})  # no reset said: a whole window
    assert budget.wait() == 60.0


# ------------------------------------------------------------------------------------ the source, in an agent


async def test_every_row_of_every_table_once_with_paging_and_only_what_is_needed(tmp_path: Path) -> None:
    async with SupabaseLogsApi(TOKEN, limit=10_000) as api:
        edge = api.add(rows("edge_logs", 2600, now_us() - 600 * US, 100_000, attributes={"request.method": "GET"}))
        fn = api.add(rows("function_logs", 40, now_us() - 300 * US, US, attributes={"level": "error"}))
        auth = api.add(rows("auth_logs", 5, now_us() - 200 * US, US))
        other = api.add(rows("storage_logs", 50, now_us() - 200 * US, US))  # not followed
        expected = {row.id for row in edge + fn + auth}
        source = settings(api, tables=["edge_logs", "function_logs", "auth_logs"])
        code, _ = await run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= len(expected))
    assert code == 0
    got = ids(delivered(tmp_path))
    assert set(got) == expected and max(got.values()) == 1 and not {row.id for row in other} & set(got)
    polls = [seen for seen in api.requests() if "source = 'edge_logs'" in seen.sql and not is_probe(seen)]
    assert all(seen.start and seen.end for seen in api.requests())  # both bounds, always
    assert all("LIMIT 1000" in seen.sql and "ORDER BY timestamp ASC, id ASC" in seen.sql for seen in polls)
    assert sum(seen.rows == MAX_ROWS for seen in polls) >= 2  # full pages, then narrowed windows
    paged = [seen for seen in polls if "id >" in seen.sql]
    assert paged and all(seen.start and seen.start > polls[0].start for seen in paged)
    # Only the attribute keys a table needs: never the whole map unless asked.
    assert all("log_attributes[" in seen.sql and "log_attributes," not in seen.sql for seen in polls)


async def test_a_start_days_ago_is_read_in_windows_of_at_most_a_day(tmp_path: Path) -> None:
    async with SupabaseLogsApi(TOKEN, limit=10_000) as api:
        old = api.add(rows("auth_logs", 3, now_us() - 50 * 3600 * US, US))
        new = api.add(rows("auth_logs", 3, now_us() - 60 * US, US, prefix="new"))
        source = settings(api, tables=["auth_logs"], start_at=iso_micros(now_us() - 72 * 3600 * US))
        code, _ = await run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= 6)
    assert code == 0 and set(ids(delivered(tmp_path))) == {row.id for row in old + new}
    windows = [(seen.start, seen.end) for seen in api.requests() if seen.start and seen.end and "auth_logs" in seen.sql]
    spans = [(_us(end) - _us(start)) / US / 3600 for start, end in windows]
    assert max(spans) <= 24 and len([span for span in spans if span > 23]) >= 2  # caught up a day at a time
    assert api.requests(400) == []


def _us(text: str) -> int:
    from sources.supabase_logs import to_micros

    value = to_micros(text)
    assert value is not None
    return value


@pytest.mark.parametrize("column", ["source", "source_name"])
async def test_the_source_column_is_probed_once_either_way(tmp_path: Path, column: str) -> None:
    async with SupabaseLogsApi(TOKEN, source_column=column, limit=10_000) as api:
        sent = api.add(rows("edge_logs", 20, now_us() - 60 * US, US))
        code, _ = await run_agent(tmp_path, settings(api, tables=["edge_logs"]), lambda: len(delivered(tmp_path)) >= 20)
    assert code == 0 and set(ids(delivered(tmp_path))) == {row.id for row in sent}
    probes = [seen for seen in api.requests() if is_probe(seen)]
    assert len(probes) == (1 if column == "source" else 2)  # `source` first, as the API reference names it
    assert all(f"{column} = 'edge_logs'" in seen.sql for seen in api.requests() if "LIMIT 1000" in seen.sql)


async def test_neither_source_column_is_a_clear_unhealthy_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SupabaseLogsApi(TOKEN, source_column="log_source", limit=10_000) as api:
        api.add(rows("edge_logs", 5, now_us() - 60 * US, US))
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="shipper"):
            source = settings(api, tables=["edge_logs"])
            code, agent = await run_agent(tmp_path, source, lambda: time.monotonic() - started > 1.5)
    assert code == 0 and delivered(tmp_path) == []
    [line] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    detail = line.__dict__["detail"]
    assert line.getMessage().startswith("source is unhealthy") and line.__dict__["reason"] == "no_source_column"
    assert "neither `source` nor `source_name`" in detail and "sources.sb.source_column" in detail
    health = agent.contexts["sb"].health
    assert health is not None and health.state == "failing"


async def test_the_rate_limit_headers_are_kept_and_a_429_waits_for_the_reset(tmp_path: Path) -> None:
    async with SupabaseLogsApi(TOKEN, limit=6, window=2.0) as api:
        sent = api.add(rows("edge_logs", 6500, now_us() - 120 * US, 15_000))  # seven pages
        sent += api.add(rows("function_logs", 30, now_us() - 60 * US, US))
        api.throttle_for(1.5)  # the budget spent elsewhere (`shipper tail`, a script) as the source starts
        source = settings(api, tables=["edge_logs", "function_logs"])  # it believes it may ask 6000 a minute
        code, _ = await run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= len(sent), timeout=30)
    assert code == 0
    got = ids(delivered(tmp_path))
    assert set(got) == {row.id for row in sent} and max(got.values()) == 1  # no window lost or skipped
    seen = api.requests()
    [throttled] = [index for index, request in enumerate(seen) if request.status == 429]
    assert seen[throttled + 1].at - seen[throttled].at >= 1.4  # asked again only after the reset
    # Then X-RateLimit-Remaining: 0 held each next request until the window's reset: never a 429 again,
    # never more than the fake's 6 in one of its windows.
    assert len(seen) > 10 and all(request.status == 200 for request in seen[throttled + 1 :])


async def test_an_error_inside_a_200_is_an_error_not_an_empty_window(tmp_path: Path) -> None:
    async with SupabaseLogsApi(TOKEN, limit=10_000) as api:
        sent = api.add(rows("edge_logs", 30, now_us() - 60 * US, US))
        api.error_next(4)  # the probe and the first polls: HTTP 200, empty result, `error` set
        api.fail_next(2, 503)
        api.delay_next(1, 3.0)  # over request_timeout
        code, agent = await run_agent(
            tmp_path, settings(api, tables=["edge_logs"]), lambda: len(delivered(tmp_path)) >= 30, timeout=30
        )
    assert code == 0 and set(ids(delivered(tmp_path))) == {row.id for row in sent}
    assert max(ids(delivered(tmp_path)).values()) == 1
    statuses = [(seen.status, seen.error is not None) for seen in api.requests()]
    assert statuses.count((200, True)) == 4 and statuses.count((503, False)) == 2  # each one retried
    health = agent.contexts["sb"].health
    assert health is not None and health.state == "ok" and health.last_error is not None


async def test_a_refused_token_is_one_clear_line_and_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sources.supabase.REFUSED_RETRY", 0.3)
    async with SupabaseLogsApi("sbp_the_right_one", limit=10_000) as api:
        sent = api.add(rows("auth_logs", 10, now_us() - 60 * US, US))
        source = settings(api, tables=["auth_logs"], access_token=TOKEN)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="shipper"):
            task = asyncio.create_task(run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= 10, timeout=20))
            while len(api.requests(401)) < 3 and time.monotonic() - started < 10:
                await asyncio.sleep(0.05)
            api.token = TOKEN  # the token is granted (or the right one was set at Supabase)
            code, _ = await task
    assert code == 0 and set(ids(delivered(tmp_path))) == {row.id for row in sent}
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].__dict__["reason"] == "http_401"
    assert "Supabase refused the access token (HTTP 401): check sources.sb.access_token" in errors[0].__dict__["detail"]
    assert any(record.getMessage() == "source is healthy again" for record in caplog.records)
    shown = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert TOKEN not in shown and "sbp_the_right_one" not in shown


@pytest.mark.parametrize(("fault", "words"), [("forbid", "HTTP 403"), ("payment_required", "HTTP 402")])
async def test_forbidden_and_unpaid_projects_are_refusals(tmp_path: Path, fault: str, words: str) -> None:
    async with SupabaseLogsApi(TOKEN) as api:
        setattr(api, fault, True)
        context = SourceContext(
            "sb", config_from_dict(config_of(tmp_path, settings(api)), environ={}).sources["sb"], routes=[],
            host="h", redact=config_from_dict(config_of(tmp_path, settings(api)), environ={}).redact,
            state_dir=tmp_path, stopping=asyncio.Event(),
        )  # fmt: skip
        result = await build_source("sb", context.config, context).check()
    assert result is not None and not result.ok and words in result.detail and TOKEN not in result.detail


async def test_late_rows_are_caught_by_the_overlap(tmp_path: Path) -> None:
    async with SupabaseLogsApi(TOKEN, limit=10_000) as api:
        early = api.add(rows("function_logs", 20, now_us() - 60 * US, US))
        # Written 20 s ago, ingested 2 s from now: after the cursor went past them.
        late = api.add(rows("function_logs", 5, now_us() - 20 * US, 1000, prefix="late"), visible_after=2.0)
        source = settings(api, tables=["function_logs"])
        code, _ = await run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= 25, timeout=20)
    got = ids(delivered(tmp_path))
    assert code == 0 and set(got) == {row.id for row in early + late} and max(got.values()) == 1
    served_late = [
        seen
        for seen in api.requests()
        if seen.rows and seen.start and _us(seen.start) < late[0].at < _us(seen.end or "")
    ]
    assert served_late  # a window starting before their time found them


@pytest.mark.parametrize("workers", [0, 1], ids=["in-agent", "parse-worker"])
async def test_a_restart_resumes_from_the_checkpoint_and_sends_nothing_again(tmp_path: Path, workers: int) -> None:
    async with SupabaseLogsApi(TOKEN, limit=10_000) as api:
        first = api.add(rows("edge_logs", 1500, now_us() - 100 * US, 60_000))  # the last ones within the overlap
        source = settings(api, tables=["edge_logs", "auth_logs"])
        assert (await run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= 1500, workers=workers))[0] == 0
        state = orjson.loads((tmp_path / "state" / "checkpoints" / "sb.json").read_bytes())["state"]
        assert set(state) == {f"{api.ref}/edge_logs", f"{api.ref}/auth_logs"} and state[f"{api.ref}/edge_logs"]["seen"]
        second = api.add(rows("edge_logs", 20, now_us() - 5 * US, 1000, prefix="second"))
        polls_before = len(api.requests())
        done = lambda: len(delivered(tmp_path)) >= 1520 and len(api.requests()) > polls_before + 6  # noqa: E731
        assert (await run_agent(tmp_path, source, done, workers=workers))[0] == 0
    got = ids(delivered(tmp_path))
    assert set(got) == {row.id for row in first + second} and max(got.values()) == 1  # none again after a clean stop
    resumed = [seen for seen in api.requests()[polls_before:] if "edge_logs" in seen.sql and "LIMIT 1000" in seen.sql]
    assert resumed[0].start and _us(resumed[0].start) > first[0].at  # from the cursor, not from start_at


async def test_an_extra_condition_is_applied_by_the_query(tmp_path: Path) -> None:
    async with SupabaseLogsApi(TOKEN, limit=10_000) as api:
        ok = api.add(rows("edge_logs", 10, now_us() - 60 * US, US, attributes={"response.status_code": "200"}))
        bad = api.add(
            rows("edge_logs", 4, now_us() - 50 * US, US, prefix="bad", attributes={"response.status_code": "502"})
        )
        where = {"edge_logs": "toInt32OrZero(log_attributes['response.status_code']) >= 500"}
        source = settings(api, tables=["edge_logs"], where=where)
        code, _ = await run_agent(tmp_path, source, lambda: len(delivered(tmp_path)) >= 4 and len(api.requests()) > 8)
    got = ids(delivered(tmp_path))
    assert code == 0 and set(got) == {row.id for row in bad} and not set(got) & {row.id for row in ok}
    assert {event["level"] for event in delivered(tmp_path)} == {"error"}


async def test_a_second_poller_of_the_project_refuses_to_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SupabaseLogsApi(TOKEN) as api:
        table = config_of(tmp_path, settings(api, tables=["edge_logs"]))
        table["sources"]["again"] = settings(api, tables=["auth_logs"])
        table["sinks"]["out"]["inputs"] = ["sb", "again"]
        with caplog.at_level(logging.ERROR, logger="shipper"):
            code = await asyncio.wait_for(Agent(config_from_dict(table, environ={})).run(), 20)
    assert code == 1
    [line] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert line.getMessage().startswith(f"Supabase project {api.ref} is already polled by pid ")
    assert "run exactly one poller per project" in line.getMessage() and line.exc_info is None


def test_validate_warns_when_the_poll_interval_cannot_fit_the_rate_budget(tmp_path: Path) -> None:
    def warnings(**source: Any) -> list[ConfigError]:
        base = {"type": "supabase", "project_ref": "abcdefghijklmnopqrst", "access_token": TOKEN, **source}
        table = {
            "sources": {"sb": base},
            "sinks": {"out": {"type": "file", "inputs": ["sb"], "path": str(tmp_path / "o")}},
        }
        return config_warnings(config_from_dict(table, environ={}))

    assert warnings() == []  # five tables every 15 s: 20 requests a minute
    [warning] = warnings(poll_interval="5s")
    assert warning.key == "sources.sb.poll_interval"
    assert "5 tables polled every 5s need 60 requests a minute, over the 30" in warning.message
    assert "poll_interval = 10" in warning.message
    assert warnings(poll_interval="5s", tables=["edge_logs", "function_logs"]) == []


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("start_at", iso_micros(now_us()).removesuffix("Z"), "no time zone"),
        ("where", {"storage_logs": "1"}, "'storage_logs' is not in tables"),
        ("attributes", {"edge_logs": ["request method"]}, "expected an attribute key"),
        ("tables", ["edge_logs", "edge_logs"], "listed twice"),
        ("project_ref", "../etc", "should match pattern"),
        ("access_token", "", "the access token is empty"),
    ],
    ids=["start_at", "where", "attributes", "tables", "project_ref", "access_token"],  # stable across processes
)
def test_config_errors_name_the_key(tmp_path: Path, key: str, value: Any, words: str) -> None:
    source = {"type": "supabase", "project_ref": "abcdefghijklmnopqrst", "access_token": TOKEN, key: value}
    table = {
        "sources": {"sb": source},
        "sinks": {"out": {"type": "file", "inputs": ["sb"], "path": str(tmp_path / "o")}},
    }
    with pytest.raises(ConfigError) as raised:
        config_from_dict(table, environ={})
    assert raised.value.key.startswith(f"sources.sb.{key}") and words in raised.value.message
    assert TOKEN not in str(raised.value)


def test_the_token_is_never_in_the_configs_repr(tmp_path: Path) -> None:
    source = {"type": "supabase", "project_ref": "abcdefghijklmnopqrst", "access_token": TOKEN}
    table = {
        "sources": {"sb": source},
        "sinks": {"out": {"type": "file", "inputs": ["sb"], "path": str(tmp_path / "o")}},
    }
    config = config_from_dict(table, environ={})
    assert TOKEN not in repr(config) and TOKEN not in str(config.sources["sb"])
