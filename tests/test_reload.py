"""SIGHUP reloads the config (issue #15): the real `shipper run` on a tailed file or a pipe, its
config edited and reloaded while it runs. What is unchanged runs on untouched, what changed applies
to what is read after the reload, an invalid edit keeps the running config, and nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.config import parse_config
from shipper.reload import ConfigDiff, diff_configs
from tests.conftest import free_port
from tests.fakes.collector import Collector
from tests.procutil import RECENT_MS, ShipperProcess, delivered_ids, line_id, pino_lines, wait_for

REPLAYABLE = {"file": True, "supabase": True, "stdin": False, "process": False}


def file_sink(name: str, path: Path, source: str = "api", extra: str = "") -> str:
    return (
        f'[sinks.{name}]\ntype = "file"\ninputs = ["{source}"]\npath = "{path}"\n'
        f'batch = {{ timeout = "50ms" }}\n{extra}\n'
    )


def agent(tmp_path: Path, workers: int, api_port: int | None = None) -> str:
    api = f'[api]\nenabled = true\naddress = "127.0.0.1:{api_port}"\n\n' if api_port else ""
    return f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\nparse_workers = {workers}\n\n{api}'


def tailed(app: Path) -> str:
    return f'[sources.api]\ntype = "file"\ninclude = ["{app}"]\nstart_at = "beginning"\npoll_interval = "50ms"\n\n'


def append(app: Path, ids: range) -> None:
    with open(app, "ab") as handle:
        handle.write(pino_lines(ids))


def reloads(shipper: ShipperProcess) -> list[dict[str, Any]]:
    """The agent's log lines about reloads, in order: one per SIGHUP."""
    return [line for line in shipper.logs() if line["msg"].startswith("config reload")]


def reload(shipper: ShipperProcess) -> dict[str, Any]:
    """Send SIGHUP and return the log line that says how the reload went."""
    before = len(reloads(shipper))
    shipper.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(reloads(shipper)) > before, 20, "the reload's log line")
    assert shipper.proc.poll() is None, shipper.stderr[-3000:]
    return reloads(shipper)[before]


