"""The real `shipper` process polling the fake Supabase Management API (tests/fakes/supabase_api.py) into a
file sink: every row exactly once across SIGTERM restarts, a 429 storm and late rows; kill -9 mid-poll
loses nothing and sends again only what was in flight; one poller per project; `check`, `validate` and
`tail --supabase`; the token in no output."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sources.supabase_logs import iso_micros, to_micros
from tests.conftest import REPO, free_port
from tests.fakes.supabase_api import US, LogRow, SupabaseLogsApi, now_us, rows
from tests.procutil import ShipperProcess, read_events, wait_for

TOKEN = "sbp_e2e_8b3f1c2d9a4e4b6f8c0d1e2f3a4b5c6d7e8f9a0b"
ENV = {"SUPABASE_ACCESS_TOKEN": TOKEN}
OVERLAP_S = 60


def supabase_source(api: SupabaseLogsApi, tables: list[str]) -> str:
    """The body of a source table polling the fake `api` fast, from 15 minutes ago."""
    return (
        f'type = "supabase"\nproject_ref = "{api.ref}"\naccess_token = "${{SUPABASE_ACCESS_TOKEN}}"\n'
        f'api_url = "{api.url}"\ntables = {orjson.dumps(tables).decode()}\n'
        f'start_at = "{iso_micros(now_us() - 900 * US)}"\npoll_interval = "300ms"\nlag = "500ms"\n'
        f'overlap = "{OVERLAP_S}s"\nrequests_per_minute = 600\n'
        'retry = { initial_backoff = "100ms", max_backoff = "1s" }'
    )


def write_config(tmp_path: Path, api: SupabaseLogsApi, tables: list[str], extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\nparse_workers = 1\n\n'
        f"[sources.sb]\n{supabase_source(api, tables)}\n\n"
        f'[sinks.out]\ntype = "file"\ninputs = ["sb"]\npath = "{tmp_path / "out.ndjson"}"\n'
        'batch = { timeout = "50ms" }\n'
        f"{extra}"
    )
    return path


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ShipperProcess]]:
    """Starts real `shipper` processes; every one is killed when the test ends, failed or not."""
    started: list[ShipperProcess] = []

    def run(config: Path | None, cli: list[str] | None = None, env: dict[str, str] | None = None) -> ShipperProcess:
        shipper = ShipperProcess(config, tmp_path, env={**ENV, **(env or {})}, cli=cli)
        started.append(shipper)
        return shipper

    yield run
    for shipper in started:
        shipper.ensure_stopped()


def delivered(tmp_path: Path) -> Counter[str]:
    return Counter(event["id"] for event in read_events(tmp_path / "out.ndjson"))


def assert_no_token(*outputs: bytes | str) -> None:
    for output in outputs:
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        assert TOKEN not in text, "the access token leaked"


def backlog(api: SupabaseLogsApi) -> list[LogRow]:
    """Ten minutes of rows in three tables, one of them several pages long."""
    return (
        api.add(rows("edge_logs", 3000, now_us() - 600 * US, 190_000, attributes={"response.status_code": "200"}))
        + api.add(rows("function_logs", 400, now_us() - 500 * US, US, attributes={"level": "info"}))
        + api.add(rows("postgres_logs", 150, now_us() - 400 * US, 2 * US, severity_text="LOG"))
    )


def test_every_row_exactly_once_across_restarts_a_429_storm_and_late_rows(
    tmp_path: Path, start: Callable[..., ShipperProcess]
) -> None:
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        expected = {row.id for row in backlog(api)}
        config = write_config(tmp_path, api, ["edge_logs", "function_logs", "postgres_logs"])
        outputs: list[bytes | str] = []

        def run_until(done: Callable[[], bool], what: str) -> None:
            shipper = start(config)
            wait_for(lambda: any(log["msg"] == "started" for log in shipper.logs()), 30, "shipper to start")
            wait_for(done, 40, what)
            assert shipper.stop() == 0, shipper.stderr[-3000:]
            outputs.extend([shipper.stdout, shipper.stderr])
            assert max(delivered(tmp_path).values()) == 1, "a row was sent twice after a clean SIGTERM"

        run_until(lambda: len(delivered(tmp_path)) >= 1200, "a first part of the backlog")
        live = {row.id for row in api.add(rows("edge_logs", 50, now_us() - 2 * US, 10_000, prefix="live"))}
        expected |= live
        api.throttle_for(3.0)  # a 429 storm as it restarts: the budget spent elsewhere (a script, `shipper tail`)
        run_until(lambda: set(delivered(tmp_path)) >= live, "the rows written meanwhile, through the 429s")
        assert api.statuses[429] >= 1
        # Rows written 20 s ago but ingested only 2 s from now: behind the cursor when they appear.
        late = api.add(rows("function_logs", 30, now_us() - 20 * US, 1000, prefix="late"), visible_after=2.0)
        expected |= {row.id for row in late}
        run_until(lambda: set(delivered(tmp_path)) >= expected, "every row, the late ones too")
    got = delivered(tmp_path)
    assert set(got) == expected and max(got.values()) == 1
    print(f"\n[supabase] {len(expected)} rows, 3 runs, {dict(api.statuses)} answers, 0 duplicates")
    assert_no_token(*outputs, (tmp_path / "out.ndjson").read_bytes())


def committed(state: dict[str, Any], api: SupabaseLogsApi, table: list[LogRow]) -> set[str]:
    """The rows a checkpoint says were delivered: before its window's start, or remembered as sent."""
    out = set()
    for row in table:
        position = state.get(f"{api.ref}/{row.source}")
        if position is None:
            continue
        cursor, floor = to_micros(position["cursor"]), to_micros(position["floor"])
        assert cursor is not None and floor is not None
        seen = {key for _, key in position["seen"]}
        if row.id in seen or row.at < max(cursor - OVERLAP_S * US, floor):
            out.add(row.id)
    return out


