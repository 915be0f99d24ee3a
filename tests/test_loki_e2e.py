"""The real `shipper` process shipping the captured corpus to the fake Loki over loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import CORPUS, REPO, Shipper, clock_env, needs_corpus
from tests.fakes.loki import FakeLoki
from tests.procutil import ShipperProcess, moved_to_recent, wait_for

TOKEN = "glc_loki-e2e-secret-9f8e7d6c5b4a"
ENV = {"LOKI_TOKEN": TOKEN}
USER = "123456"

Key = tuple[Any, ...]
WORKERS = pytest.mark.parametrize("workers", [0, 1], ids=["in-agent", "parse-worker"])


def write_config(tmp_path: Path, endpoint: str, source: str = "", extra: str = "", workers: int = 1) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\nparse_workers = {workers}\n\n'
        + (source or '[sources.api]\ntype = "stdin"\n')
        + '\n[sinks.loki]\ntype = "loki"\ninputs = ["api"]\n'
        f'endpoint = "{endpoint}"\nusername = "{USER}"\npassword = "${{LOKI_TOKEN}}"\n'
        'structured_metadata = { request_id = "{reqId}" }\n'
        'retry = { initial_backoff = "50ms", max_backoff = "500ms" }\n'
        f"{extra}\n"
    )
    return path


def corpus() -> tuple[bytes, Counter[Key]]:
    data = moved_to_recent((CORPUS / "fastify-pino.ndjson").read_bytes())
    return data, Counter(identity(orjson.loads(line)) for line in data.splitlines())


def identity(doc: dict[str, Any]) -> Key:
    """A corpus line, or the line Loki stored for it: pino's time, message and request id."""
    return (doc["time"], doc.get("msg", doc.get("message")), doc.get("reqId"))


def stored(fake: FakeLoki) -> Counter[Key]:
    return Counter(identity(orjson.loads(entry.line)) for entry in fake.entries())


def compare(expected: Counter[Key], got: Counter[Key]) -> tuple[int, int]:
    """(lost, duplicated)."""
    return sum((expected - got).values()), sum((got - expected).values())


def assert_clean(output: bytes | str, fake: FakeLoki) -> None:
    text = output.decode() if isinstance(output, bytes) else output
    assert TOKEN not in text, "the token leaked into shipper's output"
    assert not fake.reserved_labels
    for stream in fake.streams():
        assert set(stream.labels) <= {"service", "level", "source", "service_name"}
        assert len(stream.labels) <= 4


