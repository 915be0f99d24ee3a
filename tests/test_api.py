"""/metrics behind a bearer token, and the health endpoints telling the truth, on a running shipper."""

from __future__ import annotations

import platform
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper import __version__
from tests.conftest import Shipper, free_port
from tests.fakes.collector import Collector
from tests.procutil import ShipperProcess, line_id, pino_lines, wait_for

TOKEN = "metrics-token-7c1d"


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def test_metrics_need_the_token_and_count_events(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path}/state"\n[api]\nenabled = true\naddress = "127.0.0.1:{port}"\n'
        f'[sources.api]\ntype = "stdin"\n[sinks.out]\ntype = "file"\ninputs = ["api"]\npath = "{tmp_path}/o.ndjson"\n'
    )
    shipper = Shipper(["run", "--config", str(config)], env={"METRICS_TOKEN": TOKEN})
    base = f"http://127.0.0.1:{port}"
    try:
        secret = b'{"level":50,"msg":"two","req":{"headers":{"authorization":"Bearer abc.def"}}}\n'
        shipper.feed(b'{"level":30,"msg":"one"}\n{"level":30, broken\n' + secret, close=False)
        wait_until_up(f"{base}/health/live")
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", "wrong")[0] == 401
        deadline = time.monotonic() + 10
        body = b""
        while time.monotonic() < deadline and b'shipper_events_sent_total{sink="out"} 3.0' not in body:
            status, body = get(f"{base}/metrics", TOKEN)
            assert status == 200
            time.sleep(0.1)
        assert b'shipper_events_received_total{source="api"} 3.0' in body
        assert b'shipper_events_sent_total{sink="out"} 3.0' in body
        assert b'shipper_parse_fallbacks_total{reason="invalid_json",source="api"} 1.0' in body
        assert b'shipper_redactions_total{rule="header"} 1.0' in body
        assert b'shipper_sink_healthy{sink="out"} 1.0' in body
        assert b'shipper_checkpoint_lag_chunks{source="api"} 0.0' in body  # everything read was acknowledged
        status, body = get(f"{base}/health")
        assert status == 200 and orjson.loads(body)["sinks"]["out"]["healthy"] is True
        assert get(f"{base}/health/live")[0] == 200
        assert get(f"{base}/health/ready")[0] == 200
    finally:
        shipper.wait(20, b"")
    assert TOKEN.encode() not in shipper.stderr + shipper.stdout


def scrape(base: str) -> dict[tuple[str, str], float]:
    """/metrics as {(sample name, sink label): value}, for the samples labelled by sink."""
    status, body = get(f"{base}/metrics")
    assert status == 200
    return {
        (sample.name, sample.labels["sink"]): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if "sink" in sample.labels
    }


def http_sink_config(tmp_path: Path, sink_url: str, api_port: int, api: str = "", sink: str = "") -> Path:
    """A file of pino lines read from the start, to an HTTP sink that retries fast; the API on."""
    log = tmp_path / "app.log"
    log.write_bytes(pino_lines(range(200)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "1s"\n'
        f'[api]\nenabled = true\naddress = "127.0.0.1:{api_port}"\n{api}\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{log}"]\nstart_at = "beginning"\n'
        f'[sinks.out]\ntype = "http"\ninputs = ["api"]\nurl = "{sink_url}"\nbatch = {{ timeout = "50ms" }}\n'
        f'retry = {{ initial_backoff = "100ms", max_backoff = "300ms" }}\n{sink}\n'
    )
    return config


def sink_report(base: str) -> tuple[int, dict[str, Any]]:
    status, body = get(f"{base}/health")
    report = orjson.loads(body)
    return status, report


def test_a_sink_down_is_degraded_then_failing_then_ok_again_without_touching_readiness(tmp_path: Path) -> None:
    """The destination's port is closed (the intake is down): /health tells it, the healthy gauge
    drops after unhealthy_after, requests waiting out their backoff are counted in flight, and the
    sidecar stays ready. When the destination comes back, everything arrives and health is ok."""
    started = time.time()
    api_port, sink_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}"
    config = http_sink_config(tmp_path, f"http://127.0.0.1:{sink_port}/logs", api_port, sink='unhealthy_after = "2s"')
    shipper = ShipperProcess(config, tmp_path)
    collector = Collector(port=sink_port)
    try:
        wait_until_up(f"{base}/health/live")
        wait_for(lambda: sink_report(base)[1]["sinks"]["out"]["consecutive_failures"] > 0, 15, "a failed send")
        status, report = sink_report(base)
        sink = report["sinks"]["out"]
        if sink["state"] == "degraded":  # within unhealthy_after (2 s), unless the machine stalled that long
            assert status == 200 and report["status"] == "degraded" and sink["healthy"] is True
        assert sink["last_success"] is None and sink["last_error"]["reason"] == "connection"

        wait_for(lambda: sink_report(base)[1]["sinks"]["out"]["state"] == "failing", 15, "the sink to be failing")
        status, report = sink_report(base)
        assert status == 503 and report["status"] == "failing" and report["sinks"]["out"]["healthy"] is False
        assert report["sinks"]["out"]["inflight_events"] == 200
        metrics = scrape(base)
        assert metrics[("shipper_sink_healthy", "out")] == 0
        assert metrics[("shipper_inflight_requests", "out")] >= 1  # backing off between attempts, still in flight
        assert metrics[("shipper_inflight_events", "out")] == 200
        assert metrics[("shipper_sink_last_success_timestamp_seconds", "out")] == 0
        status, body = get(f"{base}/health/ready")
        assert status == 200 and orjson.loads(body)["ready"] is True  # a destination's outage keeps the pod in service

        collector.start()  # the destination comes back
        wait_for(lambda: len(collector.events) >= 200, 20, "every event to arrive")
        wait_for(lambda: sink_report(base)[1]["status"] == "ok", 10, "the sink to be ok again")
        status, report = sink_report(base)
        assert status == 200 and report["sinks"]["out"]["consecutive_failures"] == 0
        metrics = scrape(base)
        assert metrics[("shipper_sink_healthy", "out")] == 1
        assert metrics[("shipper_inflight_requests", "out")] == 0
        assert metrics[("shipper_sink_last_success_timestamp_seconds", "out")] >= started
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
        collector.stop()
    assert "healthy again" in shipper.stderr
    assert sorted(i for i in map(line_id, collector.events) if i is not None) == list(range(200))


