"""Helpers for tests that run the real `shipper` process on files and wrapped processes.

shipper's stdout and stderr go to files unless a test asks otherwise, so a long run can never
block on a pipe nobody reads. Lines carry unique ids (`"msg": "line N"`), read back from the
file sink's NDJSON to check that every line arrived at least once and to count duplicates.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

REPO = Path(__file__).resolve().parents[1]
_ID = re.compile(r"^line (\d+)$")


# Epoch ms ten minutes before the test session started: recent on any date for every rule that judges
# a time against "now" (Datadog indexes logs 18 h old .. 2 h ahead, else shipper re-stamps them), and
# fixed for the session, so the same ids always make the same bytes.
RECENT_MS = (int(time.time()) - 600) * 1000 + 366


def pino_lines(ids: Iterable[int]) -> bytes:
    """Fastify/pino-shaped JSON lines whose message carries the line's id, timed `RECENT_MS` + id ms."""
    return b"".join(
        orjson.dumps({"level": 30, "time": RECENT_MS + i, "pid": 4242, "hostname": "test", "msg": f"line {i}"}) + b"\n"
        for i in ids
    )


_PINO_TIME = re.compile(rb'"time":(\d+)')


def moved_to_recent(data: bytes) -> bytes:
    """Captured pino lines (the corpus) moved in time as a whole, so that the newest is at `RECENT_MS`:
    only each line's `time` changes, the gaps between lines are kept."""
    lines = data.split(b"\n")
    shift = RECENT_MS - max(int(m.group(1)) for line in lines if (m := _PINO_TIME.search(line)))
    return b"\n".join(
        _PINO_TIME.sub(lambda m: b'"time":%d' % (int(m.group(1)) + shift), line, count=1) for line in lines
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events written by a file sink so far (a last line still being written is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in data.split(b"\n")[:-1] if line]


def line_id(event: dict[str, Any]) -> int | None:
    for key in ("message", "msg"):
        value = event.get(key)
        if isinstance(value, str):
            match = _ID.match(value)
            if match:
                return int(match.group(1))
    return None


def delivered_ids(path: Path) -> list[int]:
    return [i for i in map(line_id, read_events(path)) if i is not None]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def check_delivery(name: str, expected: Iterable[int], ids: list[int]) -> int:
    """Assert every expected id arrived at least once; print and return the number of duplicates."""
    want = set(expected)
    counts = Counter(ids)
    missing = sorted(want - counts.keys())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\n[delivery] {name}: {len(want)} lines expected, {len(ids)} delivered, {duplicates} duplicates")
    assert not missing, f"{len(missing)} lines lost, first ones: {missing[:20]}"
    assert not counts.keys() - want, f"unexpected lines: {sorted(counts.keys() - want)[:20]}"
    return duplicates


def page_sample(page: str, name: str, **labels: str) -> float:
    """The value of one sample on a /metrics page, by name and exact labels (0 when absent)."""
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    wanted = f"{name}{{{pairs}}}" if labels else name
    for line in page.splitlines():
        series, _, value = line.rpartition(" ")
        if series == wanted:
            return float(value)
    return 0.0


class RssSampler:
    """The peak resident memory of processes, read from /proc every 50 ms while each runs (a
    restarted shipper is watched by the same sampler: its peak is over every run)."""

    def __init__(self) -> None:
        self.peak_kib = 0

    def watch(self, proc: subprocess.Popen[Any]) -> None:
        threading.Thread(target=self._sample, args=(proc,), daemon=True).start()

    def _sample(self, proc: subprocess.Popen[Any]) -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)


class ShipperProcess:
    """A real `python -m shipper run --config CONFIG [-- COMMAND...]` (or `python -m shipper CLI...`)."""

    def __init__(
        self,
        config: Path | None,
        workdir: Path,
        command: list[str] | None = None,
        stdout: int | IO[bytes] | None = None,
        env: dict[str, str] | None = None,
        cli: list[str] | None = None,
        stdin: int = subprocess.DEVNULL,
    ) -> None:
        self.stderr_path = workdir / f"shipper-{time.monotonic_ns()}.stderr"
        self.stdout_path = self.stderr_path.with_suffix(".stdout")
        args = [sys.executable, "-m", "shipper", *(cli or ["run", "--config", str(config)])]
        if command:
            args += ["--", *command]
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=stdin,
                stdout=out if stdout is None else stdout,
                stderr=err,
                cwd=REPO,
                env={**os.environ, **(env or {})},
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> bytes:
        return self.stdout_path.read_bytes()

    def logs(self) -> list[dict[str, Any]]:
        """shipper's own JSON log lines."""
        out = []
        for line in self.stderr.splitlines():
            if line.startswith('{"ts"'):
                out.append(orjson.loads(line))
        return out

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"shipper did not exit within {timeout}s; stderr:\n{self.stderr[-3000:]}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def ensure_stopped(self) -> None:
        """For `finally` blocks: no shipper outlives its test."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_config(
    tmp_path: Path,
    source: str | Mapping[str, str],
    sink_path: Path,
    extra: str = "",
    name: str = "api",
    sink_options: str = "",
) -> Path:
    """A config with a source table (`source` is its body; or bodies by source name) and a file sink
    reading every source (`sink_options`: more lines of its table)."""
    sources = {name: source} if isinstance(source, str) else source
    tables = "".join(f"[sources.{each}]\n{body}\n\n" for each, body in sources.items())
    inputs = ", ".join(f'"{each}"' for each in sources)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\n\n{tables}'
        f'[sinks.out]\ntype = "file"\ninputs = [{inputs}]\npath = "{sink_path}"\nbatch = {{ timeout = "50ms" }}\n'
        f"{sink_options}\n{extra}"
    )
    return path