@needs_corpus
@WORKERS
def test_healthy_loki_gets_every_event_exactly_once_in_order(tmp_path: Path, workers: int) -> None:
    data, expected = corpus()
    with FakeLoki(basic_auth=(USER, TOKEN)).threaded() as fake:
        shipper = Shipper(["run", "--config", str(write_config(tmp_path, fake.url, workers=workers))], env=ENV)
        assert shipper.wait(30, data) == 0, shipper.stderr.decode()[-3000:]
        assert compare(expected, stored(fake)) == (0, 0)
        assert {p.status for p in fake.pushes} == {204} and {p.content_encoding for p in fake.pushes} == {"gzip"}
        assert fake.rejected == {} and fake.hidden_rejections == 0 and fake.deduplicated == 0
        levels = {10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal"}
        written = [orjson.loads(line) for line in data.splitlines()]
        for stream in fake.streams():
            # Queried by time, each stream reads as pino wrote it: in time order, equal times as written.
            mine = [
                identity(doc)
                for doc in sorted(written, key=lambda d: d["time"])
                if levels[doc["level"]] == stream.labels["level"]
            ]
            by_time = sorted(stream.entries, key=lambda entry: entry.ts_ns)
            assert [identity(orjson.loads(entry.line)) for entry in by_time] == mine
            lines = [orjson.loads(entry.line) for entry in stream.entries]
            assert all("level" not in line and "service" not in line for line in lines)
            assert {e.metadata.get("request_id") for e in stream.entries if "reqId" in orjson.loads(e.line)} != {None}
        assert_clean(shipper.stdout + shipper.stderr, fake)


@needs_corpus
def test_storms_of_429_5xx_and_stream_limits_lose_nothing(tmp_path: Path) -> None:
    data, expected = corpus()
    with FakeLoki(basic_auth=(USER, TOKEN)).threaded() as fake:
        fake.fail_next(3, 429, retry_after="0.2")
        fake.fail_next(2, 503, retry_after="0.1")
        fake.limit_streams({"level": "info"}, count=3)
        extra = 'batch = { max_events = 50, timeout = "100ms" }'
        shipper = Shipper(["run", "--config", str(write_config(tmp_path, fake.url, extra=extra))], env=ENV)
        cut = data.index(b"\n", len(data) // 2) + 1
        shipper.feed(data[:cut], close=False)
        time.sleep(1.2)
        fake.fail_next(2, 502)
        fake.fail_next(2, 413)  # a gateway's payload-too-large: split, never dropped
        assert shipper.wait(60, data[cut:]) == 0, shipper.stderr.decode()[-3000:]
        lost, duplicated = compare(expected, stored(fake))
        print(f"storm: {len(fake.pushes)} pushes {dict(fake.statuses)}; lost {lost}, duplicated {duplicated}")
        assert lost == 0 and fake.hidden_rejections == 0
        assert {429, 503, 502, 413} <= set(fake.statuses)
        assert_clean(shipper.stdout + shipper.stderr, fake)


def pino(ms: int, index: int, message: str) -> bytes:
    return orjson.dumps({"level": 30, "time": ms, "pid": 7, "hostname": "vm", "reqId": f"r{index}", "msg": message})


@WORKERS
def test_a_file_replayed_after_newer_data_was_pushed_is_not_refused(tmp_path: Path, workers: int) -> None:
    """The live API's lines reached Loki first; then an older log file of the same service (hours
    behind, a restart's backlog or a rotated file read from its start) is shipped: Loki refuses
    entries more than 1 h behind their stream's newest, so the sink re-stamps them to fit and
    every line arrives, keeping its own time in the line."""
    now = int(time.time() * 1000)
    old_file = tmp_path / "old.log"
    old_start = now - 3 * 3600 * 1000
    old_file.write_bytes(b"".join(pino(old_start + i * 60_000, i, f"old {i}") + b"\n" for i in range(120)))
    source = '[sources.api]\ntype = "file"\ninclude = ["' + str(old_file) + '"]\nstart_at = "beginning"\n'
    with FakeLoki(basic_auth=(USER, TOKEN)).threaded() as fake:
        (tmp_path / "live").mkdir()
        live = Shipper(["run", "--config", str(write_config(tmp_path / "live", fake.url, workers=workers))], env=ENV)
        assert live.wait(30, pino(now, 9999, "live now") + b"\n") == 0, live.stderr.decode()[-2000:]
        assert [orjson.loads(e.line)["message"] for e in fake.entries()] == ["live now"]
        shipper = ShipperProcess(write_config(tmp_path, fake.url, source=source, workers=workers), tmp_path, env=ENV)
        try:
            wait_for(lambda: len(fake.entries()) >= 121, 30, "every old line stored")
            assert shipper.stop() == 0
        finally:
            shipper.ensure_stopped()
        messages = Counter(orjson.loads(e.line)["message"] for e in fake.entries())
        assert messages == Counter({"live now": 1, **{f"old {i}": 1 for i in range(120)}})
        [stream] = [s for s in fake.streams() if any("old" in e.line for e in s.entries)]
        times = [e.ts_ns for e in stream.entries if "old" in e.line]
        assert times == sorted(times) and min(times) >= (now - 3600 * 1000) * 1_000_000  # in order, accepted
        assert fake.rejected.get("too_far_behind", 0) > 0  # Loki did refuse the first try; none was lost
        first_old = next(orjson.loads(e.line) for e in stream.entries if "old 0" in e.line)
        assert first_old["time"] == old_start  # the line keeps its own time
        assert_clean(shipper.stderr, fake)


def test_shipper_check_proves_the_credentials_without_writing(tmp_path: Path) -> None:
    with FakeLoki(basic_auth=(USER, TOKEN)).threaded() as fake:
        config = write_config(tmp_path, fake.url)
        result = subprocess.run(
            [sys.executable, "-m", "shipper", "check", "--config", str(config)],
            capture_output=True, cwd=REPO, env={**clock_env(), **ENV, "PATH": "/usr/bin:/bin"}, timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert b"accepted" in result.stdout and fake.entries() == []
        refused = subprocess.run(
            [sys.executable, "-m", "shipper", "check", "--config", str(config)],
            capture_output=True, cwd=REPO, env={**clock_env(), "LOKI_TOKEN": "wrong", "PATH": "/usr/bin:/bin"},
            timeout=60, check=False,
        )  # fmt: skip
        assert refused.returncode == 1 and b"401" in refused.stdout
        assert TOKEN.encode() not in result.stdout + result.stderr + refused.stdout + refused.stderr


@needs_corpus
@WORKERS
def test_raw_lines_arrive_byte_for_byte_colours_and_stack_traces_included(tmp_path: Path, workers: int) -> None:
    """`line = "raw"`: Nest's coloured text, multi-line stack traces and all, is stored exactly as
    the app printed it (escape codes and newlines travel JSON-escaped, never re-serialized)."""
    data = (CORPUS / "nest-text-color.log").read_bytes()
    with FakeLoki(basic_auth=(USER, TOKEN)).threaded() as fake:
        config = write_config(tmp_path, fake.url, extra='line = "raw"', workers=workers)
        shipper = Shipper(["run", "--config", str(config)], env=ENV)
        assert shipper.wait(30, data) == 0, shipper.stderr.decode()[-3000:]
        stored_lines = Counter(line for entry in fake.entries() for line in entry.line.split("\n"))
        assert stored_lines == Counter(data.decode().rstrip("\n").split("\n"))
        assert any("\n" in entry.line for entry in fake.entries())  # a stack trace kept as one entry
        assert fake.rejected == {}
        assert_clean(shipper.stdout + shipper.stderr, fake)
