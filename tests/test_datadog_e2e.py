"""The real `shipper` process shipping the Fastify/pino corpus to the fake Datadog intake over loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.parsing.clock import epoch_ms
from tests.conftest import CORPUS, REPO, Shipper, clock_env, needs_corpus
from tests.fakes.datadog_intake import DatadogIntake
from tests.fakes.forward_proxy import ForwardProxy
from tests.procutil import ShipperProcess, line_id, moved_to_recent, pino_lines, wait_for

KEY = "dd-e2e-secret-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ENV = {"DD_API_KEY": KEY}

Key = tuple[Any, ...]


def write_config(tmp_path: Path, endpoint: str, extra: str = "", workers: int | str = '"auto"') -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\nparse_workers = {workers}\n\n'
        '[sources.api]\ntype = "stdin"\n\n'
        '[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "${DD_API_KEY}"\n'
        f'endpoint = "{endpoint}"\n'
        'retry = { initial_backoff = "50ms", max_backoff = "500ms" }\n'
        f"{extra}\n"
    )
    return path


def corpus() -> tuple[bytes, Counter[Key]]:
    data = moved_to_recent((CORPUS / "fastify-pino.ndjson").read_bytes())  # for Datadog's window, on any date
    keys: Counter[Key] = Counter()
    for line in data.splitlines():
        doc = orjson.loads(line)
        keys[(doc["time"], doc["msg"], doc.get("reqId"))] += 1
    return data, keys


def identity(log: dict[str, Any]) -> Key:
    """The corpus line a received log came from: its pino time, message and request id, whether or
    not the pipeline normalized `time`/`msg` into `timestamp`/`message` (and whether it was re-stamped)."""
    message = log.get("msg") if "msg" in log else log.get("message")
    stamp = log["time"] if "time" in log else epoch_ms(log.get("shipper.original_timestamp", log.get("timestamp")))
    return (stamp, message, log.get("reqId"))


def compare(expected: Counter[Key], logs: list[dict[str, Any]]) -> tuple[int, int]:
    """(lost, duplicated) events."""
    got = Counter(identity(log) for log in logs)
    lost = sum((expected - got).values())
    duplicated = sum((got - expected).values())
    return lost, duplicated


def assert_clean(shipper: Shipper, intake: DatadogIntake) -> None:
    output = shipper.stdout + shipper.stderr
    assert KEY.encode() not in output, "the API key leaked into shipper's output"
    for seen in intake.seen:
        assert seen.entries <= 1000 and seen.json_bytes <= 5_000_000
    assert intake.unindexed == [] and intake.oversized == []
    assert not [log for log in intake.logs if "shipper.original_timestamp" in log], "logs were re-stamped"


# Both ways of encoding: in the agent (no parse worker) and prepared in a parse worker.
WORKERS = pytest.mark.parametrize("workers", [0, 1], ids=["in-agent", "parse-worker"])


@needs_corpus
@WORKERS
def test_healthy_intake_gets_every_event_exactly_once(tmp_path: Path, workers: int) -> None:
    data, expected = corpus()
    with DatadogIntake([KEY]).threaded() as intake:
        config = write_config(tmp_path, intake.url, workers=workers)
        shipper = Shipper(["run", "--config", str(config)], env=ENV)
        assert shipper.wait(30, data) == 0, shipper.stderr.decode()[-3000:]
        assert compare(expected, intake.logs) == (0, 0)
        assert {s.status for s in intake.seen} == {202} and {s.encoding for s in intake.seen} == {"gzip"}
        assert_clean(shipper, intake)
        log = intake.logs[0]
        assert log["ddsource"] == "nodejs" and log["hostname"] and epoch_ms(log["timestamp"])


@needs_corpus
def test_storms_of_429_503_413_lose_nothing(tmp_path: Path) -> None:
    data, expected = corpus()
    with DatadogIntake([KEY]).threaded() as intake:
        intake.fail_next(3, 429, retry_after="0.2")
        intake.fail_next(2, 429, rate_limit_reset="0.1")
        intake.fail_for(1.0, 503)
        config = write_config(tmp_path, intake.url, 'batch = { max_events = 200, timeout = "100ms" }')
        shipper = Shipper(["run", "--config", str(config)], env=ENV)
        cut = data.index(b"\n", len(data) // 2) + 1
        shipper.feed(data[:cut], close=False)
        time.sleep(1.2)
        intake.fail_next(4, 413)  # a payload-too-large storm on the second half: split, never dropped
        intake.fail_next(2, 503)
        assert shipper.wait(60, data[cut:]) == 0, shipper.stderr.decode()[-3000:]
        lost, duplicated = compare(expected, intake.logs)
        print(f"storm: {len(intake.seen)} requests {dict(intake.statuses)}; lost {lost}, duplicated {duplicated}")
        assert lost == 0
        assert duplicated == 0  # every fault is answered before the fake stores anything
        assert {429, 503, 413} <= set(intake.statuses)
        assert_clean(shipper, intake)


@needs_corpus
def test_rejected_key_then_fixed_loses_nothing(tmp_path: Path) -> None:
    data, expected = corpus()
    with DatadogIntake(["not-the-key-shipper-has"]).threaded() as intake:
        shipper = Shipper(["run", "--config", str(write_config(tmp_path, intake.url))], env=ENV)
        shipper.feed(data)
        deadline = time.monotonic() + 15
        while intake.statuses[403] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert intake.statuses[403] >= 4 and shipper.proc.poll() is None and intake.logs == []
        intake.set_keys(KEY)  # the key is fixed (here: the intake starts accepting it)
        assert shipper.wait(30) == 0, shipper.stderr.decode()[-3000:]
        assert compare(expected, intake.logs) == (0, 0)
        assert_clean(shipper, intake)
        lines = [orjson.loads(line) for line in shipper.stderr.splitlines() if line.startswith(b"{")]
        unhealthy = [line for line in lines if "unhealthy" in line.get("msg", "")]
        assert len(unhealthy) == 1, lines  # one clear line, not one per retry
        assert f"API key for {intake.url} (HTTP 403)" in unhealthy[0]["detail"]  # the endpoint, not a site
        assert any("healthy again" in line.get("msg", "") for line in lines)


@WORKERS
def test_two_megabyte_line_arrives_truncated_never_oversized(tmp_path: Path, workers: int) -> None:
    big = b'{"level":50,"msg":"' + b"x" * 2_000_000 + b'"}\n'
    with DatadogIntake([KEY]).threaded() as intake:
        config = write_config(tmp_path, intake.url, workers=workers)
        shipper = Shipper(["run", "--config", str(config)], env=ENV)
        assert shipper.wait(30, b'{"level":30,"msg":"before"}\n' + big + b'{"level":30,"msg":"after"}\n') == 0
        assert_clean(shipper, intake)
        truncated = [log for log in intake.logs if log.get("shipper.truncated")]
        assert truncated and all(len(orjson.dumps(log)) <= 1_000_000 for log in intake.logs)
        messages = {log.get("msg", log.get("message")) for log in intake.logs}
        assert {"before", "after"} <= messages


def check(config: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "shipper", "check", "--config", str(config)],
        capture_output=True, cwd=REPO, env={**clock_env(), **ENV, "PATH": "/usr/bin:/bin"}, timeout=60, check=False,
    )  # fmt: skip


def test_shipper_check_validates_the_key_without_sending(tmp_path: Path) -> None:
    with DatadogIntake([KEY]).threaded() as intake:
        result = check(write_config(tmp_path, intake.url))
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert b"API key valid" in result.stdout and intake.seen == [] and intake.validations == 1
        intake.set_keys("another")
        result = check(write_config(tmp_path, intake.url))
        assert result.returncode == 1 and b"rejected" in result.stdout
        assert KEY.encode() not in result.stdout + result.stderr


@WORKERS
def test_an_egress_proxy_from_the_environment_carries_every_log(tmp_path: Path, workers: int) -> None:
    """Behind an egress proxy, HTTP_PROXY (credentials included) is honoured as curl and the Datadog
    Agent honour it. While the proxy refuses the credentials (407) the sink is unhealthy and keeps
    the logs, so fixing them loses nothing; the proxy's password never shows in shipper's output."""
    user, password = "shipper", "proxy-secret-5f4e3d2c1b"
    app = tmp_path / "app.log"
    app.write_bytes(pino_lines(range(300)))
    with DatadogIntake([KEY]).threaded() as intake, ForwardProxy((user, password)).threaded() as proxy:
        config = tmp_path / "proxy.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "2s"\nparse_workers = {workers}\n\n'
            f'[sources.api]\ntype = "file"\ninclude = ["{app}"]\nstart_at = "beginning"\n\n'
            '[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "${DD_API_KEY}"\n'
            f'endpoint = "{intake.url}"\nretry = {{ initial_backoff = "50ms", max_backoff = "500ms" }}\n'
            'batch = { timeout = "200ms" }\n'
        )
        env = {**ENV, "NO_PROXY": "", "no_proxy": ""}  # loopback too goes through the proxy here
        address = proxy.url.removeprefix("http://")
        refused = ShipperProcess(config, tmp_path, env={**env, "HTTP_PROXY": f"http://{user}:nope@{address}"})
        try:
            wait_for(lambda: proxy.refused >= 2, 20, "the proxy's 407 answers")
            assert refused.proc.poll() is None and intake.logs == []
            refused.stop()
        finally:
            refused.ensure_stopped()
        assert "HTTP 407" in refused.stderr and "unhealthy" in refused.stderr

        shipper = ShipperProcess(config, tmp_path, env={**env, "HTTP_PROXY": f"http://{user}:{password}@{address}"})
        try:
            wait_for(lambda: len(intake.logs) >= 300, 30, "every log through the proxy")
            assert shipper.stop() == 0
        finally:
            shipper.ensure_stopped()
        assert sorted(i for i in map(line_id, intake.logs) if i is not None) == list(range(300))
        assert proxy.forwarded == len(intake.seen) >= 1
        for output in (shipper.stderr, refused.stderr):
            assert password not in output and KEY not in output
