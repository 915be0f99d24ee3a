"""/metrics behind a bearer token, and the health endpoints, on a running shipper."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from tests.conftest import Shipper, free_port

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