@pytest.mark.parametrize("requires_healthy_sinks", [False, True], ids=["default", "ready_requires_healthy_sinks"])
def test_a_refused_key_fails_the_sink_at_once_and_readiness_only_when_asked(
    tmp_path: Path, requires_healthy_sinks: bool
) -> None:
    """401 will not fix itself: failing at once, without waiting unhealthy_after (30 s by default).
    Readiness stays about shipper itself, unless `ready_requires_healthy_sinks` asks for healthy
    sinks: then it fails and names the sink."""
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    collector = Collector(fail_status=401).start()
    option = f"ready_requires_healthy_sinks = {str(requires_healthy_sinks).lower()}"
    shipper = ShipperProcess(http_sink_config(tmp_path, collector.url, api_port, api=option), tmp_path)
    try:
        wait_until_up(f"{base}/health/live")

        def refused() -> bool:  # a shipper that exited (its API port taken meanwhile, say) says why
            assert shipper.proc.poll() is None, f"shipper exited {shipper.proc.returncode}: {shipper.stderr[-3000:]}"
            return collector.requests >= 1

        wait_for(refused, 15, "the first refused request")
        wait_for(lambda: sink_report(base)[1]["sinks"]["out"]["consecutive_failures"] > 0, 5, "the refusal recorded")
        status, report = sink_report(base)
        sink = report["sinks"]["out"]
        assert status == 503 and sink["state"] == "failing" and sink["failing_for_seconds"] < 30
        assert sink["last_error"]["reason"] == "http_401"
        assert scrape(base)[("shipper_sink_healthy", "out")] == 0
        status, body = get(f"{base}/health/ready")
        if requires_healthy_sinks:
            assert status == 503
            assert orjson.loads(body) == {"ready": False, "stopping": False, "failing_sinks": ["out"]}
        else:
            assert status == 200 and orjson.loads(body)["ready"] is True
        collector.fail_status = None  # the key is fixed
        wait_for(lambda: len(collector.events) >= 200, 20, "every event to arrive")
        wait_for(lambda: get(f"{base}/health/ready")[0] == 200, 10, "readiness back")
        assert scrape(base)[("shipper_sink_healthy", "out")] == 1
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
        collector.stop()


def test_build_info_and_process_metrics_are_exported(tmp_path: Path) -> None:
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    collector = Collector().start()
    shipper = ShipperProcess(http_sink_config(tmp_path, collector.url, api_port), tmp_path)
    try:
        wait_until_up(f"{base}/health/live")
        families = {
            family.name: family for family in text_string_to_metric_families(get(f"{base}/metrics")[1].decode())
        }
        [build] = families["shipper_build_info"].samples
        assert build.labels == {"version": __version__, "python": platform.python_version()} and build.value == 1
        assert families["process_cpu_seconds"].samples[0].value > 0
        assert families["process_resident_memory_bytes"].samples[0].value > 0
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
        collector.stop()
