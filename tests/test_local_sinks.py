"""The local sinks: file rotation keeps every line; the console colours on a terminal only."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import orjson

from shipper.event import Event
from shipper.pretty import render
from sinks.file import FileConfig, FileSink
from tests.conftest import REPO


async def test_file_sink_rotates_by_size_and_keeps_every_line(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = FileSink("f", FileConfig(type="file", inputs=["x"], path=path, max_size=1024, max_files=50))
    await sink.start()
    for batch in range(20):
        events = [Event({"message": f"m{batch}-{i}", "level": "info"}, b"") for i in range(10)]
        for request in sink.encode(events):
            await sink.send(request)
    await sink.stop()
    files = sorted(tmp_path.glob("events.ndjson*"))
    assert len(files) > 3
    assert all(f.stat().st_size <= 1024 for f in files)
    messages = [orjson.loads(line)["message"] for f in files for line in f.read_bytes().splitlines()]
    assert sorted(messages) == sorted(f"m{b}-{i}" for b in range(20) for i in range(10))


async def test_file_sink_drops_oldest_rotated_file_beyond_max_files(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = FileSink("f", FileConfig(type="file", inputs=["x"], path=path, max_size=200, max_files=2))
    await sink.start()
    for i in range(30):
        for request in sink.encode([Event({"message": f"line {i:03d} " + "x" * 100}, b"")]):
            await sink.send(request)
    await sink.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.ndjson", "events.ndjson.1", "events.ndjson.2"]
    assert b"line 029" in path.read_bytes()


def test_pretty_render_shows_level_message_fields_and_stack() -> None:
    event = Event(
        {
            "timestamp": "2026-11-23T00:47:16.538Z",
            "level": "error",
            "message": "database connection lost",
            "service": "api",
            "reqId": "req-g",
            "err": {"type": "Error", "stack": "Error: x\n    at y (z.js:1:1)"},
        },
        b"",
    )
    plain = render(event, color=False)
    assert plain.splitlines()[0] == "00:47:16.538 ERROR api database connection lost reqId=req-g"
    assert plain.splitlines()[1:] == ["    Error: x", "        at y (z.js:1:1)"]
    colored = render(event, color=True)
    assert "\x1b[31mERROR" in colored


def test_console_sink_colours_on_a_terminal(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path}/state"\n[sources.api]\ntype = "stdin"\n'
        '[sinks.console]\ntype = "console"\ninputs = ["api"]\n'
    )
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipper", "run", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    os.close(secondary)
    assert proc.stdin is not None
    proc.stdin.write(b'{"level":40,"time":1795394836366,"msg":"disk almost full"}\n')
    proc.stdin.close()
    output = b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(primary)
    assert b"disk almost full" in output
    assert b"\x1b[33mWARN" in output  # coloured level on a terminal, not NDJSON
    assert not output.lstrip().startswith(b"{")
