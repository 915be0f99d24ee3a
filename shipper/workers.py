"""Parse workers, the agent's side: parsing and per-event encoding on the other cores.

Parsing, normalizing, redacting and encoding each event is nearly all of shipper's CPU, and one
Python process uses one core. With `agent.parse_workers` above 0 (the default `auto` is one when a
second CPU is usable), each line feed of a source whose sinks all have a preparer (`Sink.preparer`:
per-event encoding, e.g. the Datadog log object) has its `Processor` in a worker process
(shipper/parse_worker.py). The feed sends it chunks of complete lines; the worker parses them,
applies the source's transforms, routes the events by the sinks' `when` rules and runs each sink's
preparer, so what comes back is bytes. The agent frames those into requests and sends them.
Sources feeding other sinks parse in the agent: sending parsed fields back costs about what parsing
does (measured: a worker that only parsed made the Datadog bench slower, 73k-92k vs ~100k/s).

Replies come back in request order, so a feed keeps a few chunks in flight and routes their
results in input order. Positions and acks stay in the agent, so checkpoints mean exactly what
they mean without workers.

Protocol: frames both ways (parse_worker.FRAME): two lengths, a marshal'd message (the worker is
our own child; marshal is 5-10x faster than pickle here), then a raw body. Messages (body):
- ("open", feed) (pickled `FeedSetup`: source, its settings as plain attribute trees (`plain`: the
  worker imports no config models), host, redaction settings, extra fields, and per route its
  when, sink name and preparer spec): build a processor, route predicates and preparers; no
  reply. An error is kept and answered on that feed's next request, so replies stay in request
  order.
- ("parse", feed, stream, now, open_end) (lines joined by newlines, all complete but the last one
  with `open_end`: the start of a line longer than `max_line_bytes`, see `Processor.parse`).
- ("flush", feed, now, force, rests): parse the partial lines `rests` [(stream, bytes)], then emit
  idle (or, with force, all) multi-line groups.
  Both reply ("ok", held_bytes, event count, [(route, NDJSON length, timestamps)], counters)
  (the routes' NDJSON, in order) or ("error", text): per route, what the sink's preparer made of
  its share of the events.
- ("routes", feed) (pickled routes, as in "open"): route what is parsed from now on by these (a
  config reload; the processor and its multi-line groups are kept); no reply.
- ("close", feed): forget the feed; no reply.

Counters the worker increments (parse fallbacks, redactions, a sink's truncations and re-stamps)
are tallies (shipper/tally.py) reported as totals on replies; the agent adds the deltas to its
own, so /metrics stays whole.
A worker ignores SIGINT and SIGTERM (a terminal's Ctrl-C or systemd's stop reach the whole group)
and exits when its input closes: the agent decides when parsing is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import marshal
import os
import pickle
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from pydantic import BaseModel, SecretStr

from shipper import tally
from shipper.config import RedactConfig, SourceConfig, WhenConfig
from shipper.event import PreparerSpec
from shipper.parse_worker import FRAME, MARSHAL_VERSION, FeedSetup, RoutedSizes
from shipper.pipeline.channel import Channel
from shipper.speedups import SPEEDUPS

log = logging.getLogger("shipper.workers")

PIPE_BYTES = 1024 * 1024
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")  # cgroup v2: bytes, or "max"
# A worker adds ~17 MiB idle, ~20-30 MiB busy (its own interpreter); under a tighter container
# memory limit than this, `auto` keeps parsing in the agent rather than risk the limit, and each
# worker past the first needs AUTO_WORKER_MEMORY more.
AUTO_MIN_MEMORY = 256 * 1024 * 1024
AUTO_WORKER_MEMORY = 64 * 1024 * 1024
AUTO_MAX_WORKERS = 4
# Per route (an index into the feed's routes) the sink's prepared logs, as a reply brings them:
# NDJSON (the reply's bytearray, or a view of its share) and their timestamps.
Received = tuple[int, bytearray | memoryview, list[Any] | tuple[int, Any, bytes, bool] | None]
# A parsed chunk: bytes still held in open multi-line groups, events parsed, and per route the
# sink's prepared logs.
Parsed = tuple[int, int, list[Received]]


def _widen(fd: int) -> None:
    """Grow a pipe to PIPE_BYTES, so a chunk and its reply cross in one go instead of 64 KiB
    pieces that each cost both processes a wake-up (Linux only; best effort)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_size, PIPE_BYTES)


