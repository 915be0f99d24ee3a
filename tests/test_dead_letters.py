"""Dead letters: events a destination refused for good are parked in a bounded NDJSON file with
the reason, read back by `shipper tail`, and sent again by a plain `shipper run`."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import metrics
from shipper.config import DeadLetterConfig, config_from_dict
from shipper.event import Encoded, Event
from shipper.health import iso
from shipper.pipeline.channel import Channel
from shipper.pipeline.deadletter import KEY, DeadLetters
from shipper.pipeline.driver import SinkDriver
from sinks import build_sink
from tests.conftest import run_shipper
from tests.driving import deliver
from tests.fakes.collector import Collector
from tests.procutil import ShipperProcess, wait_for


def sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def app_event(i: int) -> Event:
    """An event as parsing leaves it (the http sink prepares it into its wire form)."""
    fields = {
        "timestamp": iso(time.time()),
        "level": "error",
        "message": f"payment {i} failed",
        "source": "api",
        "host": "vm",
        "service": "billing",
        "order": {"id": i, "lines": [1, 2]},
    }
    return Event(fields, orjson.dumps(fields))


def http_driver(name: str, url: str, dead_letter: Path) -> SinkDriver:
    doc = {
        "sources": {"api": {"type": "stdin"}},
        "sinks": {name: {"type": "http", "inputs": ["api"], "url": url, "retry": {"initial_backoff": 0.01}}},
    }
    sink = build_sink(name, config_from_dict(doc, None, environ={}).sinks[name])
    dead_letters = DeadLetters(name, DeadLetterConfig(path=dead_letter))
    return SinkDriver(sink, Channel(name, 1 << 30, "block"), dead_letters=dead_letters)


def refused_by_http(tmp_path: Path, events: int = 3) -> Path:
    """A dead-letter file made by `shipper run`, dead letters on for every sink (`[agent]`), its
    http sink's collector answering 400 to pino lines read on stdin."""
    now = int(time.time() * 1000)
    lines = b"".join(
        orjson.dumps({"level": 50, "time": now + i, "hostname": "vm", "msg": f"payment {i} failed", "order": {"id": i}})
        + b"\n"
        for i in range(events)
    )
    collector = Collector(fail_status=400).start()
    config = tmp_path / "refused.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path}"\ndead_letter = {{ max_bytes = "1MiB" }}\n'
        '[sources.api]\ntype = "stdin"\nservice = "billing"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{collector.url}"\n'
    )
    try:
        shipper = run_shipper(["run", "--config", str(config)], lines)
    finally:
        collector.stop()
    assert shipper.proc.returncode == 0, shipper.stderr.decode()
    return tmp_path / "dead_letter" / "collector.ndjson"


def test_events_a_collector_refuses_are_parked_with_the_reason_and_the_checkpoint_moves(tmp_path: Path) -> None:
    collector = Collector(fail_status=400).start()
    path = tmp_path / "dead_letter" / "refused.ndjson"
    parked = sample("shipper_dead_letters_total", sink="refused", reason="http_400")
    dropped = sample("shipper_events_dropped_total", sink="refused", reason="http_400")
    try:
        commits = asyncio.run(deliver(http_driver("refused", collector.url, path), [[app_event(i) for i in range(3)]]))
    finally:
        collector.stop()
    assert commits == [1] and collector.requests == 1  # refused for good: never retried
    letters = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [letter["message"] for letter in letters] == ["payment 0 failed", "payment 1 failed", "payment 2 failed"]
    assert letters[1]["order"] == {"id": 1, "lines": [1, 2]} and letters[1]["service"] == "billing"
    meta = letters[0][KEY]
    assert {k: meta[k] for k in ("sink", "source", "reason", "detail")} == {
        "sink": "refused",
        "source": "api",
        "reason": "http_400",
        "detail": "failing on purpose",
    }
    assert meta["time"].endswith("Z") and abs(datetime.fromisoformat(meta["time"]).timestamp() - time.time()) < 60
    assert sample("shipper_dead_letters_total", sink="refused", reason="http_400") - parked == 3
    assert sample("shipper_events_dropped_total", sink="refused", reason="http_400") - dropped == 3


async def test_dead_letter_files_are_bounded_and_rotated(tmp_path: Path) -> None:
    path = tmp_path / "rotated.ndjson"
    dead_letters = DeadLetters("rotated", DeadLetterConfig(path=path, max_bytes=2000, max_files=2))
    for batch in range(40):
        events = [
            Encoded({"source": "api"}, orjson.dumps({"message": f"{batch}-{i}" + "x" * 80}), None) for i in range(3)
        ]
        dead_letters.park([(event, "too_old", "entry too old") for event in events])
    await dead_letters.settled()
    await dead_letters.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rotated.ndjson", "rotated.ndjson.1", "rotated.ndjson.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    newest = [orjson.loads(line)["message"][:4] for line in path.read_bytes().splitlines()]
    assert newest[-1] == "39-2"


async def test_a_dead_letter_write_that_fails_is_counted_and_logged_and_delivery_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    path = tmp_path / "not-a-directory" / "dead.ndjson"
    collector = Collector(fail_status=400).start()
    errors = sample("shipper_dead_letter_errors_total", sink="unwritable")
    dropped = sample("shipper_events_dropped_total", sink="unwritable", reason="http_400")
    try:
        with caplog.at_level(logging.ERROR, "shipper.deadletter"):
            commits = await deliver(http_driver("unwritable", collector.url, path), [[app_event(i) for i in range(2)]])
    finally:
        collector.stop()
    assert commits == [1]
    assert sample("shipper_dead_letter_errors_total", sink="unwritable") - errors == 2
    assert sample("shipper_events_dropped_total", sink="unwritable", reason="http_400") - dropped == 2
    assert any("could not write dead letters" in record.getMessage() for record in caplog.records)


def test_tail_shows_a_dead_letter_with_its_message_and_reason(tmp_path: Path) -> None:
    path = refused_by_http(tmp_path, events=2)
    shipper = ShipperProcess(None, tmp_path, cli=["tail", "--file", str(path), "--from-start"])
    try:
        wait_for(lambda: shipper.stdout.count(b"\n") >= 2, 30, "both dead letters")
    finally:
        shipper.ensure_stopped()
    first = shipper.stdout.decode().splitlines()[0]
    assert " ERROR billing payment 0 failed " in first and '"reason":"http_400"' in first, first


def test_shipper_run_reading_a_dead_letter_file_sends_the_original_events_again(tmp_path: Path) -> None:
    path = refused_by_http(tmp_path)
    original = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    collector = Collector().start()
    config = tmp_path / "resend.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path}/resend-state"\n'
        '[sources.dead_letters]\ntype = "stdin"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["dead_letters"]\nurl = "{collector.url}"\n'
    )
    try:
        shipper = run_shipper(["run", "--config", str(config)], path.read_bytes())
        assert shipper.proc.returncode == 0, shipper.stderr.decode()
        received: list[dict[str, Any]] = list(collector.events)
    finally:
        collector.stop()
    assert len(received) == 3
    for sent, again in zip(original, received, strict=True):
        # The event again, field for field (its time, level, message, service and the app's own
        # fields), marked by `shipper.dead_letter`; the source that read it first is kept aside.
        assert {**again, "source": "api"} == {**sent, "original_source": "api"}
        assert again["source"] == "dead_letters"
