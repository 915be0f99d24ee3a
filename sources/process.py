"""Wrap the API process (`shipper run -- node dist/main.js`): ship its stdout/stderr, never slow it down.

The child must never block on a full pipe, whatever the sinks are doing. One thread per pipe does
blocking reads (pipes enlarged to 1 MiB where the kernel allows) into a buffer bounded by
`max_buffer_bytes` that the event loop drains into the pipeline. The reader never waits for the
loop: when the buffer is full, data is dropped, counted in `shipper_source_events_dropped{reason=
"buffer_full"}` and logged (rate-limited), and the rest of a cut line is skipped so no line is
glued to another. Passthrough (the child's output copied unchanged to shipper's own stdout and
stderr, so `docker logs` still shows it) goes through a bounded queue and a writer thread per
stream: a blocked stdout drops passthrough bytes, counted, rather than stalling the reader.

The child runs in its own process group. When shipper is asked to stop, the signal it got
(SIGTERM or SIGINT) is forwarded to that group and the output is read until the child exits;
the child's exit code (128 + signal number when a signal killed it) becomes shipper's. SIGUSR1
and SIGUSR2 (pino reopens its files on SIGUSR2) are forwarded to the group as they come. On
Linux the child is started through `deathsig_exec.py`, so the kernel kills it when shipper dies,
even by SIGKILL. Output is not replayable: nothing is checkpointed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import Field

from shipper import metrics
from shipper.config import SourceConfig
from shipper.errors import ConfigError
from shipper.log import RateLimitedLog
from shipper.pipeline.feed import LineFeed
from shipper.source import Source, SourceContext
from shipper.units import Duration, Size

log = logging.getLogger("shipper.sources.process")

READ_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024  # F_SETPIPE_SZ: room for the child while a reader thread waits for the GIL
PUSH_BYTES = 1024 * 1024  # at most this much per push into the pipeline
PASSTHROUGH_MAX_BYTES = 8 * 1024 * 1024
PASSTHROUGH_FLUSH_SECONDS = 2.0  # at exit, how long queued passthrough output may take to be written
EOF_GRACE = 2.0  # after the child exits, how long a grandchild may keep its pipes open
DEATHSIG_EXEC = str(Path(__file__).with_name("deathsig_exec.py"))


class ProcessConfig(SourceConfig):
    type: Literal["process"]
    command: list[str] | None = Field(default=None, min_length=1)
    passthrough: bool = True
    env: dict[str, str] = {}
    cwd: Path | None = None
    max_buffer_bytes: Size = 32 * 1024 * 1024
    drain_timeout: Duration = 30.0

    def preflight(self, key: str) -> None:
        """A missing `cwd` would otherwise show only as the command failing to start."""
        if self.cwd is not None and not self.cwd.is_dir():
            problem = "is not a directory" if self.cwd.exists() else "does not exist"
            raise ConfigError(f"{key}.cwd", f"working directory {str(self.cwd)!r} {problem}")


def wrapped_source(sources: dict[str, SourceConfig]) -> tuple[str, ProcessConfig]:
    """The source `shipper run -- COMMAND` feeds: the config's one process source, else its one stdin
    source, which then reads the command's stdout and stderr (what `COMMAND | shipper run` gives it,
    so without passthrough: its sinks show the output)."""
    processes = [name for name, config in sources.items() if config.type == "process"]
    if len(processes) > 1:
        raise ConfigError(
            "sources",
            f"`shipper run -- COMMAND` feeds one process source, found {len(processes)}: {', '.join(processes)}",
        )
    if processes:
        config = sources[processes[0]]
        assert isinstance(config, ProcessConfig)
        return processes[0], config
    stdins = [name for name, config in sources.items() if config.type == "stdin"]
    if len(stdins) != 1:
        raise ConfigError(
            "sources", '`shipper run -- COMMAND` needs one source with type = "process" or "stdin" to read its output'
        )
    stdin = sources[stdins[0]]
    return stdins[0], ProcessConfig.model_validate({**stdin.model_dump(), "type": "process", "passthrough": False})


def exit_status(returncode: int) -> int:
    """A shell's convention: the exit code, or 128 + the signal number for a child killed by a signal."""
    return 128 - returncode if returncode < 0 else returncode


