"""The process source end to end: the real `shipper run -- COMMAND` wrapping a real Fastify app
(installed from npm by the fixture below) and Python children; loopback only, bounded in time."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.agent import EXIT_LOST
from tests.conftest import free_port
from tests.procutil import REPO, ShipperProcess, read_events, wait_for, write_config

APP = REPO / "tests" / "apps" / "fastify-app"


@pytest.fixture(scope="session")
def fastify_app() -> Path:
    """The test app with its node_modules (installed once, then kept: it is gitignored)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to install and run the Fastify test app")
    installed = APP / "node_modules" / "fastify" / "package.json"
    if not installed.exists() or not json.loads(installed.read_text())["version"].startswith("5."):
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"], cwd=APP, capture_output=True, text=True, timeout=300
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of the Fastify test app took more than 300s (is the npm registry reachable?)")
        if done.returncode != 0:
            pytest.skip(f"npm install of the Fastify test app failed (is the npm registry reachable?):\n{done.stderr}")
    return APP


def process_source(extra: str = "") -> str:
    return f'type = "process"\n{extra}'


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def stdout_events(out: Path) -> list[dict[str, object]]:
    return [e for e in read_events(out) if e.get("stream") == "stdout"]


def test_fastify_app_logs_arrive_signals_reach_it_and_its_exit_code_is_returned(
    tmp_path: Path, fastify_app: Path
) -> None:
    out, port = tmp_path / "out.ndjson", free_port()
    source = process_source(f'cwd = "{fastify_app}"\nenv = {{ PORT = "{port}" }}\n')
    shipper = ShipperProcess(write_config(tmp_path, source, out, name="app"), tmp_path, command=["node", "server.js"])
    try:

        def said(message: str) -> bool:
            assert shipper.proc.poll() is None, shipper.stderr[-3000:]
            return any(e.get("message") == message for e in stdout_events(out))

        wait_for(lambda: said(f"Server listening at http://127.0.0.1:{port}"), 30, "the app to listen")
        assert get(f"http://127.0.0.1:{port}/orders/42") == 200
        assert get(f"http://127.0.0.1:{port}/fail") == 500
        wait_for(lambda: said("request completed"), 10, "request lines")
        wait_for(lambda: said("database connection lost"), 10, "the error line")
        assert shipper.stop(signal.SIGTERM) == 0  # the app's own exit code, after a graceful close
        events = stdout_events(out)
        by_message = {e.get("message"): e for e in events}
        assert {"incoming request", "order looked up", "request completed", "shutting down", "server closed"} <= set(
            by_message
        )
        assert by_message["order looked up"].get("orderId") == "42"
        assert by_message["shutting down"].get("signal") == "SIGTERM"
        assert sum(e.get("message") == "request completed" for e in events) == 2
        assert all(e.get("source") == "app" for e in events)
        passthrough = shipper.stdout.decode()
        assert '"msg":"order looked up"' in passthrough and '"msg":"server closed"' in passthrough
        assert any(
            m.get("msg") == "forwarding the stop signal to the wrapped process" and m.get("signal") == "SIGTERM"
            for m in shipper.logs()
        )
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize(
    ("code", "expected", "via_config"),
    [("sys.exit(3)", 3, False), ("os.kill(os.getpid(), signal.SIGKILL)", 128 + 9, True)],
    ids=["exit-3", "killed-by-signal"],
)
def test_child_exit_code_becomes_shippers(tmp_path: Path, code: str, expected: int, via_config: bool) -> None:
    out = tmp_path / "out.ndjson"
    script = (
        "import os, signal, sys\n"
        'print(\'{"level":30,"msg":"about to exit"}\', flush=True)\n'
        'print("to stderr", file=sys.stderr, flush=True)\n'
        f"{code}\n"
    )
    command = [sys.executable, "-c", script]
    extra = "passthrough = false\n"
    if via_config:
        extra += f"command = {json.dumps(command)}\n"
    config = write_config(tmp_path, process_source(extra), out, name="app")
    shipper = ShipperProcess(config, tmp_path, command=None if via_config else command)
    try:
        assert shipper.wait(30) == expected
        streams = {e.get("message"): e.get("stream") for e in read_events(out)}
        assert streams == {"about to exit": "stdout", "to stderr": "stderr"}
        assert shipper.stdout == b""  # passthrough = false
        assert "to stderr" not in shipper.stderr
    finally:
        shipper.ensure_stopped()


WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    lines, stats = int(sys.argv[1]), sys.argv[2]
    pad = "x" * 60
    worst, started = 0.0, time.perf_counter()
    for i in range(lines):
        line = ('{"level":30,"time":%d,"msg":"line %d","pad":"%s"}\\n' % (1795394836366 + i, i, pad)).encode()
        before = time.perf_counter()
        os.write(1, line)
        worst = max(worst, time.perf_counter() - before)
    total = time.perf_counter() - started
    with open(stats + ".tmp", "w") as f:
        json.dump({"lines": lines, "max_write_seconds": worst, "total_seconds": total}, f)
    os.rename(stats + ".tmp", stats)
    time.sleep(float(sys.argv[3]))  # time for the test to scrape shipper's /metrics
    """
)


@pytest.fixture
def hanging_server() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers a request."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield int(server.getsockname()[1])
    server.close()


def test_fast_writer_is_never_blocked_when_the_sink_hangs(tmp_path: Path, hanging_server: int) -> None:
    lines, api_port = 150_000, free_port()
    stats = tmp_path / "stats.json"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "2s"\n'
        f'[api]\nenabled = true\naddress = "127.0.0.1:{api_port}"\n'
        '[sources.app]\ntype = "process"\nmax_buffer_bytes = "1MiB"\ndrain_timeout = "1s"\n'
        f'[sinks.hang]\ntype = "http"\ninputs = ["app"]\nurl = "http://127.0.0.1:{hanging_server}/logs"\n'
        'request_timeout = "60s"\nbuffer = { max_bytes = "256KiB" }\n'
    )
    command = [sys.executable, "-c", WRITER, str(lines), str(stats), "3"]
    # shipper's stdout is a pipe nobody reads until the end: passthrough must not block on it either
    shipper = ShipperProcess(config, tmp_path, command=command, stdout=subprocess.PIPE)
    try:
        wait_for(stats.exists, 60, "the writer to finish")
        result = json.loads(stats.read_text())
        print(
            f"\n[never-block] {lines} lines written in {result['total_seconds']:.2f}s, "
            f"max single write {result['max_write_seconds'] * 1000:.1f} ms"
        )
        assert result["max_write_seconds"] < 0.5
        assert result["total_seconds"] < 30
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5).read().decode()
        dropped = [line for line in scrape.splitlines() if line.startswith("shipper_source_events_dropped_total")]
        buffer_full = [line for line in dropped if 'reason="buffer_full"' in line and 'source="app"' in line]
        assert buffer_full and float(buffer_full[0].split()[-1]) > 0, dropped
        blocked_stdout = [
            line
            for line in scrape.splitlines()
            if line.startswith("shipper_passthrough_dropped_bytes_total") and 'stream="stdout"' in line
        ]
        assert blocked_stdout and float(blocked_stdout[0].split()[-1]) > 0, blocked_stdout
        print(f"[never-block] {buffer_full[0]}\n[never-block] {blocked_stdout[0]}")
        assert shipper.proc.stdout is not None
        started = time.monotonic()
        shipper.proc.communicate(timeout=30)  # reads the passthrough pipe, lets shipper finish
        assert shipper.proc.returncode == EXIT_LOST  # the writer exited 0, but the hung sink lost its lines
        assert time.monotonic() - started < 20
        drops = [m for m in shipper.logs() if m.get("reason") == "buffer_full"]
        assert drops and drops[0]["level"] == "error", shipper.stderr[-3000:]
    finally:
        shipper.ensure_stopped()
