"""End to end through the real `shipper` process: stdin in, local and HTTP sinks out."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from shipper.event import LEVELS
from tests.conftest import CORPUS, REPO, Shipper, free_port, needs_corpus, run_shipper
from tests.durability import figures, reported
from tests.fakes.collector import Collector
from tests.procutil import line_id


def pino_lines(count: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        level = rng.choice((30, 30, 30, 40, 50))
        out.append(
            orjson.dumps(
                {
                    "level": level,
                    "time": 1795394836366 + i,
                    "pid": 1,
                    "hostname": "vm",
                    "reqId": f"req-{i:x}",
                    "msg": f"line {i}",
                    "pad": "x" * rng.randint(10, 200),
                }
            )
        )
    return b"\n".join(out) + b"\n"


def write_config(tmp_path: Path, sinks: str, agent: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\n{agent}\n'
        f'[sources.api]\ntype = "stdin"\nservice = "checkout"\n\n{sinks}'
    )
    return path


def file_sink(path: Path) -> str:
    return f'[sinks.out]\ntype = "file"\ninputs = ["api"]\npath = "{path}"\n'


def read_ndjson(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@needs_corpus
def test_stdin_to_file_delivers_every_line_normalized(tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    corpus = (CORPUS / "fastify-pino.ndjson").read_bytes()
    shipper = run_shipper(["run", "--config", str(write_config(tmp_path, file_sink(out)))], corpus)
    assert shipper.proc.returncode == 0, shipper.stderr.decode()
    events = read_ndjson(out)
    assert len(events) == corpus.count(b"\n") == 2859
    for event in events:
        assert event["source"] == "api" and event["service"] == "checkout"
        assert event["level"] in LEVELS
        assert isinstance(event["message"], str)
        assert isinstance(event["timestamp"], str) and str(event["timestamp"]).endswith("Z")
        assert event["host"]
    assert [e["message"] for e in events[:2]] == ["Server listening at http://127.0.0.1:3101", "incoming request"]


def test_http_sink_down_then_recovering_loses_nothing_and_stays_bounded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Durability scenario 7 (issue #15): stdin from a producer while the destination is down; the
    producer never waits, nothing is lost, memory stays bounded."""
    port = free_port()
    sinks = (
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "http://127.0.0.1:{port}/logs"\n'
        'buffer = { max_bytes = "2MiB" }\nretry = { initial_backoff = "50ms", max_backoff = "300ms" }\n'
        "concurrency = 1\n"
    )
    lines = 200_000
    shipper = Shipper(["run", "--config", str(write_config(tmp_path, sinks))])
    feeder = subprocess.Popen(  # write from another process: the pipe would block if shipper stopped reading
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"],
        stdin=subprocess.PIPE,
        stdout=shipper.proc.stdin,
    )
    assert shipper.proc.stdin is not None
    shipper.proc.stdin.close()
    shipper.proc.stdin = None
    assert feeder.stdin is not None
    data = pino_lines(lines)
    try:
        feeder.stdin.write(data)
        feeder.stdin.close()
    except BrokenPipeError:
        pass
    # The collector is down all this time: stdin cannot be read again, so what memory cannot hold
    # spills to the sink's disk buffer and the producer never waits for the destination.
    feeder.wait(60)
    assert shipper.proc.poll() is None
    collector = Collector(port=port).start()
    try:
        assert shipper.wait(120) == 0, shipper.stderr.decode()[-2000:]
        messages = [e["message"] for e in collector.events]
        ids = [i for e in collector.events if (i := line_id(e)) is not None]
        found = reported(
            request, figures(request.node.name, range(lines), ids, lambda line: 0, shipper.peak_rss_kib, {})
        )
        assert len(set(messages)) == lines and not found.missing  # every line arrived
        assert found.duplicated < lines * 0.01  # at-least-once: duplicates, if any, are rare
        assert found.order_violations == 0  # memory, then the disk, then memory again: in order (one request at a time)
        assert set(collector.encodings) == {"gzip"}
        assert shipper.peak_rss_kib < 200 * 1024, f"peak RSS {shipper.peak_rss_kib} KiB for {len(data)} bytes"
        assert b"retrying" in shipper.stderr
        assert b"sink buffer full: spilling to disk" in shipper.stderr  # the user is told where it went
        assert not list((tmp_path / "state" / "buffers" / "collector").glob("*.seg"))  # delivered, so deleted
    finally:
        collector.stop()