def test_kill_9_mid_poll_loses_nothing_and_resends_only_what_was_in_flight(
    tmp_path: Path, start: Callable[..., ShipperProcess]
) -> None:
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        table = backlog(api) + api.add(rows("edge_logs", 6000, now_us() - 300 * US, 40_000, prefix="more"))
        api.latency = 0.3  # requests spend time in flight: the kill lands in one
        config = write_config(tmp_path, api, ["edge_logs", "function_logs", "postgres_logs"])
        checkpoint = tmp_path / "state" / "checkpoints" / "sb.json"
        shipper = start(config)
        wait_for(lambda: checkpoint.exists() and len(delivered(tmp_path)) >= 3000, 40, "a checkpoint, mid-backlog")
        shipper.stop(signal.SIGKILL)
        before = set(delivered(tmp_path))
        state = orjson.loads(checkpoint.read_bytes())["state"]
        in_flight = before - committed(state, api, table)
        shipper = start(config)
        wait_for(lambda: set(delivered(tmp_path)) >= {row.id for row in table}, 60, "every row after the restart")
        assert shipper.stop() == 0, shipper.stderr[-3000:]
    got = delivered(tmp_path)
    resent = {key for key, count in got.items() if count > 1}
    print(f"\n[supabase kill -9] {len(before)} delivered before the kill, {len(in_flight)} not yet checkpointed, "
          f"{len(resent)} sent again")  # fmt: skip
    assert set(got) == {row.id for row in table}  # nothing lost
    assert len(in_flight) < len(before)  # the checkpoint held most of what was delivered
    assert resent <= in_flight and max(got.values()) <= 2  # only what was in flight, once more at most
    assert_no_token(shipper.stdout, shipper.stderr)


def test_a_second_poller_of_the_project_refuses_to_start(tmp_path: Path, start: Callable[..., ShipperProcess]) -> None:
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        api.add(rows("auth_logs", 5, now_us() - 60 * US, US))
        config = write_config(tmp_path, api, ["auth_logs"])
        first = start(config)
        wait_for(lambda: len(delivered(tmp_path)) >= 5, 30, "the first poller to ship")
        second = start(config)  # a second replica of the sidecar, with the same state directory
        assert second.wait(30) == 1
        [line] = [log for log in second.logs() if log["level"] == "error"]
        # Whichever piece of the shared state it reaches first says who holds it: the sink's disk
        # buffer (taken before any source starts), or the project's cursors.
        held_by = f"(is already polled|is in use) by pid {first.proc.pid} "
        assert re.search(f"^(Supabase project {api.ref}|the disk buffer of sink out) {held_by}", line["msg"])
        assert "Traceback" not in second.stderr
        assert first.proc.poll() is None  # the first goes on
        assert first.stop() == 0
    assert max(delivered(tmp_path).values()) == 1


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_refused_token_fails_health_with_one_line_and_is_shown_nowhere(
    tmp_path: Path, start: Callable[..., ShipperProcess]
) -> None:
    port = free_port()
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        api.add(rows("edge_logs", 5, now_us() - 60 * US, US))
        api.token = "sbp_not_the_one_shipper_has"
        config = write_config(
            tmp_path, api, ["edge_logs"], extra=f'\n[api]\nenabled = true\naddress = "127.0.0.1:{port}"\n'
        )
        shipper = start(config)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: api.statuses[401] >= 1 and get(f"{base}/health")[0] == 503, 30, "health to fail")
        _, body = get(f"{base}/health")
        report = orjson.loads(body)["sources"]["sb"]
        assert report["state"] == "failing" and report["last_error"]["reason"] == "http_401"
        assert "Supabase refused the access token (HTTP 401)" in report["last_error"]["detail"]
        metrics = get(f"{base}/metrics")[1].decode()
        assert 'shipper_source_healthy{source="sb"} 0.0' in metrics
        assert 'shipper_source_requests_total{outcome="http_401",source="sb"}' in metrics
        assert shipper.stop() == 0
    errors = [log for log in shipper.logs() if log["level"] == "error"]
    assert len(errors) == 1 and errors[0]["msg"].startswith("source is unhealthy")  # one clear line
    assert_no_token(shipper.stdout, shipper.stderr, body, metrics)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, **ENV, **(env or {})},
    )