class ReplyReader:
    """A worker's replies read from its pipe straight into buffers of their size: the frame, the
    message, then the body (a bytearray, the reply's only copy here). A stream reader copied each
    byte twice more (into its buffer, out of it) and moved what followed each read: the agent's CPU
    on the 1M-line CloudWatch bench went from 5.7-6.3 s to 4.7-4.8 s."""

    def __init__(self, fd: int, on_reply: Callable[[Any, bytearray], None]) -> None:
        self._fd = fd
        self._on_reply = on_reply
        self._message: Any = None
        self._body_size = 0
        self._stage = 0  # what the buffer is for: 0 the frame, 1 the message, 2 the body
        self._buffer = bytearray(FRAME.size)
        self._view = memoryview(self._buffer)
        self._got = 0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        while not self.ended.done():
            try:
                count = os.readv(self._fd, [self._view[self._got :]])
            except BlockingIOError:
                return
            except OSError:
                count = 0
            if count == 0:  # the worker's end closed: it exited
                self._end()
                return
            self._got += count
            self._next()

    def _next(self) -> None:
        """Move on while the buffer is full (a stage of size 0 completes at once)."""
        while self._got == len(self._buffer):
            if self._stage == 0:
                message_size, self._body_size = FRAME.unpack(self._buffer)
                self._expect(1, message_size)
            elif self._stage == 1:
                self._message = marshal.loads(self._buffer)
                self._expect(2, self._body_size)
            else:
                body, message = self._buffer, self._message
                self._expect(0, FRAME.size)
                self._on_reply(message, body)

    def _expect(self, stage: int, size: int) -> None:
        self._stage, self._got = stage, 0
        self._buffer = SPEEDUPS.unfilled(size) if SPEEDUPS is not None and stage == 2 else bytearray(size)
        self._view = memoryview(self._buffer)

    def _end(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        os.close(self._fd)
        self.ended.set_result(None)


class SinkRoute(NamedTuple):
    """A sink a source feeds, as a parse worker needs it: the `when` filter and the sink's
    preparer there; the channel its share of each parsed chunk goes to here."""

    sink: str
    when: WhenConfig | None
    preparer: PreparerSpec | None
    channel: Channel


def plain(value: Any) -> Any:
    """A config model as a `SimpleNamespace` tree with the same attribute names (nested models,
    lists and dicts of them too), so a worker reads its settings without pydantic. A secret is
    left out: no worker needs one."""
    if isinstance(value, BaseModel):
        return SimpleNamespace(**{name: plain(field) for name, field in value})
    if isinstance(value, SecretStr):
        return None
    if isinstance(value, list | tuple):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def feed_setup(
    source: str,
    config: SourceConfig,
    *,
    host: str,
    redact: RedactConfig,
    fields: dict[str, Any] | None,
    routes: list[SinkRoute],
) -> bytes:
    """What a worker builds a feed from (`FeedSetup`, pickled): settings as plain trees, and per
    route its `when`, sink name and preparer. Every route must have a preparer."""
    setup: FeedSetup = (source, plain(config), host, plain(redact), fields, _worker_routes(source, routes))
    return pickle.dumps(setup)


def route_setup(source: str, routes: list[SinkRoute]) -> bytes:
    """A feed's new routes for its worker (a config reload), pickled as in `feed_setup`."""
    return pickle.dumps(_worker_routes(source, routes))


def _worker_routes(source: str, routes: list[SinkRoute]) -> list[tuple[Any, str, PreparerSpec]]:
    prepared = [(plain(route.when), route.sink, route.preparer) for route in routes if route.preparer is not None]
    if len(prepared) != len(routes):
        raise ValueError(f"source {source}: every sink of a parse worker's feed needs a preparer")
    return prepared


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
    """`auto`: one worker per usable CPU beyond the agent's own (parsing runs beside framing and
    sending), at most AUTO_MAX_WORKERS, and only as many as a cgroup memory limit leaves room
    for at AUTO_MIN_MEMORY for the agent plus AUTO_WORKER_MEMORY each; a number is taken as is.
    A feed stays on one worker (its multi-line groups and clock), so more workers pay off with
    more feeds (files, streams)."""
    if setting != "auto":
        return int(setting)
    wanted = min(usable_cpus() - 1, AUTO_MAX_WORKERS)
    limit = memory_limit()
    if limit is not None:
        wanted = min(wanted, (limit - AUTO_MIN_MEMORY) // AUTO_WORKER_MEMORY + 1 if limit >= AUTO_MIN_MEMORY else 0)
    return max(0, wanted)


# ---------------------------------------------------------------------------------- agent side


class RemoteParser:
    """One feed's processor, routes and preparers, living in a worker process."""

    def __init__(self, worker: ParseWorker, feed_id: int) -> None:
        self.worker = worker
        self.feed_id = feed_id

    async def parse(
        self, body: bytes, stream: str | None, now: float, open_end: bool = False
    ) -> asyncio.Future[Parsed]:
        return await self.worker.request(("parse", self.feed_id, stream, now, open_end), body)

    async def flush(self, now: float, force: bool, rests: list[tuple[str | None, bytes]]) -> asyncio.Future[Parsed]:
        return await self.worker.request(("flush", self.feed_id, now, force, rests))

    def reroute(self, routes: bytes) -> None:
        """Route what is parsed after this by `routes` (`route_setup`); requests sent before keep theirs."""
        self.worker.post(("routes", self.feed_id), routes)

    def close(self) -> None:
        self.worker.post(("close", self.feed_id))


def _split_body(body: bytearray, sizes: list[RoutedSizes]) -> list[Received]:
    """A reply's routes with their NDJSON cut out of the body: the body as is for one route (the
    common case), else a view of each route's share (no copy: each becomes events, copied, anyway)."""
    if len(sizes) == 1:
        index, _, stamps = sizes[0]
        return [(index, body, stamps)]
    routed: list[Received] = []
    view, start = memoryview(body), 0
    for index, size, stamps in sizes:
        routed.append((index, view[start : start + size], stamps))
        start += size
    return routed


class ParseWorker:
    """One worker process and its pipes; replies are matched to requests by order."""

    def __init__(self, index: int, log_level: str, log_format: str, on_death: Callable[[], None]) -> None:
        self.index = index
        self._on_death = on_death
        self._args = (log_level, log_format)
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: deque[asyncio.Future[Parsed]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._replies: ReplyReader | None = None
        self._closing = False
        self._failure: WorkerError | None = None
        self._reported: tally.Totals = {}

    async def start(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        env.pop("NOTIFY_SOCKET", None)  # readiness and the watchdog are the agent's to report
        replies, child_end = os.pipe()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shipper.parse_worker", *self._args,
                stdin=asyncio.subprocess.PIPE, stdout=child_end, env=env,
            )  # fmt: skip
        except BaseException:
            os.close(replies)
            raise
        finally:
            os.close(child_end)
        assert self._process.stdin is not None
        _widen(self._process.stdin.get_extra_info("pipe").fileno())
        _widen(replies)
        self._replies = ReplyReader(replies, self._reply)
        self._reader = asyncio.create_task(self._read_replies(), name=f"parse-worker-{self.index}")

    def post(self, message: tuple[Any, ...], body: bytes = b"") -> None:
        """Send a message that has no reply."""
        if self._failure is None:
            self._write(message, body)

    async def request(self, message: tuple[Any, ...], body: bytes = b"") -> asyncio.Future[Parsed]:
        """Send a request; the future resolves with its reply. Waits while the pipe is full."""
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[Parsed] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._write(message, body)
        assert self._process is not None and self._process.stdin is not None
        with contextlib.suppress(ConnectionError):  # the reader reports the worker's end to every request
            await self._process.stdin.drain()
        return future

    def _write(self, message: tuple[Any, ...], body: bytes) -> None:
        assert self._process is not None and self._process.stdin is not None
        payload = marshal.dumps(message, MARSHAL_VERSION)
        self._process.stdin.write(FRAME.pack(len(payload), len(body)) + payload)
        if body:
            self._process.stdin.write(body)

    def _reply(self, reply: Any, body: bytearray) -> None:
        """The next reply: for the oldest request waiting."""
        future = self._waiting.popleft()
        if reply[0] == "ok":
            _, held, count, sizes, counters = reply
            if counters:
                self._add_counters(counters)
            if not future.done():
                future.set_result((held, count, _split_body(body, sizes)))
        elif not future.done():
            future.set_exception(WorkerError(f"parse worker {self.index} failed: {reply[1]}"))

    async def _read_replies(self) -> None:
        """Until the worker's replies end (it exited), then say why to every request still waiting."""
        assert self._process is not None and self._replies is not None
        await self._replies.ended
        code = await self._process.wait()
        self._failure = WorkerError(f"parse worker {self.index} exited with code {code}")
        if not self._closing:
            log.error("parse worker exited", extra={"worker": self.index, "exit_code": code})
            self._on_death()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._failure)

    def _add_counters(self, totals: tally.Totals) -> None:
        tally.add_deltas(totals, self._reported)
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

    def parser(self, setup: bytes) -> RemoteParser:
        """A parser in the next worker for one feed, built there from `setup` (`feed_setup`)."""
        feed_id = self._next_feed
        self._next_feed += 1
        worker = self.workers[feed_id % len(self.workers)]
        worker.post(("open", feed_id), setup)
        return RemoteParser(worker, feed_id)

    async def close(self) -> None:
        await asyncio.gather(*(worker.close() for worker in self.workers))