def test_malformed_input_never_crashes_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    garbage = bytes(random.Random(1).getrandbits(8) for _ in range(20_000)).replace(b"\n", b"")
    payload = (
        b"\n".join(
            [
                b'{"level":30,"time":1795394836366,"msg":"before"}',
                garbage,
                b"\xff\xfe invalid utf-8 \xc3\x28",
                b"",
                b"{not json at all",
                b'{"level":30,"msg":"big","blob":"' + b"y" * (5 * 1024 * 1024) + b'"}',
                b"\x00\x01\x02 nul bytes",
                b'{"level":50,"time":1795394836367,"msg":"after"}',
            ]
        )
        + b"\n"
    )
    shipper = run_shipper(["run", "--config", str(write_config(tmp_path, file_sink(out)))], payload)
    assert shipper.proc.returncode == 0, shipper.stderr.decode()[-2000:]
    assert b"Traceback" not in shipper.stderr
    events = read_ndjson(out)
    messages = [str(e["message"]) for e in events]
    assert messages[0] == "before" and messages[-1] == "after"
    assert any("invalid utf-8" in m for m in messages)
    assert any(m.startswith("{not json") for m in messages)
    assert any("nul bytes" in m for m in messages)
    # the 5 MB line is cut into 1 MiB pieces (each a text event), in order, none of it lost
    big = b'{"level":30,"msg":"big","blob":"' + b"y" * (5 * 1024 * 1024) + b'"}'
    first = next(i for i, m in enumerate(messages) if m.startswith('{"level":30,"msg":"big"'))
    pieces = messages[first : first + 6]
    assert [len(p) for p in pieces[:5]] == [1024 * 1024] * 5
    assert "".join(pieces).encode() == big


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    shipper = Shipper(["run", "--config", str(write_config(tmp_path, file_sink(out)))])
    shipper.feed(pino_lines(5000), close=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 5000):
        time.sleep(0.05)
    shipper.proc.send_signal(signal.SIGTERM)
    assert shipper.wait(20) == 0
    assert len(read_ndjson(out)) == 5000
    assert b'"msg":"stopped"' in shipper.stderr


def test_console_sink_prints_ndjson_when_piped(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[sinks.console]\ntype = "console"\ninputs = ["api"]\n')
    shipper = run_shipper(["run", "--config", str(config)], b'{"level":40,"time":1795394836366,"msg":"careful"}\n')
    assert shipper.proc.returncode == 0
    [event] = [orjson.loads(line) for line in shipper.stdout.splitlines()]
    assert event["message"] == "careful" and event["level"] == "warn"


@needs_corpus
def test_tail_filters_by_level_and_grep() -> None:
    corpus = (CORPUS / "fastify-pino.ndjson").read_bytes()
    shipper = run_shipper(["tail", "--level", "error", "--json"], corpus)
    assert shipper.proc.returncode == 0, shipper.stderr.decode()[-2000:]
    events = [orjson.loads(line) for line in shipper.stdout.splitlines()]
    assert len(events) == 91  # 90 level-50 lines and 1 level-60 line in the capture
    assert {e["level"] for e in events} == {"error", "fatal"}
    shipper = run_shipper(["tail", "--grep", "payment provider"], corpus)
    lines = shipper.stdout.decode().splitlines()
    assert lines and all("payment provider" in line for line in lines if not line.startswith(" "))


def test_version_and_help() -> None:
    for args in (["--version"], ["run", "--help"], ["validate", "--help"], ["tail", "--help"], ["check", "--help"]):
        result = subprocess.run([sys.executable, "-m", "shipper", *args], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0 and result.stdout.strip()


def test_check_reports_each_sink_and_fails_on_an_unreachable_one(tmp_path: Path, collector: Collector) -> None:
    dead = free_port()
    sinks = (
        file_sink(tmp_path / "out.ndjson")
        + f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{collector.url}"\n'
        + f'[sinks.nowhere]\ntype = "http"\ninputs = ["api"]\nurl = "http://127.0.0.1:{dead}/logs"\n'
        + '[sinks.locked]\ntype = "http"\ninputs = ["api"]\nheaders = { Authorization = "Bearer s3cret-token" }\n'
        + f'url = "{collector.url.replace("/logs", "/locked")}"\n'
    )
    collector.locked_paths.add("/locked")
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "check", "--config", str(write_config(tmp_path, sinks))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert result.returncode == 1
    assert " OK " in rows["out"] and " OK " in rows["collector"]
    assert " FAIL " in rows["nowhere"] and "unreachable" in rows["nowhere"]
    assert " FAIL " in rows["locked"] and "refused the credentials" in rows["locked"]
    assert "s3cret-token" not in result.stdout + result.stderr
    assert collector.events == []  # checking ships nothing


def test_tail_redacts_by_default() -> None:
    line = b'{"level":30,"msg":"login","req":{"headers":{"authorization":"Bearer abc.def.ghi"}}}\n'
    shown = run_shipper(["tail", "--json"], line)
    assert b"abc.def.ghi" not in shown.stdout and b"[REDACTED]" in shown.stdout
    assert b"abc.def.ghi" in run_shipper(["tail", "--json", "--no-redact"], line).stdout