def test_check_proves_the_token_and_project_with_one_small_query(tmp_path: Path) -> None:
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        api.add(rows("edge_logs", 2000, now_us() - 120 * US, 50_000))
        config = write_config(tmp_path, api, ["edge_logs", "auth_logs"])
        result = cli("check", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        row = next(line for line in result.stdout.splitlines() if line.startswith("sb "))
        assert " supabase " in row and " OK " in row and f"project {api.ref}: token accepted" in row
        [query] = api.requests()
        assert query.sql == "SELECT id FROM logs WHERE source = 'edge_logs' LIMIT 1" and query.rows <= 1
        assert delivered(tmp_path) == Counter()  # nothing shipped
        api.token = "sbp_revoked"
        refused = cli("check", "--config", str(config))
    assert refused.returncode == 1
    row = next(line for line in refused.stdout.splitlines() if line.startswith("sb "))
    assert " FAIL " in row and "Supabase refused the access token (HTTP 401): check sources.sb.access_token" in row
    assert_no_token(result.stdout, result.stderr, refused.stdout, refused.stderr)


def test_validate_and_check_warn_when_the_poll_interval_cannot_fit_the_budget(tmp_path: Path) -> None:
    with SupabaseLogsApi(TOKEN).threaded() as api:
        config = write_config(tmp_path, api, ["edge_logs"])
    text = config.read_text().replace('tables = ["edge_logs"]', "").replace("requests_per_minute = 600\n", "")
    config.write_text(text.replace('poll_interval = "300ms"', 'poll_interval = "5s"'))
    warning = "sources.sb.poll_interval: 5 tables polled every 5s need 60 requests a minute, over the 30"
    result = cli("validate", "--config", str(config))
    assert result.returncode == 0 and "config OK" in result.stdout
    assert f"warning: {config}:" in result.stderr and warning in result.stderr
    checked = cli("check", "--config", str(config))  # the fake is gone: the check fails, the warning stays
    assert checked.returncode == 1 and warning in checked.stderr and "connection refused" in checked.stdout


def test_tail_follows_a_projects_tables_at_a_level(tmp_path: Path, start: Callable[..., ShipperProcess]) -> None:
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        api.add(rows("function_logs", 4, now_us() - 120 * US, US, attributes={"level": "error"}, prefix="fn-error"))
        api.add(rows("function_logs", 4, now_us() - 110 * US, US, attributes={"level": "info"}, prefix="fn-info"))
        api.add(rows("edge_logs", 4, now_us() - 100 * US, US, attributes={"response.status_code": "500"}))
        args = ["tail", "--supabase", api.ref, "--api-url", api.url, "--table", "function_logs", "--level", "error"]
        shipper = start(None, cli=[*args, "--json", "--since", "10m"])

        def printed() -> list[dict[str, Any]]:
            return [orjson.loads(line) for line in shipper.stdout.split(b"\n")[:-1] if line]

        wait_for(lambda: len(printed()) >= 4, 30, "the last minutes' errors")
        api.add(rows("function_logs", 1, now_us(), 1, attributes={"level": "error"}, prefix="fn-new"))
        wait_for(lambda: len(printed()) >= 5, 30, "a new error, live")
        assert shipper.stop(signal.SIGINT) == 0
    shown = printed()
    assert [event["id"].split("-0")[0] for event in shown] == ["fn-error"] * 4 + ["fn-new"]
    assert {event["supabase_table"] for event in shown} == {"function_logs"} and {e["level"] for e in shown} == {
        "error"
    }
    assert all("source = 'function_logs'" in seen.sql or "LIMIT 1" in seen.sql for seen in api.requests())
    assert_no_token(shipper.stdout, shipper.stderr)


def test_tail_names_its_flags_problems() -> None:
    missing = cli("tail", "--supabase", "abcdefghijklmnopqrst", env={"SUPABASE_ACCESS_TOKEN": ""})
    assert missing.returncode == 2 and "--supabase: set SUPABASE_ACCESS_TOKEN" in missing.stderr
    bad = cli("tail", "--supabase", "Not/A/Ref")
    assert bad.returncode == 2 and bad.stderr.startswith("shipper tail: --supabase: ")
    stray = cli("tail", "--table", "edge_logs")
    assert stray.returncode == 2 and "--table, --since and --api-url apply to --supabase" in stray.stderr
