"""The promise users trust most: a file's checkpoint never moves past data a sink has not accepted,
across a restart in the middle of an outage."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from shipper.agent import EXIT_LOST
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


NO_DISK_BUFFER = "buffer = { spill_max_bytes = 0 }\n"


def stdin_config(tmp_path: Path, url: str, sink: str = "") -> Path:
    """stdin to the collector, with a short shutdown deadline and fast retries."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "500ms"\n[sources.api]\ntype = "stdin"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{url}"\n'
        'retry = { initial_backoff = "50ms", max_backoff = "200ms" }\n' + sink
    )
    return path


def sigterm_in_an_outage(config: Path, collector: Collector) -> tuple[int, list[dict[str, Any]]]:
    """300 lines piped into shipper while the collector answers 503, then SIGTERM: the exit code and
    shipper's log lines."""
    collector.fail_status = 503
    shipper = Shipper(["run", "--config", str(config)])
    try:
        shipper.feed(pino_lines(range(300)), close=False)
        wait_for(lambda: collector.requests >= 3, 20, "retries against the failing collector")
        shipper.proc.send_signal(signal.SIGTERM)
    finally:
        code = shipper.wait(20)
    return code, [orjson.loads(line) for line in shipper.stderr.splitlines() if line.startswith(b'{"ts"')]


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
    [cut] = [m for m in first.logs() if "resent_on_restart" in m]
    assert cut["resent_on_restart"] > 0 and cut["source"] == "api"
    assert cut["level"] == "warning"  # a file is read again; nothing is lost, so no error
    assert not [m for m in first.logs() if m["level"] == "error" and "lost" in m]

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


def test_without_a_disk_buffer_stdin_events_cut_by_the_deadline_are_lost_loudly_with_exit_code_3(
    tmp_path: Path, collector: Collector
) -> None:
    code, logs = sigterm_in_an_outage(stdin_config(tmp_path, collector.url, NO_DISK_BUFFER), collector)
    assert code == EXIT_LOST, logs  # a supervisor sees that data was lost
    [cut] = [m for m in logs if "lost" in m]
    assert cut["level"] == "error" and cut["lost"] == 300 and cut["source"] == "api" and cut["sink"] == "collector"
    assert not [m for m in logs if "resent_on_restart" in m]  # stdin cannot be read again


def test_stdin_events_cut_by_the_deadline_wait_in_the_disk_buffer_for_the_next_run(
    tmp_path: Path, collector: Collector
) -> None:
    """SIGTERM during an outage: what stdin handed shipper is written to the sink's disk buffer (by
    default), exit 0, and the next run delivers it first, once, in order."""
    config = stdin_config(tmp_path, collector.url)
    code, logs = sigterm_in_an_outage(config, collector)
    assert code == 0, logs
    [kept] = [m for m in logs if "kept" in m]
    assert kept["kept"] == 300 and kept["level"] == "warning" and kept["sink"] == "collector"
    assert not [m for m in logs if "lost" in m]
    assert collector.events == []

    collector.fail_status = None
    second = Shipper(["run", "--config", str(config)])
    second.feed(pino_lines(range(300, 400)))  # the next run's own input comes after the kept events
    assert second.wait(30) == 0, second.stderr.decode()[-3000:]
    assert [line_id(e) for e in collector.events] == list(range(400))
    assert not list((tmp_path / "state" / "buffers" / "collector").glob("*.seg"))  # delivered, so deleted


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


def test_a_wrapped_api_exiting_cleanly_still_exits_3_when_its_events_are_lost(
    tmp_path: Path, collector: Collector
) -> None:  # (without a disk buffer to keep them)
    """The wrapped API's exit code is shipper's, but a clean 0 must not hide that its logs were lost."""
    collector.fail_status = 503
    app = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"  # a graceful server
        'print("".join(\'{"level":30,"msg":"line %d"}\\n\' % i for i in range(100)), end="", flush=True)\n'
        "while True: time.sleep(1)\n"
    )
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "500ms"\n'
        '[sources.app]\ntype = "process"\npassthrough = false\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["app"]\nurl = "{collector.url}"\n'
        'retry = { initial_backoff = "50ms", max_backoff = "200ms" }\n' + NO_DISK_BUFFER
    )
    shipper = ShipperProcess(path, tmp_path, command=[sys.executable, "-c", app])
    try:
        wait_for(lambda: collector.requests >= 3, 20, "retries against the failing collector")
        code = shipper.stop(signal.SIGTERM)
    finally:
        shipper.ensure_stopped()
    assert code == EXIT_LOST, shipper.stderr[-3000:]
    assert any(m.get("msg") == "wrapped process exited" and m.get("exit_code") == 0 for m in shipper.logs())
    [cut] = [m for m in shipper.logs() if "lost" in m]
    assert cut["level"] == "error" and cut["lost"] == 100 and cut["source"] == "app"