def scrape(port: int) -> dict[str, float]:
    """The config reload series of /metrics, by sample name and labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("shipper_config_"))
    return {name: float(value) for name, value in samples}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.log"
    path.touch()
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_an_added_sink_gets_what_is_read_after_the_reload_and_the_other_runs_on(
    tmp_path: Path, app: Path, workers: int
) -> None:
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    config = tmp_path / "config.toml"
    config.write_text(agent(tmp_path, workers) + tailed(app) + file_sink("first", first))
    shipper = ShipperProcess(config, tmp_path)
    try:
        append(app, range(1000))
        wait_for(lambda: len(delivered_ids(first)) >= 1000, 30, "the first lines")
        config.write_text(
            agent(tmp_path, workers) + "# a second destination\n" + tailed(app) + file_sink("first", first)
            + file_sink("second", second)
        )  # fmt: skip
        done = reload(shipper)
        assert done["msg"] == "config reloaded"
        assert (done["sinks_added"], done["sinks_unchanged"], done["sources_kept"]) == (["second"], ["first"], ["api"])
        append(app, range(1000, 2000))
        wait_for(lambda: len(delivered_ids(second)) >= 1000, 30, "the lines after the reload in the second sink")
        wait_for(lambda: len(delivered_ids(first)) >= 2000, 30, "every line in the first sink")
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
    assert delivered_ids(first) == list(range(2000))  # each once, in order: its sink was never restarted
    assert delivered_ids(second) == list(range(1000, 2000))


def test_an_invalid_edit_keeps_the_running_config_and_a_fixed_one_applies(tmp_path: Path, app: Path) -> None:
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    port = free_port()
    config = tmp_path / "config.toml"
    valid = agent(tmp_path, 0, port) + tailed(app) + file_sink("first", first)
    config.write_text(valid)
    shipper = ShipperProcess(config, tmp_path)
    try:
        append(app, range(100))
        wait_for(lambda: len(delivered_ids(first)) >= 100, 30, "the first lines")
        invalid = valid + file_sink("second", second, extra="max_sise = 1000")
        config.write_text(invalid)
        line = invalid.splitlines().index("max_sise = 1000") + 1
        failed = reload(shipper)
        assert failed["level"] == "error" and failed["msg"] == "config reload failed; the running config is kept"
        assert (failed["key"], failed["line"]) == ("sinks.second.max_sise", line)
        assert f"{config}:{line}: sinks.second.max_sise: unknown key; did you mean max_size?" == failed["error"]
        metrics = scrape(port)
        assert metrics['shipper_config_reloads_total{result="failure"}'] == 1
        assert metrics["shipper_config_last_reload_success"] == 0
        append(app, range(100, 200))  # the running pipeline goes on
        wait_for(lambda: len(delivered_ids(first)) >= 200, 30, "the lines after the failed reload")

        config.write_text(valid + file_sink("second", second, extra="max_size = 1000000"))
        assert reload(shipper)["msg"] == "config reloaded"
        metrics = scrape(port)
        assert metrics['shipper_config_reloads_total{result="success"}'] == 1
        assert metrics["shipper_config_last_reload_success"] == 1
        assert time.time() - metrics["shipper_config_last_reload_timestamp_seconds"] < 30
        append(app, range(200, 300))
        wait_for(lambda: len(delivered_ids(second)) >= 100, 30, "the second sink, added by the fixed config")
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
    assert delivered_ids(first) == list(range(300))
    assert delivered_ids(second) == list(range(200, 300))


def test_a_changed_sink_path_under_load_delivers_every_line_once_in_order(tmp_path: Path, app: Path) -> None:
    before, after = tmp_path / "before.ndjson", tmp_path / "after.ndjson"
    config = tmp_path / "config.toml"
    config.write_text(agent(tmp_path, 1) + tailed(app) + file_sink("out", before))
    total, rate = 6000, 2000  # lines, lines a second
    shipper = ShipperProcess(config, tmp_path)

    def write() -> None:
        for tick in range(total * 20 // rate):
            append(app, range(tick * rate // 20, (tick + 1) * rate // 20))
            time.sleep(0.05)

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        wait_for(lambda: len(delivered_ids(before)) >= rate, 30, "a second's lines before the reload")
        config.write_text(agent(tmp_path, 1) + tailed(app) + file_sink("out", after))
        done = reload(shipper)
        assert (done["sinks_changed"], done["sources_kept"]) == (["out"], ["api"])
        writer.join(30)
        wait_for(lambda: len(delivered_ids(before)) + len(delivered_ids(after)) >= total, 30, "every line")
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
    old, new = delivered_ids(before), delivered_ids(after)
    print(f"\n[reload] sink path changed under load: {len(old)} lines before, {len(new)} after, of {total}")
    assert new, "nothing reached the new path"
    assert old + new == list(range(total))  # every line once, in order across the handover


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stdin_source_routes_by_a_changed_when_without_blocking_its_producer(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "out.ndjson"
    config = tmp_path / "config.toml"
    stdin = '[sources.api]\ntype = "stdin"\n\n'
    config.write_text(agent(tmp_path, workers) + stdin + file_sink("out", out, extra='when = { level = "error" }'))

    def lines(ids: range) -> bytes:  # even ids are errors, odd ones info
        return b"".join(
            orjson.dumps({"level": 50 if i % 2 == 0 else 30, "time": RECENT_MS + i, "msg": f"line {i}"}) + b"\n"
            for i in ids
        )

    shipper = ShipperProcess(config, tmp_path, stdin=subprocess.PIPE)
    assert shipper.proc.stdin is not None
    producer = shipper.proc.stdin
    slowest = 0.0

    def produce(ids: range) -> None:
        nonlocal slowest
        for start in range(ids.start, ids.stop, 10):
            began = time.monotonic()
            producer.write(lines(range(start, min(start + 10, ids.stop))))
            producer.flush()
            slowest = max(slowest, time.monotonic() - began)

    try:
        produce(range(200))
        wait_for(lambda: len(delivered_ids(out)) >= 100, 30, "the errors before the reload")
        config.write_text(agent(tmp_path, workers) + stdin + file_sink("out", out, extra='when = { level = "info" }'))
        done = reload(shipper)
        assert (done["sinks_unchanged"], done["sources_kept"], done["sources_restarted"]) == (["out"], ["api"], [])
        produce(range(200, 400))
        producer.close()
        shipper.proc.stdin = None
        assert shipper.wait(30) == 0  # stdin at EOF: drained, then exit
    finally:
        shipper.ensure_stopped()
    print(f"\n[reload] stdin producer: slowest write {slowest * 1000:.1f} ms")
    assert delivered_ids(out) == list(range(0, 200, 2)) + list(range(200, 400))
    assert slowest < 1.0


def test_a_removed_sink_stops_and_a_changed_file_source_restarts_from_its_checkpoints(
    tmp_path: Path, app: Path
) -> None:
    kept, dropped = tmp_path / "kept.ndjson", tmp_path / "dropped.ndjson"
    other = tmp_path / "other.log"
    config = tmp_path / "config.toml"
    config.write_text(agent(tmp_path, 1) + tailed(app) + file_sink("kept", kept) + file_sink("dropped", dropped))
    shipper = ShipperProcess(config, tmp_path)
    try:
        append(app, range(500))
        wait_for(lambda: len(delivered_ids(dropped)) >= 500, 30, "the lines before the reload")
        widened = tailed(app).replace(f'include = ["{app}"]', f'include = ["{app}", "{other}"]')
        config.write_text(agent(tmp_path, 1) + widened + file_sink("kept", kept))
        done = reload(shipper)
        assert (done["sinks_removed"], done["sources_restarted"]) == (["dropped"], ["api"])
        append(app, range(500, 1000))
        append(other, range(1000, 1500))  # read only by the restarted source
        wait_for(lambda: set(delivered_ids(kept)) >= set(range(1500)), 30, "every line in the kept sink")
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
    ids = delivered_ids(kept)
    print(f"\n[reload] source restarted: {len(ids)} lines delivered of 1500, {len(ids) - len(set(ids))} twice")
    assert delivered_ids(dropped) == list(range(500))  # nothing after its removal
    assert [i for i in ids if i < 1000] == list(range(1000))  # read on from the checkpoint: none twice, none skipped


def test_a_removed_sink_keeps_its_disk_buffer_until_it_is_configured_again(tmp_path: Path, app: Path) -> None:
    """Removed during an outage, a sink with a disk buffer leaves its records there (the kept sink's
    source goes on); configured again, it sends them."""
    kept = tmp_path / "kept.ndjson"
    collector = Collector().start()
    collector.fail_status = 503
    remote = (
        f'[sinks.remote]\ntype = "http"\ninputs = ["api"]\nurl = "{collector.url}"\nbatch = {{ timeout = "50ms" }}\n'
        'retry = { initial_backoff = "50ms", max_backoff = "200ms" }\nbuffer = { type = "disk" }\n\n'
    )
    head = agent(tmp_path, 0).replace('shutdown_timeout = "10s"', 'shutdown_timeout = "1s"') + tailed(app)
    config = tmp_path / "config.toml"
    config.write_text(head + file_sink("kept", kept) + remote)
    shipper = ShipperProcess(config, tmp_path)
    buffer = tmp_path / "state" / "buffers" / "remote"
    try:
        append(app, range(300))
        wait_for(lambda: len(delivered_ids(kept)) >= 300 and any(buffer.glob("*.seg")), 30, "both sinks to take it")
        config.write_text(head + file_sink("kept", kept))
        assert reload(shipper)["sinks_removed"] == ["remote"]
        wait_for(lambda: any("disk buffer keeps" in line["msg"] for line in shipper.logs()), 20, "the warning")
        append(app, range(300, 400))
        wait_for(lambda: len(delivered_ids(kept)) >= 400, 30, "the kept sink going on")
        assert any(buffer.glob("*.seg")) and collector.events == []

        collector.fail_status = None
        config.write_text(head + file_sink("kept", kept) + remote)
        assert reload(shipper)["sinks_added"] == ["remote"]
        wait_for(lambda: {line_id(e) for e in collector.events} >= set(range(300)), 30, "the buffered lines sent")
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
        collector.stop()
    assert delivered_ids(kept) == list(range(400))
    assert not [line for line in shipper.logs() if line.get("reason") == "sink_removed"]  # nothing dropped


# ---------------------------------------------------------------- the config diff


def diff(old: str, new: str) -> ConfigDiff:
    before, after = parse_config(old), parse_config(new)
    return diff_configs(before, after, dict(before.sources), dict(after.sources), REPLAYABLE)


BASE = """
[agent]
state_dir = "/tmp/state"

