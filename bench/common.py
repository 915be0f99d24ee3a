"""Shared bench helpers: realistic seeded pino lines, running shipper, measuring CPU and peak RSS."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]

_URLS = ("/health", "/users/1", "/users/2", "/orders", "/orders/ord_17/items", "/auth/session")
_STACK = "Error: database connection lost\n" + "\n".join(
    f"    at handler{i} (/srv/app/node_modules/fastify/lib/handle-request.js:{100 + i}:{5 + i})" for i in range(10)
)


def pino_line(rng: random.Random, i: int, base_ms: int = 1795394836366) -> bytes:
    """One Fastify/pino line shaped like the corpus: access lines, warnings with bindings, errors with stacks."""
    req_id = f"req-{i:x}"
    head = {"level": 30, "time": base_ms + i, "pid": 30302, "hostname": "vm", "reqId": req_id}
    kind = rng.random()
    if kind < 0.45:
        doc = {
            **head,
            "req": {
                "method": "GET",
                "url": rng.choice(_URLS),
                "host": "127.0.0.1:3101",
                "remoteAddress": "127.0.0.1",
                "remotePort": rng.randint(30000, 60000),
            },
            "msg": "incoming request",
        }
    elif kind < 0.9:
        doc = {
            **head,
            "res": {"statusCode": rng.choice((200, 200, 200, 201, 404, 500))},
            "responseTime": rng.random() * 20,
            "msg": "request completed",
        }
    elif kind < 0.97:
        doc = {
            **head,
            "level": 40,
            "component": "billing",
            "tenant": "acme-corp",
            "orderId": f"ord_{i}",
            "amountCents": rng.randint(100, 99999),
            "attempt": rng.randint(1, 5),
            "msg": "payment provider slow, retry scheduled",
        }
    else:
        doc = {
            **head,
            "level": 50,
            "res": {"statusCode": 500},
            "err": {"type": "Error", "message": "database connection lost", "stack": _STACK},
            "msg": "database connection lost",
        }
    return orjson.dumps(doc)


def write_pino_file(path: Path, count: int, seed: int = 42, base_ms: int = 1795394836366) -> int:
    """Write `count` lines one millisecond apart from `base_ms`, in slices (the bench process, and
    so the shipper it forks, stays small); returns the file size in bytes."""
    rng = random.Random(seed)
    with open(path, "wb") as handle:
        for start in range(0, count, 10_000):
            end = min(count, start + 10_000)
            handle.write(b"".join(pino_line(rng, i, base_ms) + b"\n" for i in range(start, end)))
    return path.stat().st_size


def pino_input(work: Path, lines: int, name: str = "pino.ndjson") -> tuple[Path, int]:
    """A bench's input file of `lines` seeded pino lines, announced; its path and size."""
    path = work / name
    nbytes = write_pino_file(path, lines)
    print(f"input: {lines:,} pino lines, {nbytes / 2**20:.1f} MiB")
    return path, nbytes


def bench_config(work: Path, name: str, source: str, sink: str) -> Path:
    """A config file: state under `work`, `[sources.api]` and `[sinks.out]` with these bodies."""
    config = work / name
    config.write_text(f'[agent]\nstate_dir = "{work / "state"}"\n[sources.api]\n{source}[sinks.out]\n{sink}')
    return config


@dataclass
class RunResult:
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float  # VmHWM summed over the agent and its parse workers
    returncode: int
    stderr: bytes
    peak_pss_mib: float = 0.0  # sampled: the same, with pages the processes share counted once


def run_shipper(args: list[str], stdin_path: Path | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Run `python -m shipper ARGS` to completion; CPU from rusage, peak RSS (agent plus parse
    workers) from /proc VmHWM (sampled)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipper", *args],
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], peak_rss_mib(proc.pid))
            except OSError:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    if stdin_path:
        stdin.close()  # type: ignore[union-attr]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # VmHWM is each process's own high-water mark; RUSAGE_CHILDREN's ru_maxrss would be the largest
    # of every child this bench ever waited for, not this run's. CPU includes the parse workers.
    return RunResult(seconds, cpu, peak[0], proc.returncode, stderr)


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (shipper's parse workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process and its live children (parse workers), from /proc."""
    total = 0.0
    for each in (pid, *_children(pid)):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _memory_mib(pid: int, table: str, field: str) -> float:
    """`field` (kB) of /proc/PID/`table`, summed over a live process and its live children."""
    total = 0.0
    for each in (pid, *_children(pid)):
        for line in Path(f"/proc/{each}/{table}").read_text().splitlines():
            if line.startswith(field):
                total += int(line.split()[1]) / 1024
    return total


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process plus its live children's: the agent's whole peak footprint (an
    upper bound: the peaks need not coincide, and shared pages count once per process)."""
    return _memory_mib(pid, "status", "VmHWM:")


def pss_mib(pid: int) -> float:
    """Proportional set size of a live process plus its live children: what they cost together,
    each shared page (the interpreter, extension modules) counted once rather than per process."""
    return _memory_mib(pid, "smaps_rollup", "Pss:")


def run_shipper_until(
    args: list[str], done: Callable[[], bool], env: dict[str, str] | None = None, timeout: float = 600
) -> RunResult:
    """Run `python -m shipper ARGS` (a source that never ends, such as a file) until `done()` says
    its output is complete: wall time from spawn to then, CPU and VmHWM read just before SIGTERM."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipper", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    pss, polls = 0.0, 0
    try:
        while not done():
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                raise SystemExit(f"shipper stopped or timed out: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            polls += 1
            if polls % 10 == 0:  # every 0.2 s: reading smaps is not free
                with contextlib.suppress(OSError):
                    pss = max(pss, pss_mib(proc.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        cpu, rss = cpu_seconds(proc.pid), peak_rss_mib(proc.pid)
        pss = max(pss, pss_mib(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    return RunResult(seconds, cpu, rss, proc.returncode, stderr, pss)


def report(name: str, records: int, nbytes: int, result: RunResult) -> None:
    print(
        f"{name:<34} {records / result.seconds:>12,.0f} records/s  {nbytes / result.seconds / 2**20:>7.1f} MiB/s  "
        f"wall {result.seconds:6.2f} s  cpu {result.cpu_seconds:6.2f} s  peak RSS {result.peak_rss_mib:6.1f} MiB"
    )