class _Buffer:
    """Output waiting for the pipeline, bounded in bytes; `put` (reader threads) never waits."""

    def __init__(self, max_bytes: int, loop: asyncio.AbstractEventLoop) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0  # queued plus taken but not yet pushed
        self.streams_open = 2
        self.closed = False
        self.ready = asyncio.Event()
        self._items: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._loop = loop

    def put(self, stream: str, data: bytes) -> bool:
        """Queue `data`, or return False when it does not fit."""
        with self._lock:
            if self.closed or self.nbytes + len(data) > self.max_bytes:
                return False
            wake = not self._items
            self._items.append((stream, data))
            self.nbytes += len(data)
        if wake:
            self._notify()
        return True

    def end(self) -> None:
        """One stream reached EOF."""
        with self._lock:
            self.streams_open -= 1
        self._notify()

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: shipper is exiting
            self._loop.call_soon_threadsafe(self.ready.set)

    def take(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to about `limit` bytes, in read order; the bytes stay counted until `release`."""
        taken: list[tuple[str, bytes]] = []
        size = 0
        with self._lock:
            while self._items and size < limit:
                item = self._items.popleft()
                taken.append(item)
                size += len(item[1])
        return taken

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.nbytes -= nbytes

    @property
    def finished(self) -> bool:
        """Nothing queued and nothing more to come."""
        with self._lock:
            return not self._items and (self.streams_open == 0 or self.closed)

    @property
    def idle(self) -> bool:
        """Nothing queued yet, but more may come."""
        with self._lock:
            return not self._items and self.streams_open > 0 and not self.closed

    def close(self) -> tuple[int, int]:
        """Accept nothing more; returns the bytes and lines still queued."""
        with self._lock:
            self.closed = True
            left = [data for _, data in self._items]
        self._notify()
        return sum(map(len, left)), sum(data.count(b"\n") for data in left)


class _Passthrough:
    """Copies bytes to one of shipper's own file descriptors from a thread, dropping (counted) when it blocks."""

    def __init__(self, fd: int, source: str, stream: str) -> None:
        self.fd = fd
        self.stream = stream
        self._queue: deque[bytes] = deque()
        self._nbytes = 0
        self._closed = False
        self._cond = threading.Condition()
        self._dropped = metrics.passthrough_dropped.labels(source, stream)
        self._problems = RateLimitedLog(log, interval=10.0)
        self._thread = threading.Thread(target=self._write_loop, daemon=True, name=f"passthrough-{stream}")
        self._thread.start()

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._nbytes + len(data) > PASSTHROUGH_MAX_BYTES:
                full = True
            else:
                full = False
                self._queue.append(data)
                self._nbytes += len(data)
                self._cond.notify()
        if full:
            self._dropped.inc(len(data))
            self._problems.warning(
                "passthrough",
                "shipper's own output is blocked; dropping passthrough output (still shipped to sinks)",
                stream=self.stream,
                dropped_bytes=len(data),
            )

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                data = self._queue.popleft()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:  # our stdout is gone (closed pipe): keep draining, count what is lost
                self._dropped.inc(len(data))
            with self._cond:
                self._nbytes -= len(data)

    def close(self) -> None:
        """Write what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))


class ProcessSource(Source):
    config: ProcessConfig

    def __init__(self, name: str, config: SourceConfig, context: SourceContext) -> None:
        super().__init__(name, config, context)
        self.command = context.command or self.config.command
        self._dropped = metrics.source_dropped.labels(name, "buffer_full")
        self._problems = RateLimitedLog(log, interval=10.0)
        self._lines_dropped = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def forward_signal(self, signum: signal.Signals) -> bool:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return False
        log.info(
            "forwarding a signal to the wrapped process",
            extra={"source": self.name, "pid": proc.pid, "signal": signum.name},
        )
        _signal_group(proc, signum)
        return True

    async def run(self) -> None:
        if not self.command:
            log.error(
                "nothing to run: set `command = [...]` in the process source or use `shipper run -- COMMAND ARGS`",
                extra={"source": self.name},
            )
            self.context.exit_code = 2
            return
        loop = asyncio.get_running_loop()
        cwd = self.config.cwd
        try:
            proc = _spawn(self.command, {**os.environ, **self.config.env} if self.config.env else None, cwd)
        except OSError as exc:
            if cwd is not None and exc.filename == cwd:  # removed since the config was checked
                key = f"sources.{self.name}.cwd"
                log.error(
                    "cannot enter the wrapped command's working directory",
                    extra={"key": key, "path": str(cwd), "error": exc.strerror},
                )
                self.context.exit_code = 2
                return
            log.error("cannot start the wrapped command", extra={"command": self.command[0], "error": str(exc)})
            self.context.exit_code = 126 if isinstance(exc, PermissionError) else 127
            return
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        log.info("wrapped process started", extra={"source": self.name, "pid": proc.pid, "command": self.command[0]})
        buffer = _Buffer(self.config.max_buffer_bytes, loop)
        passthrough: dict[str, _Passthrough] = {}
        if self.config.passthrough:
            passthrough = {
                "stdout": _Passthrough(1, self.name, "stdout"),
                "stderr": _Passthrough(2, self.name, "stderr"),
            }
        set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if set_pipe_size is not None:
                with contextlib.suppress(OSError):  # a smaller pipe still works, with less slack
                    fcntl.fcntl(pipe.fileno(), set_pipe_size, PIPE_BYTES)
            args = (pipe, stream, buffer, passthrough.get(stream))
            threading.Thread(target=self._pump, args=args, daemon=True, name=f"process-{stream}").start()
        exited: asyncio.Future[int] = loop.create_future()
        threading.Thread(target=_wait, args=(proc, exited, loop), daemon=True, name="process-wait").start()

        feed = self.context.open_feed()
        consumer = asyncio.create_task(self._consume(buffer, feed))
        stopping = asyncio.ensure_future(self.context.stopping.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [exited, stopping]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                forwarded = signal.Signals(self.context.stop_signal or signal.SIGTERM)
                log.info(
                    "forwarding the stop signal to the wrapped process",
                    extra={"source": self.name, "pid": proc.pid, "signal": forwarded.name},
                )
                _signal_group(proc, forwarded)
            code = exit_status(await exited)
            self.context.exit_code = code
            log.info("wrapped process exited", extra={"source": self.name, "exit_code": code})
            await self._drain(buffer, consumer)  # the agent then flushes the feed's held lines
        finally:
            stopping.cancel()
            consumer.cancel()
            if proc.poll() is None:  # cancelled by the shutdown deadline: the child must not outlive us
                _signal_group(proc, signal.SIGKILL)
                if self.context.exit_code is None:
                    self.context.exit_code = 128 + signal.SIGKILL
            left_bytes, left_lines = buffer.close()
            if left_bytes:
                metrics.source_dropped.labels(self.name, "shutdown").inc(left_lines)
                log.error(
                    "wrapped process output not delivered before exit",
                    extra={"source": self.name, "reason": "shutdown", "bytes": left_bytes, "lines": left_lines},
                )
            if self._lines_dropped:
                log.error(
                    "wrapped process output was dropped because the pipeline could not keep up",
                    extra={"source": self.name, "reason": "buffer_full", "lines": self._lines_dropped},
                )
            for writer in passthrough.values():
                writer.close()
            deadline = time.monotonic() + PASSTHROUGH_FLUSH_SECONDS
            for writer in passthrough.values():
                await asyncio.to_thread(writer.join, deadline)

    async def _drain(self, buffer: _Buffer, consumer: asyncio.Task[None]) -> None:
        """After the child exited, hand what it wrote to the pipeline within `drain_timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        done, _ = await asyncio.wait({consumer}, timeout=min(EOF_GRACE, self.config.drain_timeout))
        if not done:
            buffer.close()  # a grandchild may hold the pipes open: ship what was read, stop reading
            await asyncio.wait({consumer}, timeout=max(0.0, deadline - loop.time()))
        if not consumer.done():
            log.error("wrapped process output not handed over within drain_timeout", extra={"source": self.name})

    async def _consume(self, buffer: _Buffer, feed: LineFeed) -> None:
        """Move buffered output into the pipeline, one push per run of the same stream."""
        while True:
            items = buffer.take(PUSH_BYTES)
            if not items:
                if buffer.finished:
                    return
                buffer.ready.clear()
                if buffer.idle:
                    await buffer.ready.wait()
                continue
            start = 0
            for end in range(1, len(items) + 1):
                if end == len(items) or items[end][0] != items[start][0]:
                    data = b"".join(chunk for _, chunk in items[start:end])
                    await feed.push(data, items[start][0])
                    buffer.release(len(data))
                    start = end

    def _pump(self, pipe: IO[bytes], stream: str, buffer: _Buffer, passthrough: _Passthrough | None) -> None:
        """Reader thread: read the pipe until EOF, never waiting for anything but the child."""
        fd = pipe.fileno()
        cut = False  # the current line was partly dropped: skip to its end
        line_open = False  # the last bytes queued did not end a line: the pipeline holds its start
        dropped = False  # something was dropped since the last bytes queued
        while True:
            try:
                data = os.read(fd, READ_BYTES)
            except OSError:
                data = b""
            if not data:
                break
            if passthrough is not None:
                passthrough.put(data)
            if cut:
                newline = data.find(b"\n")
                if newline < 0:
                    self._drop(data, stream)
                    continue
                self._drop(data[: newline + 1], stream)
                data, cut = data[newline + 1 :], False
                if not data:
                    continue
            if dropped and line_open:  # end the held start of a cut line rather than glue the next one to it
                data = b"\n" + data
            if buffer.put(stream, data):
                line_open, dropped = not data.endswith(b"\n"), False
            else:
                self._drop(data, stream)
                cut, dropped = not data.endswith(b"\n"), True
        pipe.close()
        buffer.end()

    def _drop(self, data: bytes, stream: str) -> None:
        lines = data.count(b"\n")
        self._lines_dropped += lines
        self._dropped.inc(lines)
        self._problems.error(
            "buffer_full",
            "wrapped process output dropped: buffer full (the process itself is never blocked)",
            source=self.name,
            stream=stream,
            reason="buffer_full",
            max_buffer_bytes=self.config.max_buffer_bytes,
        )


def _wait(proc: subprocess.Popen[bytes], exited: asyncio.Future[int], loop: asyncio.AbstractEventLoop) -> None:
    """Waiter thread: resolve `exited` with the child's return code."""
    returncode = proc.wait()

    def resolve() -> None:
        if not exited.done():
            exited.set_result(returncode)

    with contextlib.suppress(RuntimeError):  # the loop is gone: shipper is exiting anyway
        loop.call_soon_threadsafe(resolve)


def _spawn(command: list[str], env: dict[str, str] | None, cwd: Path | None) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group with piped output; on Linux through deathsig_exec,
    so that it dies with shipper. PR_SET_PDEATHSIG fires when the *thread* that forked exits: this
    runs on the event loop's thread, the main one (the agent's signal handlers require it), which
    lives as long as shipper does."""
    if sys.platform != "linux":
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, process_group=0
        )
    status, status_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", DEATHSIG_EXEC, str(os.getpid()), str(status_w), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            process_group=0,
            pass_fds=(status_w,),
        )
    except BaseException:
        os.close(status)
        raise
    finally:
        os.close(status_w)
    with open(status, "rb") as reader:  # EOF once the command is exec'd (a few ms of interpreter start)
        failure = reader.read()
    if failure:
        proc.communicate()
        errno = int(failure)
        raise OSError(errno, os.strerror(errno), command[0])
    return proc


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the child's process group (a wrapper such as `npm start` and its node alike)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


REGISTRATION = (ProcessConfig, ProcessSource)
