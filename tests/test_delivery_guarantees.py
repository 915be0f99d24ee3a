"""The promise users trust most: a file's checkpoint never moves past data a sink has not accepted,
across a restart in the middle of an outage."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson

from tests.conftest import Shipper
from tests.fakes.collector import Collector
from tests.procutil import ShipperProcess, check_delivery, line_id, pino_lines, wait_for


def config(tmp_path: Path, log: Path, url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "1s"\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{log}"]\nstart_at = "beginning"\n'
        'glob_interval = "100ms"\npoll_interval = "50ms"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{url}"\n'
        'batch = { timeout = "50ms" }\nretry = { initial_backoff = "50ms", max_backoff = "200ms" }\n'
    )
    return path


def stdin_config(tmp_path: Path, url: str) -> Path:
    """stdin to the collector, with a short shutdown deadline and fast retries."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "500ms"\n[sources.api]\ntype = "stdin"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{url}"\n'
        'retry = { initial_backoff = "50ms", max_backoff = "200ms" }\n'
    )
    return path


def checkpointed_offsets(tmp_path: Path) -> list[int]:
    path = tmp_path / "state" / "checkpoints" / "api.json"
    if not path.exists():
        return []
    return [entry["offset"] for entry in orjson.loads(path.read_bytes())["state"].values()]


def test_checkpoint_holds_through_an_outage_and_a_restart(tmp_path: Path, collector: Collector) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(pino_lines(range(2000)))
    collector.fail_status = 503  # the destination is down from the start
    first = ShipperProcess(config(tmp_path, log, collector.url), tmp_path)
    try:
        wait_for(lambda: collector.requests >= 5, 20, "shipper to retry against the failing collector")
        assert first.stop(signal.SIGTERM) == 0  # the deadline passes with nothing delivered
    finally:
        first.ensure_stopped()
    assert collector.events == []
    assert checkpointed_offsets(tmp_path) in ([], [0])  # nothing was accepted, so nothing is checkpointed
    [cut] = [m for m in first.logs() if m["msg"] == "events not delivered before the shutdown deadline"]
    assert cut["lost"] == 0 and cut["resent_on_restart"] > 0  # a file is read again; nothing is lost

    collector.fail_status = None  # the destination recovers; shipper is started again
    with open(log, "ab") as handle:
        handle.write(pino_lines(range(2000, 2500)))
    second = ShipperProcess(config(tmp_path, log, collector.url), tmp_path)
    try:
        wait_for(lambda: {line_id(e) for e in collector.events} >= set(range(2500)), 30, "every line to arrive")
        assert second.stop(signal.SIGTERM) == 0
    finally:
        second.ensure_stopped()
    duplicates = check_delivery(
        "outage + restart", range(2500), [i for e in collector.events if (i := line_id(e)) is not None]
    )
    assert duplicates == 0  # nothing had been accepted before the restart, so nothing is sent twice
    assert checkpointed_offsets(tmp_path) == [log.stat().st_size]


def test_stdin_events_cut_by_the_deadline_are_counted_as_lost(tmp_path: Path, collector: Collector) -> None:
    collector.fail_status = 503
    shipper = Shipper(["run", "--config", str(stdin_config(tmp_path, collector.url))])
    shipper.feed(pino_lines(range(300)), close=False)
    wait_for(lambda: collector.requests >= 3, 20, "retries against the failing collector")
    shipper.proc.send_signal(signal.SIGTERM)
    assert shipper.wait(20) == 0
    logs = [orjson.loads(line) for line in shipper.stderr.splitlines() if line.startswith(b'{"ts"')]
    [cut] = [m for m in logs if m["msg"] == "events not delivered before the shutdown deadline"]
    assert cut["lost"] == 300 and cut["resent_on_restart"] == 0  # stdin cannot be read again: said loudly


def test_at_stdin_eof_shipper_waits_past_the_deadline_to_deliver(tmp_path: Path, collector: Collector) -> None:
    collector.fail_status = 503
    shipper = Shipper(["run", "--config", str(stdin_config(tmp_path, collector.url))])
    shipper.feed(pino_lines(range(50)))  # EOF: the input can never be read again
    wait_for(lambda: collector.requests >= 3, 20, "retries against the failing collector")
    time.sleep(1.0)
    assert shipper.proc.poll() is None  # well past shutdown_timeout: still waiting to deliver
    collector.fail_status = None
    assert shipper.wait(20) == 0  # delivered, then exited by itself
    assert sorted(line_id(e) for e in collector.events) == list(range(50))
