"""Parse workers: the same logs as without them, counters forwarded, a dead worker is loud and loses
nothing a restart cannot resend, and `auto` only uses a CPU that is really there."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from shipper import parse_worker, workers
from shipper.config import config_from_dict
from shipper.errors import ConfigError
from shipper.event import Encoded, Event, encoded_events
from shipper.parsing import build_processor
from shipper.pipeline import routing
from shipper.when import compile_when
from sinks import build_sink
from sinks.datadog import DatadogSink
from tests.conftest import CORPUS, Shipper, free_port, needs_corpus
from tests.fakes.datadog_intake import DatadogIntake
from tests.procutil import (
    RECENT_MS,
    ShipperProcess,
    check_delivery,
    delivered_ids,
    line_id,
    moved_to_recent,
    pino_lines,
    wait_for,
    write_config,
)

KEY = "dd-workers-secret-00112233445566778899aabbccdd"


def datadog_sink() -> DatadogSink:
    table = {"type": "datadog", "inputs": ["api"], "api_key": KEY, "tags": ["env:test", "level:{level}"]}
    config = config_from_dict({"sources": {"api": {"type": "stdin"}}, "sinks": {"dd": table}}, environ={})
    sink = build_sink("dd", config.sinks["dd"])
    assert isinstance(sink, DatadogSink)
    return sink


def utc_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def logs_of(sink: DatadogSink, events: list[Event]) -> list[dict[str, Any]]:
    return [log for request in sink.encode(events) for log in orjson.loads(request.body)]


@needs_corpus
def test_logs_prepared_in_a_worker_are_the_logs_encoded_in_the_agent() -> None:
    """Corpus events plus the per-log rules (a re-stamp, a truncation): framing what `prepare`
    made gives the very logs the agent's own encoding gives, in the same order."""
    sinks = {"out": {"type": "console", "inputs": ["api"]}}
    config = config_from_dict({"sources": {"api": {"type": "stdin"}}, "sinks": sinks}, environ={})
    processor = build_processor("api", config.sources["api"], host="h", redact=config.redact)
    lines = moved_to_recent((CORPUS / "fastify-pino.ndjson").read_bytes()).split(b"\n")[:-1]
    events = processor.parse(lines, "stdout", time.time())
    old = (datetime.now(UTC) - timedelta(hours=30)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events[5].fields["timestamp"] = old
    events[9].fields["message"] = "x" * 1_500_000
    sink, other = datadog_sink(), datadog_sink()

    def stable(log: dict[str, Any]) -> dict[str, Any]:  # a re-stamp's "now" differs by milliseconds
        return {k: v for k, v in log.items() if not (k == "timestamp" and log.get("shipper.original_timestamp"))}

    spec = sink.preparer()  # built as a worker builds it: from the settings that cross the pipe
    preparer = routing.build_preparer("dd", pickle.loads(pickle.dumps(spec)))
    prepared = encoded_events(preparer.prepare(events), {"source": "api"})
    assert all(isinstance(event, Encoded) for event in prepared)
    in_worker, in_agent = logs_of(sink, prepared), logs_of(other, events)
    assert len(in_worker) == len(events) > 2800
    assert [stable(log) for log in in_worker] == [stable(log) for log in in_agent]
    assert in_worker[5]["shipper.original_timestamp"] == old and in_worker[9]["shipper.truncated"] is True
    assert [i for i, log in enumerate(in_worker) if "shipper.original_timestamp" in log] == [5]


def test_a_batch_mixing_prepared_and_unprepared_events_keeps_its_order() -> None:
    sink = datadog_sink()
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = [Event({"message": f"m{i}", "level": "info", "timestamp": now}, b"m") for i in range(4)]
    mixed = [*encoded_events(sink.encoder.prepare(events[:2]), {"source": "api"}), *events[2:]]
    assert [log["message"] for log in logs_of(sink, mixed)] == ["m0", "m1", "m2", "m3"]


def test_a_feed_set_up_in_a_worker_parses_filters_and_encodes_as_the_agent_does() -> None:
    """A worker gets its settings as plain attribute trees, not config models: the redaction
    patterns, the multi-line limits, the time zone and a `when` filter must all mean the same
    there. Same lines through both: the same logs."""
    table = {
        "sources": {
            "api": {"type": "stdin", "timezone": "Europe/Paris", "multiline": {"max_lines": 3}},
        },
        "redact": {"fields": ["user.token"], "patterns": [{"name": "order", "regex": "ORD-[0-9]+"}]},
        "sinks": {
            "dd": {
                "type": "datadog",
                "inputs": ["api"],
                "api_key": KEY,
                "tags": ["level:{level}"],
                "when": {"level": "warn", "matches": {"message": "^keep"}},
            }
        },
    }
    config = config_from_dict(table, environ={})
    sink = build_sink("dd", config.sinks["dd"])
    # Timed five minutes ago, so that Datadog's window (18 h old .. 2 h ahead) takes them as written on
    # any date: a re-stamp to "now" would happen at a slightly different instant on each side.
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ms = int(second.timestamp()) * 1000 + 241
    paris = second.astimezone(ZoneInfo("Europe/Paris"))
    meridiem = "AM" if paris.hour < 12 else "PM"
    nest_time = f"{paris.month}/{paris.day}/{paris.year}, {paris.hour % 12 or 12}:{paris:%M:%S} {meridiem}"  # en-US
    lines = [
        b'{"level":40,"time":%d,"pid":1,"hostname":"h","user":{"token":"t0k"},"msg":"keep ORD-123"}' % ms,
        b'{"level":30,"time":%d,"pid":1,"hostname":"h","msg":"keep, but info"}' % ms,
        b"[Nest] 19  - %s   ERROR [Boot] keep the crash" % nest_time.encode(),
        b"Error: boom",
        b"    at one (a.js:1:1)",
        b"    at two (b.js:2:2)",
        b'{"level":50,"time":%d,"pid":1,"hostname":"h","msg":"dropped by the filter"}' % ms,
    ]
    route = workers.SinkRoute("dd", config.sinks["dd"].when, sink.preparer(), None)  # type: ignore[arg-type]
    setup = workers.feed_setup(
        "api", config.sources["api"], host="h", redact=config.redact, fields=None, routes=[route]
    )
    feed = parse_worker.WorkerFeed(setup)
    now = time.time()
    held, count, routed = feed.parsed(
        [*feed.processor.parse(lines, "stdout", now), *feed.processor.flush(now, True)], now
    )
    [(index, ndjson, _stamps)] = routed
    in_worker = [orjson.loads(line) for line in ndjson.splitlines()]

    processor = build_processor("api", config.sources["api"], host="h", redact=config.redact)
    when = compile_when(config.sinks["dd"].when)
    assert when is not None
    events = [e for e in [*processor.parse(lines, "stdout", now), *processor.flush(now, True)] if when(e)]
    in_agent = [log for request in sink.encode(events) for log in orjson.loads(request.body)]
    assert (held, index) == (0, 0) and count > len(in_worker)
    assert in_worker == in_agent
    assert [log["message"].splitlines()[0] for log in in_worker] == ["keep [REDACTED]", "keep the crash"]
    assert in_worker[0]["user"]["token"] == "[REDACTED]"
    assert in_worker[1]["err"]["stack"] == "Error: boom\n    at one (a.js:1:1)"  # cut at multiline.max_lines = 3
    # Paris time read in Paris; the pino records of that second above it are at .241, so the Nest event
    # (one-second time) lands just after them, not before.
    assert [log["timestamp"] for log in in_worker] == [utc_iso(ms), utc_iso(ms + 1)]
    assert not any("shipper.original_timestamp" in log for log in in_worker)  # nothing re-stamped


def test_a_parse_worker_loads_no_config_models_metrics_library_or_asyncio() -> None:
    """What keeps a worker at about half an agent's memory: the modules it runs import none of
    pydantic, prometheus_client, asyncio (and TLS with it) or aiohttp."""
    heavy = ("pydantic", "prometheus_client", "asyncio", "ssl", "aiohttp")
    code = (
        "import sys, shipper.parse_worker as w, shipper.pipeline.routing as r\n"
        "r.build_preparer('dd', ('sinks.datadog_logs:LogEncoder', {'source': 'nodejs', 'service': None,"
        " 'tags': [], 'max_event_bytes': 1000000, 'out_of_range': 'restamp'}))\n"
        "r.build_preparer('out', ('shipper.encoding:FieldsJson', {}))\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == ""


def delivering(tmp_path: Path, app: Path, intake: DatadogIntake, lines: int) -> ShipperProcess:
    """`app` gets `lines` lines; a shipper reading it through a worker has delivered them all."""
    app.write_bytes(pino_lines(range(lines)))
    shipper = shipper_with_a_worker(tmp_path, app, intake)
    try:
        wait_for(lambda: len(set(delivered(intake))) == lines, 30, "the first lines")
    except BaseException:
        shipper.ensure_stopped()
        raise
    return shipper


def shipper_with_a_worker(tmp_path: Path, app: Path, intake: DatadogIntake) -> ShipperProcess:
    """A file source read in a parse worker, to a Datadog intake (a sink that prepares its logs)."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\nparse_workers = 1\n\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{app}"]\nstart_at = "beginning"\npoll_interval = "50ms"\n\n'
        f'[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "{KEY}"\nendpoint = "{intake.url}"\n'
        'batch = { timeout = "50ms" }\nretry = { initial_backoff = "50ms", max_backoff = "500ms" }\n'
    )
    return ShipperProcess(config, tmp_path)


def delivered(intake: DatadogIntake) -> list[int]:
    return [i for i in map(line_id, intake.logs) if i is not None]


def append(app: Path, ids: range) -> None:
    with open(app, "ab") as handle:
        handle.write(pino_lines(ids))


def worker_pid(shipper: ShipperProcess) -> int:
    children = Path(f"/proc/{shipper.proc.pid}/task/{shipper.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_a_killed_worker_stops_shipper_loudly_and_a_restart_resends_what_it_held(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    with DatadogIntake([KEY]).threaded() as intake:
        first = delivering(tmp_path, app, intake, 1000)
        try:
            os.kill(worker_pid(first), signal.SIGKILL)
            append(app, range(1000, 2000))
            assert first.wait(30) == 1, first.stderr[-3000:]
            assert "parse worker exited" in first.stderr
        finally:
            first.ensure_stopped()
        second = shipper_with_a_worker(tmp_path, app, intake)
        try:
            wait_for(lambda: set(range(2000)) <= set(delivered(intake)), 30, "every line after the restart")
            assert second.stop() == 0
        finally:
            second.ensure_stopped()
        check_delivery("killed worker", range(2000), delivered(intake))


def test_signals_to_the_whole_group_leave_the_worker_to_the_agent(tmp_path: Path) -> None:
    """Ctrl-C in a terminal (or systemd's stop) signals every process of the group: the worker
    must ignore it and let the agent drain through it, so nothing is lost on the way out."""
    app = tmp_path / "app.log"
    with DatadogIntake([KEY]).threaded() as intake:
        shipper = delivering(tmp_path, app, intake, 300)
        try:
            os.kill(worker_pid(shipper), signal.SIGINT)
            os.kill(worker_pid(shipper), signal.SIGTERM)
            append(app, range(300, 400))
            wait_for(lambda: set(range(400)) <= set(delivered(intake)), 30, "lines after the signals")
            assert shipper.stop(signal.SIGINT) == 0, shipper.stderr[-3000:]
        finally:
            shipper.ensure_stopped()
        check_delivery("signals", range(400), delivered(intake))


@pytest.mark.parametrize("workers", [2, 0])
def test_a_file_sink_is_served_by_parse_workers_and_writes_what_the_agent_writes(tmp_path: Path, workers: int) -> None:
    """Every built-in sink prepares its logs where they are parsed, so a source feeding a file sink
    parses in the workers configured (none with 0), and the file holds the same logs either way."""
    app, out = tmp_path / "app.log", tmp_path / "out.ndjson"
    app.write_bytes(pino_lines(range(50)))
    config = write_config(tmp_path, f'type = "file"\ninclude = ["{app}"]\nstart_at = "beginning"\n', out)
    config.write_text(config.read_text().replace('shutdown_timeout = "10s"\n', f"parse_workers = {workers}\n"))
    shipper = ShipperProcess(config, tmp_path)
    try:
        wait_for(lambda: len(delivered_ids(out)) == 50, 30, "the lines")
        children = Path(f"/proc/{shipper.proc.pid}/task/{shipper.proc.pid}/children").read_text().split()
        assert len(children) == workers
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
    logs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [log["message"] for log in logs] == [f"line {i}" for i in range(50)]
    assert all(log["source"] == "api" and log["level"] == "info" and log["timestamp"].endswith("Z") for log in logs)


def test_counters_of_the_worker_reach_the_agents_metrics(tmp_path: Path) -> None:
    """Fallbacks, redactions and truncations happen in the worker; /metrics must still show them."""
    port = free_port()
    with DatadogIntake([KEY]).threaded() as intake:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{tmp_path}/state"\nparse_workers = 1\n'
            f'[api]\nenabled = true\naddress = "127.0.0.1:{port}"\n'
            '[sources.api]\ntype = "stdin"\n'
            f'[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "{KEY}"\nendpoint = "{intake.url}"\n'
            'batch = { timeout = "50ms" }\n'
        )
        shipper = Shipper(["run", "--config", str(config)], env={"METRICS_TOKEN": "t0ken-for-the-workers-test"})
        try:
            secret = b'{"level":50,"msg":"two","req":{"headers":{"authorization":"Bearer abc.def"}}}\n'
            big = b'{"level":50,"msg":"' + b"x" * 1_020_000 + b'"}\n'  # over Datadog's 1 MB, under the line cap
            shipper.feed(b'{"level":30,"msg":"one"}\n{"level":30, broken\n' + secret + big, close=False)
            wanted = [
                b'shipper_events_sent_total{sink="dd"} 4.0',
                b'shipper_parse_fallbacks_total{reason="invalid_json",source="api"} 1.0',
                b'shipper_redactions_total{rule="header"} 1.0',
                b'shipper_events_truncated_total{sink="dd"} 1.0',
            ]
            deadline, body = time.monotonic() + 20, b""
            while time.monotonic() < deadline and not all(line in body for line in wanted):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer t0ken-for-the-workers-test"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=5) as resp:
                        body = resp.read()
                except OSError:
                    pass
                time.sleep(0.1)
            assert all(line in body for line in wanted), body.decode()[-3000:]
        finally:
            shipper.wait(20, b"")


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "memory_max", "expected"),
    [
        ({0, 1}, "max 100000", "max", 1),
        ({0}, "max 100000", "max", 0),
        ({0, 1, 2, 3}, "100000 100000", "max", 0),
        ({0, 1}, None, None, 1),
        ({0, 1}, "max 100000", str(128 * 1024 * 1024), 0),
        ({0, 1}, "200000 100000", str(1024 * 1024 * 1024), 1),
        (set(range(8)), "max 100000", "max", 4),
        ({0, 1, 2, 3}, "max 100000", "max", 3),
        ({0, 1, 2, 3}, "max 100000", str(300 * 1024 * 1024), 1),
        ({0, 1, 2, 3}, "max 100000", str(400 * 1024 * 1024), 3),
        ({0, 1, 2, 3}, "300000 100000", "max", 2),
    ],
    ids=[
        "two-cpus", "one-cpu", "container-limited-to-one-cpu", "no-cgroup-files", "128MiB-container", "1GiB-2cpus",
        "eight-cpus-capped", "four-cpus", "four-cpus-300MiB", "four-cpus-400MiB", "three-cpu-quota",
    ],
)  # fmt: skip
def test_auto_uses_a_worker_per_spare_cpu_that_the_memory_allows(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    affinity: set[int],
    cpu_max: str | None,
    memory_max: str | None,
    expected: int,
) -> None:
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: affinity)
    for name, text in (("CGROUP_CPU_MAX", cpu_max), ("CGROUP_MEMORY_MAX", memory_max)):
        path = tmp_path / name
        if text is not None:
            path.write_text(text + "\n")
        monkeypatch.setattr(workers, name, path)
    assert workers.resolve_worker_count("auto") == expected
    assert workers.resolve_worker_count(3) == 3


def test_a_bad_worker_count_names_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        sinks = {"out": {"type": "console", "inputs": ["api"]}}
        config_from_dict({"agent": {"parse_workers": -1}, "sources": {"api": {"type": "stdin"}}, "sinks": sinks})
    assert error.value.key == "agent.parse_workers"


def test_a_wrapped_process_through_a_worker_keeps_both_streams_and_its_exit_code(tmp_path: Path) -> None:
    """stdout and stderr are two streams of one feed: both parse in the worker (the crash on
    stderr stays one event), everything is delivered, and shipper exits with the child's code."""
    child = (
        "import json, sys\n"
        f"for i in range(2000): print(json.dumps({{'level': 30, 'time': {RECENT_MS} + i, 'msg': f'line {{i}}'}}))\n"
        "print('Error: boom\\n    at main (/srv/app/main.js:1:1)', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    with DatadogIntake([KEY]).threaded() as intake:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{tmp_path}/state"\nparse_workers = 1\n[sources.api]\ntype = "process"\n'
            f'[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "{KEY}"\nendpoint = "{intake.url}"\n'
        )
        shipper = ShipperProcess(config, tmp_path, command=[sys.executable, "-c", child])
        try:
            assert shipper.wait(60) == 3, shipper.stderr[-3000:]
        finally:
            shipper.ensure_stopped()
        assert sorted(delivered(intake)) == list(range(2000))
        crash = [log for log in intake.logs if log.get("stream") == "stderr"]
        assert len(crash) == 1 and "at main (/srv/app/main.js:1:1)" in str(crash[0]), crash
