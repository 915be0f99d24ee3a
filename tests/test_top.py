"""`shipper top` against a real running shipper: the plain table for scripts, and the live view under
a real pseudo-terminal (it quits on q or Ctrl-C with exit 0 and leaves the terminal as it found it)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.procutil import ShipperProcess, pino_lines, read_events, wait_for
from tests.test_api import wait_until_up

TOKEN = "top-token-3b9e51"


class Running:
    def __init__(self, config: Path, logs: Path, port: int) -> None:
        self.config, self.logs, self.port = config, logs, port


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A shipper tailing a file into a file sink, its API on a free loopback port, METRICS_TOKEN set."""
    port = free_port()
    logs = tmp_path / "app.log"
    logs.write_bytes(pino_lines(range(500)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nparse_workers = 0\n'
        f'[api]\nenabled = true\naddress = "127.0.0.1:{port}"\n'
        f'[sources.app]\ntype = "file"\ninclude = ["{logs}"]\nstart_at = "beginning"\n'
        f'[sinks.archive]\ntype = "file"\ninputs = ["app"]\npath = "{tmp_path / "out.ndjson"}"\n'
        f'batch = {{ timeout = "50ms" }}\n'
    )
    shipper = ShipperProcess(config, tmp_path, env={"METRICS_TOKEN": TOKEN})
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health/live")
        wait_for(lambda: len(read_events(tmp_path / "out.ndjson")) == 500, 20, "the first 500 events")
        yield Running(config, logs, port)
    finally:
        shipper.ensure_stopped()
    assert TOKEN not in shipper.stderr


def top(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper", "top", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={**{k: v for k, v in os.environ.items() if k != "METRICS_TOKEN"}, **(env or {})},
    )


def rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines() if line.strip()}


def test_once_prints_sources_and_sinks_with_rates(running: Running) -> None:
    done = threading.Event()

    def write_more() -> None:  # events arriving all the time top measures
        n = 500
        while not done.is_set():
            with running.logs.open("ab") as f:
                f.write(pino_lines(range(n, n + 50)))
            n += 50
            time.sleep(0.05)

    writer = threading.Thread(target=write_more)
    writer.start()
    try:
        result = top("--config", str(running.config), "--once", "--interval", "1s", env={"METRICS_TOKEN": TOKEN})
    finally:
        done.set()
        writer.join()
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["SOURCE"] == ["SOURCE", "EVENTS/S", "IN", "BYTES/S", "IN", "EVENTS", "IN", "DROPPED", "HEALTH"]
    app, archive = table["app"], table["archive"]
    assert float(app[1].replace(",", "")) > 100  # ~1,000 events/s written
    assert int(app[3].replace(",", "")) >= 500
    assert float(archive[1].replace(",", "")) > 100 and archive[2].endswith("/s")
    assert "[" in table["archive"][4] and archive[-1] == "ok"
    assert f"http://127.0.0.1:{running.port}/metrics" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_token_from_a_file_and_a_missing_token_named(running: Running, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    url = f"http://127.0.0.1:{running.port}"
    found = top("--url", url, "--token-file", str(token_file), "--once", "--interval", "100ms")
    assert found.returncode == 0 and "archive" in found.stdout, found.stderr
    missing = top("--url", url, "--once", "--interval", "100ms")
    assert missing.returncode == 1
    assert "401" in missing.stderr and "METRICS_TOKEN" in missing.stderr
    wrong = top("--url", url, "--once", "--interval", "100ms", env={"METRICS_TOKEN": "nope"})
    assert wrong.returncode == 1 and "token is wrong" in wrong.stderr and "nope" not in wrong.stderr


def test_unreachable_shipper_is_a_clear_error() -> None:
    port = free_port()
    result = top("--url", f"127.0.0.1:{port}", "--once", "--interval", "100ms")
    assert result.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}/metrics" in result.stderr


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {wanted!r} on the terminal within {timeout}s; got {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return seen


@pytest.mark.parametrize("quit_with", ["q", "SIGINT"])
def test_live_view_on_a_terminal_quits_cleanly(running: Running, quit_with: str) -> None:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    before = termios.tcgetattr(terminal)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipper", "top", "--config", str(running.config), "--interval", "200ms"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=REPO,
        env={**os.environ, "METRICS_TOKEN": TOKEN},
        start_new_session=True,
    )
    try:
        screen = read_until(controller, b"archive", 20)
        assert b"\x1b[?1049h" in screen  # the alternate screen
        screen += read_until(controller, b"q: quit", 5)
        assert b"EVENTS/S OUT" in screen and b"app" in screen
        after_frame = termios.tcgetattr(terminal)
        assert not after_frame[3] & termios.ICANON  # keys are read one by one while it runs
        if quit_with == "q":
            os.write(controller, b"q")
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        rest = read_until(controller, b"\x1b[?1049l", 5)  # back to the normal screen, cursor shown
        assert b"\x1b[?25h" in rest
        assert termios.tcgetattr(terminal) == before  # echo and line editing restored
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(controller)
        os.close(terminal)
