"""Parse workers: parsing and per-event encoding on the other cores.

Parsing, normalizing, redacting and encoding each event is nearly all of shipper's CPU, and one
Python process uses one core. With `agent.parse_workers` above 0 (the default `auto` is one when a
second CPU is usable), each line feed of a source whose sinks all `prepare` (encode per event,
e.g. the Datadog log object) has its `Processor` in a worker process. The feed sends it chunks of
complete lines; the worker parses them, routes the events by the sinks' `when` rules and runs each
sink's `prepare`, so what comes back is bytes. The agent frames those into requests and sends them.
Sources feeding other sinks parse in the agent: sending parsed fields back costs about what parsing
does (measured: a worker that only parsed made the Datadog bench slower, 73k-92k vs ~100k/s).

Replies come back in request order, so a feed keeps a few chunks in flight and routes their
results in input order. Positions and acks stay in the agent, so checkpoints mean exactly what
they mean without workers.

Protocol: marshal frames with a 4-byte length, both ways (the worker is our own child; marshal is
5-10x faster than pickle here). Config models travel pickled inside.
- ("open", feed, pickled (source, config, host, redact, extra fields, [(sink, sink config)])):
  build a processor, route predicates and preparers; no reply. An error is kept and answered on
  that feed's next request, so replies stay in request order.
- ("feed", feed, stream, now, body): `body` is complete lines joined by newlines.
- ("flush", feed, now, force, rests): parse the partial lines `rests` [(stream, bytes)], then emit
  idle (or, with force, all) multi-line groups.
  Both reply ("ok", held_bytes, event count, [(route, NDJSON, timestamps)], counters) or
  ("error", text): per route, what the sink's `prepare` made of its share of the events.
- ("close", feed): forget the feed; no reply.

Counters the worker increments (parse fallbacks, redactions, a sink's truncations and re-stamps)
are reported as totals on replies; the agent adds the deltas to its own, so /metrics stays whole.
A worker ignores SIGINT and SIGTERM (a terminal's Ctrl-C or systemd's stop reach the whole group)
and exits when its input closes: the agent decides when parsing is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import marshal
import os
import pickle
import signal
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from prometheus_client import Counter

from shipper import metrics
from shipper.config import RedactConfig, SinkConfig, SourceConfig
from shipper.event import Event, fill_in
from shipper.parsing import Processor, build_processor
from shipper.router import Predicate, compile_when
from shipper.sink import Sink

log = logging.getLogger("shipper.workers")

_HEADER = struct.Struct("<I")
_MARSHAL_VERSION = 4
# Counters a worker increments; it reports their totals, the agent adds the deltas to its own.
WORKER_COUNTERS: tuple[Counter, ...] = (
    metrics.parse_fallbacks,
    metrics.redactions,
    metrics.events_truncated,
    metrics.events_restamped,
    metrics.events_dropped,
)
COUNTER_REPORT_INTERVAL = 0.25
PIPE_BYTES = 1024 * 1024
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")  # cgroup v2: bytes, or "max"
# A worker adds ~35-45 MiB (its own interpreter); under a tighter container memory limit than this,
# `auto` keeps parsing in the agent rather than risk the limit.
AUTO_MIN_MEMORY = 256 * 1024 * 1024
_READ_LIMIT = 4 * PIPE_BYTES  # the reply stream's buffer (asyncio's default of 64 KiB thrashes)
CounterTotals = dict[tuple[int, tuple[tuple[str, str], ...]], float]
# A parsed chunk: bytes still held in open multi-line groups, events parsed, and per route
# (index into the feed's routes) the sink's prepared logs: NDJSON and their timestamps.
Routed = tuple[int, bytes, list[Any]]
Parsed = tuple[int, int, list[Routed]]


def _widen(pipe: Any) -> None:
    """Grow a pipe to PIPE_BYTES, so a chunk and its reply cross in one go instead of 64 KiB
    pieces that each cost both processes a wake-up (Linux only; best effort)."""
    transport = getattr(pipe, "transport", None) or getattr(pipe, "_transport", None)
    fileobj = transport.get_extra_info("pipe") if transport is not None else None
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if fileobj is not None and set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fileobj.fileno(), set_size, PIPE_BYTES)


class WorkerError(RuntimeError):
    """A parse worker died or failed on a request; the feed cannot go on."""


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (a container's
    `--cpus`), so a sidecar limited to one CPU does not pay for a worker it cannot run."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def memory_limit() -> int | None:
    """The cgroup v2 memory limit of this process's container or unit, in bytes (None: none)."""
    try:
        text = CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def resolve_worker_count(setting: int | str) -> int:
    """`auto`: one worker when a second CPU is usable (parsing then runs beside framing and
    sending) and no memory limit below AUTO_MIN_MEMORY applies, else none; a number is taken as is."""
    if setting == "auto":
        limit = memory_limit()
        return 1 if usable_cpus() >= 2 and (limit is None or limit >= AUTO_MIN_MEMORY) else 0
    return int(setting)