[sources.api]
type = "file"
include = ["/var/log/api.log"]

[sources.pipe]
type = "stdin"

[sinks.out]
type = "file"
inputs = ["api", "pipe"]
path = "/tmp/out.ndjson"
"""


def test_formatting_and_comments_are_no_change() -> None:
    reformatted = "# edited\n" + BASE.replace('type = "file"\ninputs', 'type="file"   # the file sink\ninputs')
    change = diff(BASE, reformatted)
    assert (change.sinks_unchanged, change.sources_kept) == (["out"], ["api", "pipe"])
    assert not (change.sinks_changed or change.sources_restarted or change.needs_restart)


def test_a_sinks_routing_keys_leave_its_driver_alone() -> None:
    change = diff(BASE, BASE.replace('inputs = ["api", "pipe"]', 'inputs = ["api"]\nwhen = { level = "warn" }'))
    assert change.sinks_unchanged == ["out"] and not change.sinks_changed


def test_a_sinks_own_settings_change_it_and_a_new_type_replaces_it() -> None:
    assert diff(BASE, BASE + "max_files = 2\n").sinks_changed == ["out"]
    replaced = diff(
        BASE, BASE.replace('path = "/tmp/out.ndjson"', 'format = "json"').replace('"file"\ninputs', '"console"\ninputs')
    )
    assert (replaced.sinks_removed, replaced.sinks_added) == (["out"], ["out"])
    resized = diff(BASE, BASE + 'buffer = { max_bytes = "1MiB" }\n')
    assert resized.sinks_changed == ["out"] and resized.needs_restart == ["sinks.out.buffer"]


def test_a_replayable_source_restarts_and_a_stdin_change_waits_for_a_restart() -> None:
    edited = BASE.replace('[sources.pipe]\ntype = "stdin"', '[sources.pipe]\ntype = "stdin"\nformat = "text"')
    change = diff(BASE, edited.replace('include = ["/var/log/api.log"]', 'include = ["/var/log/api*.log"]'))
    assert change.sources_restarted == ["api"] and change.sources_kept == ["pipe"]
    assert change.needs_restart == ["sources.pipe.format"]


def test_redaction_restarts_replayable_sources_and_agent_keys_apply_live_or_wait() -> None:
    change = diff(BASE, BASE + "\n[redact]\nemails = true\n")
    assert change.sources_restarted == ["api"] and change.needs_restart == ["redact.emails"]
    agent_keys = BASE.replace(
        'state_dir = "/tmp/state"', 'state_dir = "/tmp/other"\nlog_level = "debug"\nparse_workers = 0'
    )
    change = diff(BASE, agent_keys + '\n[api]\naddress = "127.0.0.1:9999"\n')
    assert change.needs_restart == ["agent.state_dir", "agent.parse_workers", "api.address"]  # log_level is live
    assert not change.sources_restarted


def test_added_and_removed_sources() -> None:
    added = BASE + '\n[sources.more]\ntype = "file"\ninclude = ["/var/log/more.log"]\n'
    change = diff(BASE, added.replace('inputs = ["api", "pipe"]', 'inputs = ["api", "pipe", "more"]'))
    assert change.sources_added == ["more"]
    change = diff(added.replace('inputs = ["api", "pipe"]', 'inputs = ["api", "pipe", "more"]'), BASE)
    assert change.sources_removed == ["more"]
