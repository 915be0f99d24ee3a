"""The command line as a user meets it: `shipper tail` like `tail`, the agent's config warnings,
and `shipper check` naming the real reason a sink is unreachable."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from shipper.config import RedactConfig, config_from_dict
from shipper.parsing import build_processor
from sources.file import BACKFILL_SPAN, _backfill_start
from tests.conftest import REPO, free_port, run_shipper
from tests.procutil import ShipperProcess, line_id, wait_for, write_config

KEY = "dd-cli-secret-0a1b2c3d4e5f60718293a4b5c6d7e8f9"


def pino(ids: range, level: int = 30) -> bytes:
    """pino lines timed now, whose message carries their id (`line N`)."""
    now = int(time.time() * 1000)
    return b"".join(
        orjson.dumps({"level": level, "time": now + i, "pid": 7, "hostname": "vm", "msg": f"line {i}"}) + b"\n"
        for i in ids
    )


def nest_error(frames: int) -> bytes:
    """A Nest error with its stack trace: one event over 2 + `frames` lines."""
    stamp = datetime.now().strftime("%m/%d/%Y, %I:%M:%S %p")
    lines = [f"[Nest] 4242  - {stamp}   ERROR [ExceptionsHandler] payment failed", "Error: payment failed"]
    lines += [f"    at step{i} (/srv/app/dist/pay.js:{i + 1}:7)" for i in range(frames)]
    return "\n".join(lines).encode() + b"\n"


def printed(shipper: ShipperProcess) -> list[dict[str, Any]]:
    """The events `shipper tail --json` printed so far (a line being written left out)."""
    return [orjson.loads(line) for line in shipper.stdout.split(b"\n")[:-1] if line]


def printed_ids(shipper: ShipperProcess) -> list[int | None]:
    return [line_id(event) for event in printed(shipper)]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ShipperProcess]]:
    """Starts real `shipper` processes; every one is killed when the test ends, failed or not."""
    started: list[ShipperProcess] = []

    def run(*cli: str) -> ShipperProcess:
        shipper = ShipperProcess(None, tmp_path, cli=list(cli))
        started.append(shipper)
        return shipper

    yield run
    for shipper in started:
        shipper.ensure_stopped()


def test_tail_file_prints_the_last_ten_events_then_follows(
    tmp_path: Path, start: Callable[..., ShipperProcess]
) -> None:
    log = tmp_path / "api.log"
    log.write_bytes(pino(range(20)) + nest_error(frames=6) + pino(range(20, 29)))
    shipper = start("tail", "--file", str(log), "--json")
    wait_for(lambda: len(printed(shipper)) >= 10, 30, "the last 10 events")
    time.sleep(0.5)  # nothing more comes
    first, *rest = printed(shipper)
    assert first["level"] == "error" and first["message"].startswith("payment failed")
    assert first["err"]["stack"].count("\n    at step") == 6  # the trace is one event, not six lines
    assert [line_id(event) for event in rest] == list(range(20, 29))
    with log.open("ab") as out:
        out.write(pino(range(29, 32)))
    wait_for(lambda: len(printed(shipper)) >= 13, 30, "the appended lines")
    assert printed_ids(shipper)[10:] == [29, 30, 31]
    assert shipper.proc.poll() is None  # still following
    assert shipper.stderr == ""  # no agent start line without -v


@pytest.mark.parametrize(
    ("flags", "shown"),
    [(["-n", "3"], [26, 27, 28]), (["-n", "0"], []), (["--from-start"], list(range(29)))],
    ids=["last-3", "only-new", "from-start"],
)
def test_tail_file_start_flags(
    tmp_path: Path, start: Callable[..., ShipperProcess], flags: list[str], shown: list[int]
) -> None:
    log = tmp_path / "api.log"
    log.write_bytes(pino(range(29)))
    shipper = start("tail", "--file", str(log), "--json", *flags)
    wait_for(lambda: len(printed(shipper)) >= len(shown), 30, "the events printed first")
    # Lines appended (one a while, as tail may not follow yet with -n 0) until one is printed:
    # only what was asked for is printed before them.
    deadline = time.monotonic() + 30
    for marker in range(1000, 2000):
        if any((i or 0) >= 1000 for i in printed_ids(shipper)):
            break
        assert time.monotonic() < deadline, shipper.stderr
        with log.open("ab") as out:
            out.write(pino(range(marker, marker + 1)))
        time.sleep(0.5)
    assert [i for i in printed_ids(shipper) if (i or 0) < 1000] == shown


def test_last_events_are_found_across_read_spans(tmp_path: Path) -> None:
    """A stack trace longer than one read-back span is still one event, wherever a span starts."""
    trace = nest_error(frames=3000)
    assert len(trace) > 2 * BACKFILL_SPAN
    head = pino(range(3000))
    data = head + trace + pino(range(3000, 3005))
    log = tmp_path / "api.log"
    log.write_bytes(data)
    table = {"type": "file", "include": [str(log)], "multiline": {"max_lines": 5000}}  # the trace stays whole
    doc = {"sources": {"api": table}, "sinks": {"out": {"type": "console", "inputs": ["api"]}}}
    config = config_from_dict(doc, None, environ={}).sources["api"]

    def scanner() -> Any:
        return build_processor("api", config, host="vm", redact=RedactConfig(enabled=False))

    with log.open("rb") as handle:
        start = {count: _backfill_start(handle.fileno(), len(data), count, scanner) for count in (5, 6, 7, 10**6)}
    assert start[5] == len(head) + len(trace)  # the five lines after the trace
    assert start[6] == len(head)  # the trace's first line
    assert start[7] == head.rstrip(b"\n").rfind(b"\n") + 1  # the line before it
    assert start[10**6] == 0


def test_tail_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "tail", "--file", str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (2, f"shipper tail: no such file: {missing}\n")


def test_tail_retry_waits_for_the_file(tmp_path: Path, start: Callable[..., ShipperProcess]) -> None:
    log = tmp_path / "later.log"
    shipper = start("tail", "--file", str(log), "--retry", "--json")
    wait_for(lambda: "waiting" in shipper.stderr, 30, "the waiting notice")
    log.write_bytes(pino(range(3)))
    wait_for(lambda: len(printed(shipper)) >= 3, 30, "the new file's events")
    assert printed_ids(shipper) == [0, 1, 2]
    assert shipper.stderr == f"shipper tail: {log} does not exist yet; waiting for it\n"


def test_tail_level_is_case_insensitive() -> None:
    shown = run_shipper(["tail", "--level", "WARN", "--json"], pino(range(2)) + pino(range(2, 4), level=40))
    assert shown.proc.returncode == 0, shown.stderr.decode()
    events = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert [(line_id(e), e["level"]) for e in events] == [(2, "warn"), (3, "warn")]


@pytest.mark.parametrize("zone", ["Asia/Kolkata", None])
def test_tail_prints_times_in_the_zone_asked_for(zone: str | None) -> None:
    line = pino(range(1))
    stamp = orjson.loads(line)["time"]
    shown = run_shipper(["tail", *(["--timezone", zone] if zone else [])], line)
    assert shown.proc.returncode == 0, shown.stderr.decode()
    moment = datetime.fromtimestamp(stamp / 1000, ZoneInfo(zone or "UTC"))
    assert shown.stdout.decode().startswith(f"{moment:%H:%M:%S}.{stamp % 1000:03d} INFO ")


def test_tail_shows_a_crash_printout_whole() -> None:
    """Node's crash printout: its location and the source line with the caret under the throw come
    before the stack, as Node printed them, and the Node version is shown."""
    crash = (
        b"file:///srv/app/dist/main.js:82\n"
        b"            throw new Error('boom');\n"
        b"            ^\n\n"
        b"Error: boom\n    at Timeout._onTimeout (file:///srv/app/dist/main.js:82:19)\n\n"
        b"Node.js v20.20.2\n"
    )
    shown = run_shipper(["tail"], crash)
    assert shown.proc.returncode == 0, shown.stderr.decode()
    rows = shown.stdout.decode().splitlines()
    assert " FATAL " in rows[0] and rows[0].endswith('node={"version":"v20.20.2"}')
    assert rows[1:5] == [
        "    file:///srv/app/dist/main.js:82",
        "                throw new Error('boom');",
        "                ^",
        "    Error: boom",
    ]


def test_tail_shows_agent_lines_only_when_verbose() -> None:
    quiet = run_shipper(["tail"], pino(range(1)))
    assert quiet.proc.returncode == 0 and b"line 0" in quiet.stdout and quiet.stderr == b""
    verbose = run_shipper(["tail", "-v"], pino(range(1)))
    assert b'"msg":"started"' in verbose.stderr and b'"msg":"stopped"' in verbose.stderr


def test_tail_names_a_bad_grep_regex() -> None:
    shown = run_shipper(["tail", "--grep", "x("], b"")
    assert shown.proc.returncode == 2
    assert shown.stderr.decode() == (
        "shipper tail: --grep: invalid regular expression 'x(': missing ), unterminated subpattern at position 1\n"
    )


def test_agent_warns_at_start_of_a_source_no_sink_reads(tmp_path: Path) -> None:
    orphan = f'[sources.audit]\ntype = "file"\ninclude = ["{tmp_path}/audit/*.log"]\n'
    config = write_config(tmp_path, 'type = "stdin"', tmp_path / "out.ndjson", extra=orphan)
    shipper = ShipperProcess(config, tmp_path)
    try:
        wait_for(lambda: any(log["msg"] == "started" for log in shipper.logs()), 30, "the agent to start")
        [warning] = [log for log in shipper.logs() if log["level"] == "warning"]
        assert warning["key"] == "sources.audit" and "no sink reads this source" in warning["msg"]
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()


def test_check_gives_the_real_reason_and_each_url_once(tmp_path: Path) -> None:
    port = free_port()
    sinks = (
        f'[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "{KEY}"\nendpoint = "http://127.0.0.1:{port}"\n'
        f'[sinks.hook]\ntype = "http"\ninputs = ["api"]\nurl = "http://127.0.0.1:{port}/logs"\n'
    )
    config = write_config(tmp_path, 'type = "stdin"', tmp_path / "out.ndjson", extra=sinks)
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert result.returncode == 1, result.stdout + result.stderr
    for name in ("dd", "hook"):
        assert " FAIL " in rows[name] and rows[name].endswith(f": connection refused to 127.0.0.1:{port}")
        assert rows[name].count(f"http://127.0.0.1:{port}") == 1
    assert "site US1" not in rows["dd"]  # the endpoint replaces the site
    assert KEY not in result.stdout + result.stderr