# ---------------------------------------------------------------------------------- agent side


class RemoteParser:
    """One feed's processor, routes and preparers, living in a worker process."""

    def __init__(self, worker: ParseWorker, feed_id: int) -> None:
        self.worker = worker
        self.feed_id = feed_id

    async def feed(self, body: bytes, stream: str | None, now: float) -> asyncio.Future[Parsed]:
        return await self.worker.request(("feed", self.feed_id, stream, now, body))

    async def flush(self, now: float, force: bool, rests: list[tuple[str | None, bytes]]) -> asyncio.Future[Parsed]:
        return await self.worker.request(("flush", self.feed_id, now, force, rests))

    def close(self) -> None:
        self.worker.post(("close", self.feed_id))


class ParseWorker:
    """One worker process and its pipes; replies are matched to requests by order."""

    def __init__(self, index: int, log_level: str, log_format: str, on_death: Callable[[], None]) -> None:
        self.index = index
        self._on_death = on_death
        self._args = (log_level, log_format)
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: deque[asyncio.Future[Parsed]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: WorkerError | None = None
        self._reported: CounterTotals = {}

    async def start(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        env.pop("NOTIFY_SOCKET", None)  # readiness and the watchdog are the agent's to report
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shipper.workers", *self._args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=_READ_LIMIT,
        )  # fmt: skip
        for pipe in (self._process.stdin, self._process.stdout):
            _widen(pipe)
        self._reader = asyncio.create_task(self._read_replies(), name=f"parse-worker-{self.index}")

    def post(self, message: tuple[Any, ...]) -> None:
        """Send a message that has no reply."""
        if self._failure is None:
            self._write(message)

    async def request(self, message: tuple[Any, ...]) -> asyncio.Future[Parsed]:
        """Send a request; the future resolves with its reply. Waits while the pipe is full."""
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[Parsed] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._write(message)
        assert self._process is not None and self._process.stdin is not None
        with contextlib.suppress(ConnectionError):  # the reader reports the worker's end to every request
            await self._process.stdin.drain()
        return future

    def _write(self, message: tuple[Any, ...]) -> None:
        assert self._process is not None and self._process.stdin is not None
        payload = marshal.dumps(message, _MARSHAL_VERSION)
        self._process.stdin.write(_HEADER.pack(len(payload)) + payload)

    async def _read_replies(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while True:
                size = _HEADER.unpack(await stdout.readexactly(_HEADER.size))[0]
                reply = marshal.loads(await stdout.readexactly(size))
                future = self._waiting.popleft()
                if reply[0] == "ok":
                    _, held, count, routed, counters = reply
                    if counters:
                        self._add_counters(counters)
                    if not future.done():
                        future.set_result((held, count, routed))
                elif not future.done():
                    future.set_exception(WorkerError(f"parse worker {self.index} failed: {reply[1]}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        code = await self._process.wait()
        self._failure = WorkerError(f"parse worker {self.index} exited with code {code}")
        if not self._closing:
            log.error("parse worker exited", extra={"worker": self.index, "exit_code": code})
            self._on_death()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._failure)

    def _add_counters(self, totals: CounterTotals) -> None:
        for key, total in totals.items():
            delta = total - self._reported.get(key, 0.0)
            if delta > 0:
                index, labels = key
                WORKER_COUNTERS[index].labels(**dict(labels)).inc(delta)
        self._reported = totals

    async def close(self, timeout: float = 5.0) -> None:
        """End the worker after its pending replies: close its input, wait, kill if it hangs."""
        self._closing = True
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            await self._reader


class WorkerPool:
    """The parse workers of one agent; feeds are spread over them in turn."""

    def __init__(self, size: int, log_level: str, log_format: str, on_death: Callable[[], None]) -> None:
        """`on_death` is called when a worker exits unasked: its feeds cannot go on."""
        self.workers = [ParseWorker(i, log_level, log_format, on_death) for i in range(size)]
        self._next_feed = 0

    async def start(self) -> None:
        await asyncio.gather(*(worker.start() for worker in self.workers))

    def parser(
        self,
        source: str,
        config: SourceConfig,
        *,
        host: str,
        redact: RedactConfig,
        fields: dict[str, Any] | None,
        routes: list[tuple[str, SinkConfig]],
    ) -> RemoteParser:
        """A parser in the next worker for one feed of `source`, routing to `routes` in order."""
        feed_id = self._next_feed
        self._next_feed += 1
        worker = self.workers[feed_id % len(self.workers)]
        setup = pickle.dumps((source, config, host, redact, fields, routes))
        worker.post(("open", feed_id, setup))
        return RemoteParser(worker, feed_id)

    async def close(self) -> None:
        await asyncio.gather(*(worker.close() for worker in self.workers))


# ---------------------------------------------------------------------------------- worker side


def _counter_totals() -> CounterTotals:
    totals: CounterTotals = {}
    for index, family in enumerate(WORKER_COUNTERS):
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    totals[(index, tuple(sorted(sample.labels.items())))] = sample.value
    return totals


class _Feed:
    """A feed as a worker holds it: its processor, extra fields, and per route the `when`
    predicate and the sink whose `prepare` encodes the logs (the agent only sends a source here
    when all of its sinks prepare)."""

    def __init__(self, setup: bytes) -> None:
        from sinks import build_sink

        source, config, host, redact, fields, routes = pickle.loads(setup)
        self.processor: Processor = build_processor(source, config, host=host, redact=redact)
        self.extra: dict[str, Any] | None = fields
        self.routes: list[tuple[Predicate | None, Sink]] = [
            (compile_when(sink_config.when), build_sink(name, sink_config)) for name, sink_config in routes
        ]

    def parsed(self, events: list[Event]) -> tuple[int, int, list[Routed]]:
        fill_in(events, self.extra)
        routed: list[Routed] = []
        for index, (predicate, sink) in enumerate(self.routes):
            selected = events if predicate is None else [e for e in events if predicate(e)]
            prepared = sink.prepare(selected) if selected else None
            if prepared is not None:
                routed.append((index, *prepared))
        return self.processor.held_bytes, len(events), routed


class _Server:
    """The worker's loop: one request at a time, in order."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.feeds: dict[int, _Feed | Exception] = {}
        self.last_report = 0.0

    def handle(self, message: tuple[Any, ...]) -> None:
        kind, feed_id = message[0], message[1]
        if kind == "open":
            try:
                self.feeds[feed_id] = _Feed(message[2])
            except Exception as exc:
                self.feeds[feed_id] = exc
            return
        if kind == "close":
            self.feeds.pop(feed_id, None)
            return
        try:
            feed = self.feeds[feed_id]
            if isinstance(feed, Exception):
                raise feed
            processor = feed.processor
            if kind == "feed":
                _, _, stream, now, body = message
                events = processor.feed(body.split(b"\n"), stream, now)
                final = False
            else:
                _, _, now, force, rests = message
                events = [e for stream, rest in rests for e in processor.feed([rest], stream, now)]
                events += processor.flush(now, force)
                final = force
            held, count, routed = feed.parsed(events)
            counters = None
            clock = time.monotonic()
            if final or clock - self.last_report >= COUNTER_REPORT_INTERVAL:
                counters, self.last_report = _counter_totals(), clock
            reply: tuple[Any, ...] = ("ok", held, count, routed, counters)
            payload = marshal.dumps(reply, _MARSHAL_VERSION)
        except Exception as exc:
            payload = marshal.dumps(("error", "".join(traceback.format_exception_only(exc)).strip()))
        self.out.write(_HEADER.pack(len(payload)))
        self.out.write(payload)
        self.out.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests until the input closes."""
    server = _Server(out)
    while (header := _read_exactly(inp, _HEADER.size)) is not None:
        payload = _read_exactly(inp, _HEADER.unpack(header)[0])
        if payload is None:
            return
        server.handle(marshal.loads(payload))


def main(argv: list[str]) -> None:
    from shipper.log import setup_logging

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    level, fmt = argv if len(argv) == 2 else ("info", "auto")
    setup_logging(level, fmt)
    # Replies own the real stdout; anything else printing to fd 1 lands on stderr instead.
    out = os.fdopen(os.dup(1), "wb", buffering=1 << 20)
    os.dup2(2, 1)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as the agent: parsed events are short-lived, many, acyclic
    with contextlib.suppress(BrokenPipeError):
        serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main(sys.argv[1:])
