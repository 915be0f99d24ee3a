"""Tail log files: glob discovery, rename and copytruncate rotation, truncation, durable offsets.

Identity. A file's content is identified by a fingerprint, the CRC32 of its first
`fingerprint_bytes` (of what it has so far while it is shorter), together with its device and
inode. Neither alone is enough: inodes are reused after deletion (vector#23076) and a copy has
the same content as its original. A checkpoint is trusted only when the file at its inode still
starts with the recorded head and is at least as long as the recorded offset; the same full
fingerprint under another inode (the copy `copytruncate` leaves) continues from the offset.
Checkpoints are keyed `dev:ino:fingerprint` ("short" until the file has `fingerprint_bytes`).

Reading. One task per file reads `read_bytes` chunks into the file's own LineFeed: at once when the
page cache holds them (preadv with RWF_NOWAIT: ~10% less of the agent's CPU than a thread hand-off
per chunk), else with pread in a worker thread, the next chunk read while the current one is
parsed. When the pipeline is full the push waits and the backlog stays in the file. Offsets move
only over delivered data (the feed's on_commit) and the agent saves them atomically.

Rotation. A renamed or deleted file keeps being read through its open descriptor until it has
been idle for `rotate_wait`. A file that shrinks below the read offset, or whose head or last read
bytes change (looked at whenever its size or mtime changes: a rewrite may keep the length), was
truncated or rewritten: the unread rest is looked for in a sibling holding the same content
(the copy) and read from there, and the file itself is read again from 0 with a new feed. There
is only ever one reader per inode, so a stale reader cannot re-read rewritten data (vector#23619).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import logging
import os
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, Literal

from pydantic import Field, field_validator

from shipper import metrics
from shipper.config import RedactConfig, SourceConfig
from shipper.errors import ConfigError
from shipper.log import RateLimitedLog
from shipper.parsing import Processor, build_processor
from shipper.pipeline.feed import LineFeed
from shipper.sink import CheckResult
from shipper.source import Source, SourceContext
from shipper.units import Duration, Size

log = logging.getLogger("shipper.sources.file")

MIN_READ_BYTES = 64 * 1024
TAIL_BYTES = 64  # the last bytes read before the offset: tells a copy of the file from a look-alike
END_SCAN_BYTES = 64 * 1024  # `start_at = "end"` backs up to the last newline within this
# `backfill_events` reads back from the end in spans doubling from the first to at most the second.
BACKFILL_SPAN = 64 * 1024
BACKFILL_MAX_SPAN = 16 * 1024 * 1024
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux: preadv that never waits for the disk
COMPRESSED = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"PK\x03\x04")  # gzip, zstd, xz, zip

Ident = tuple[int, int]  # (st_dev, st_ino)


class FileConfig(SourceConfig):
    type: Literal["file"]
    include: list[str] = Field(min_length=1)
    exclude: list[str] = []
    start_at: Literal["end", "beginning"] = "end"
    # With start_at = "end": begin this many events (not lines) before the end (`shipper tail -n`).
    backfill_events: int = Field(default=0, ge=0)
    glob_interval: Duration = Field(default=1.0, gt=0)
    poll_interval: Duration = Field(default=0.25, gt=0)
    read_bytes: Size = 256 * 1024
    fingerprint_bytes: int = Field(default=1024, ge=64, le=65536)
    rotate_wait: Duration = 10.0
    forget_after: Duration = 86400.0

    def preflight(self, key: str) -> None:
        """A pattern's fixed directory that exists but cannot be listed would silently match nothing."""
        for index, pattern in enumerate(self.include):
            fixed = os.path.dirname(os.path.expanduser(pattern).split("*")[0].split("?")[0].split("[")[0])
            if fixed and os.path.isdir(fixed) and not os.access(fixed, os.R_OK | os.X_OK):
                raise ConfigError(f"{key}.include[{index}]", f"cannot list {fixed!r}: permission denied")

    @field_validator("read_bytes")
    @classmethod
    def _big_chunks(cls, value: int) -> int:
        if value < MIN_READ_BYTES:
            raise ValueError(f"at least {MIN_READ_BYTES} bytes (64KiB): the hot path reads big chunks")
        return value


@dataclass(frozen=True, slots=True)
class _Entry:
    """A checkpoint as stored: where a file's content was, its head, and how far it was delivered."""

    path: str
    dev: int
    ino: int
    offset: int
    size: int
    head: int
    crc: int
    seen: float

    @classmethod
    def parse(cls, raw: Any) -> _Entry:
        """The entry; ValueError saying why when it is not one this version can trust."""
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            raise ValueError("not an object with a path")
        ints: list[int] = []
        for name in ("dev", "ino", "offset", "size", "head", "crc"):
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} is not a whole number of at least 0: {value!r}")
            ints.append(value)
        seen = raw.get("seen")
        if not isinstance(seen, (int, float)) or isinstance(seen, bool):
            raise ValueError(f"seen is not a time: {seen!r}")
        dev, ino, offset, size, head, crc = ints
        if offset > size:
            raise ValueError(f"offset {offset} is beyond the size {size} recorded with it")
        return cls(raw["path"], dev, ino, offset, size, head, crc, float(seen))

    @classmethod
    def trusted(cls, raw: Any) -> _Entry | None:
        """The entry, or None when it is not one (rejected when the checkpoints were loaded)."""
        try:
            return cls.parse(raw)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class _Wanted:
    """Content to find again in a directory: by inode (renamed) or by head and tail (copied)."""

    ident: Ident | None
    head_len: int
    head_crc: int
    offset: int
    tail: bytes
    full: bool  # the head is a full fingerprint, strong enough alone to recognise a copy


class _Watcher:
    """One file's content, followed through renames, copies and deletion by its open descriptor."""

    def __init__(self, path: str, fd: int, st: os.stat_result, head: bytes, offset: int) -> None:
        self.path = path
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.offset = offset  # read so far; the feed's tracker knows what was delivered
        self.head = head
        self.head_crc = zlib.crc32(head)
        self.tail = b""
        self.key = ""
        self.matched = True  # found by the last glob scan; False once renamed away or deleted
        self.idle_since = time.monotonic()
        self.forgotten = False  # its content is gone: late commits must not recreate the checkpoint
        self.feed: LineFeed | None = None

    @property
    def ident(self) -> Ident:
        return (self.dev, self.ino)


def _open_head(path: str, nbytes: int) -> tuple[int, os.stat_result, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd), os.pread(fd, nbytes, 0)
    except OSError:
        os.close(fd)
        raise


def _compressed(head: bytes) -> bool:
    """A rotated log compressed by logrotate (`app.log.2.gz` matched by `app.log*`) is not text to ship."""
    return head.startswith(COMPRESSED) or (head[:3] == b"BZh" and head[3:4].isdigit())


def _end_of_last_line(fd: int, size: int) -> int:
    """Where `start_at = "end"` starts: after the last complete line, so a line being written is read whole."""
    span = min(size, END_SCAN_BYTES)
    newline = os.pread(fd, span, size - span).rfind(b"\n")
    if newline >= 0:
        return size - span + newline + 1
    return 0 if span == size else size


def _backfill_start(fd: int, end: int, count: int, new_processor: Callable[[], Processor]) -> int:
    """Where the last `count` events before `end` begin. Read back in doubling spans until two
    agree: a span may start inside an event, whose lines can look like events of their own."""
    span, candidate = BACKFILL_SPAN, None
    while True:
        begin = max(0, end - span)
        starts = _event_starts(os.pread(fd, end - begin, begin), begin, new_processor())
        if begin == 0:
            return starts[-count] if len(starts) >= count else 0
        found = starts[-count] if len(starts) > count else None  # more than `count`: the first may be partial
        if found is not None and found == candidate:
            return found
        if span >= BACKFILL_MAX_SPAN:
            return found if found is not None else (starts[0] if starts else end)
        candidate, span = found, span * 2


def _event_starts(data: bytes, begin: int, processor: Processor) -> list[int]:
    """File offsets where an event begins among the whole lines of `data` (read at `begin`, ending
    with a newline; a first line that may be partial is skipped), as `processor` groups them."""
    skip = 0 if begin == 0 else data.find(b"\n") + 1
    if begin and not skip:
        return []
    lines = data[skip:].split(b"\n")[:-1]  # without what follows the last newline
    position, now, starts = begin + skip, time.time(), []
    for line in lines:
        held = processor.held_bytes
        emitted = len(processor.parse([line], None, now))
        holds = processor.held_bytes
        # Nothing open: the line starts an event (unless it is a dropped blank line). A group open:
        # the line starts one when it ended that group by not belonging to it.
        if (emitted or holds) and (not held or (emitted and (holds or emitted > 1))):
            starts.append(position)
        position += len(line) + 1
    return starts


def _pread(fd: int, size: int, offset: int) -> asyncio.Future[bytes]:
    """`size` bytes at `offset`: read at once when the page cache holds them (RWF_NOWAIT: a memory
    copy, cheaper than handing the read to a thread and back), else in a worker thread, so a slow
    disk never stalls the event loop."""
    loop = asyncio.get_running_loop()
    if _NOWAIT is not None:
        buffer = bytearray(size)
        try:
            got = os.preadv(fd, [buffer], offset, _NOWAIT)
        except OSError:  # not cached (EAGAIN), or an error the thread's pread reports as usual
            pass
        else:  # a short read is whole only at the end of the file; else the thread reads it all
            if got == size or got == os.fstat(fd).st_size - offset:
                done: asyncio.Future[bytes] = loop.create_future()
                done.set_result(bytes(memoryview(buffer)[:got]))
                return done
    return loop.run_in_executor(None, os.pread, fd, size, offset)


class FileSource(Source):
    replayable = True
    config: FileConfig

    def __init__(self, name: str, config: SourceConfig, context: SourceContext) -> None:
        super().__init__(name, config, context)
        self.watchers: dict[Ident, _Watcher] = {}  # by the inode each descriptor reads
        self._tasks: set[asyncio.Task[None]] = set()
        self._deferred: set[Ident] = set()  # files that look like a copy of one being read
        self._compressed: set[Ident] = set()
        self._known_paths: set[str] = set()
        self._known_idents: set[Ident] = set()
        self._truncations = metrics.file_truncations.labels(name)
        self._lost = metrics.file_bytes_lost.labels(name)
        self._problems = RateLimitedLog(log, interval=300.0)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        entries = []
        for key, raw in list(self.context.checkpoints.load().items()):
            try:
                entries.append(_Entry.parse(raw))
            except ValueError as exc:  # the file's start then comes from `start_at`, or a fingerprint match
                self.context.checkpoints.reject(key, str(exc))
        self._known_paths = {e.path for e in entries}
        self._known_idents = {(e.dev, e.ino) for e in entries}
        try:
            await self._discover(initial=True)
            await self._recover_rotated()
            while not await self._stopped_within(self.config.glob_interval):
                await self._discover(initial=False)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for w in self.watchers.values():  # partial lines stay unread: the next run reads them whole
                if w.feed is not None:
                    self.context.close_feed(w.feed)
                if w.fd >= 0:
                    os.close(w.fd)
            self.watchers.clear()

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.context.stopping.wait()
        return self.context.stopping.is_set()

    async def check(self) -> CheckResult:
        """The files `include` matches now, each readable by shipper; none matching yet is not a failure
        (a sidecar's API may not have logged yet), but says so."""
        found = await asyncio.to_thread(self._scan)
        unreadable = [path for path in sorted(found) if not os.access(path, os.R_OK)]
        if unreadable:
            more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
            return CheckResult(False, f"cannot read {unreadable[0]!r}{more}: permission denied")
        if not found:
            return CheckResult(True, f"no file matches {', '.join(self.config.include)} yet")
        return CheckResult(True, f"{len(found)} file(s) readable")

    # ------------------------------------------------------------------ discovery

    def _scan(self) -> dict[str, os.stat_result]:
        """Regular files matching `include` and not `exclude` (runs in a worker thread)."""
        found: dict[str, os.stat_result] = {}
        for pattern in self.config.include:
            for path in glob.iglob(os.path.expanduser(pattern), recursive=True):
                name = os.path.basename(path)
                if any(fnmatch(path, ex) or fnmatch(name, ex) for ex in self.config.exclude):
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[path] = st
        return found

    async def _discover(self, initial: bool) -> None:
        found = await asyncio.to_thread(self._scan)
        present: set[Ident] = set()
        fresh: list[str] = []
        for path, st in found.items():
            ident = (st.st_dev, st.st_ino)
            present.add(ident)
            w = self.watchers.get(ident)
            if w is None:
                if ident not in self._compressed:
                    fresh.append(path)
            elif w.path != path:
                log.info("file renamed", extra={"source": self.name, "from": w.path, "to": path})
                w.path = path
        for ident, w in self.watchers.items():
            w.matched = ident in present
        self._deferred &= present
        self._compressed &= present
        # Files still at their checkpointed inode first, so a copy never claims its original's checkpoint.
        checkpointed = {(e.dev, e.ino) for e in self._entries().values()}
        fresh.sort(key=lambda p: (found[p].st_dev, found[p].st_ino) not in checkpointed)
        for path in fresh:
            try:
                fd, st, head = await asyncio.to_thread(_open_head, path, self.config.fingerprint_bytes)
            except OSError as exc:
                self._problems.warning(f"open:{path}", "cannot open file", source=self.name, path=path, error=str(exc))
                continue
            if (st.st_dev, st.st_ino) in self.watchers:  # taken over meanwhile (a copy being finished)
                os.close(fd)
                continue
            if _compressed(head):
                log.info("skipping compressed file", extra={"source": self.name, "path": path})
                self._compressed.add((st.st_dev, st.st_ino))
                os.close(fd)
                continue
            start = self._resolve(path, fd, st, head, initial)
            if start is None:
                os.close(fd)
                continue
            offset, replaces = start
            self._watch(path, fd, st, head, offset, replaces=replaces)
        self._expire()

    def _entries(self) -> dict[str, _Entry]:
        """Valid checkpoints no live reader owns."""
        owned = {w.key for w in self.watchers.values()}
        out: dict[str, _Entry] = {}
        for key, raw in self.context.checkpoints.state.items():
            entry = _Entry.trusted(raw)
            if entry is not None and key not in owned:
                out[key] = entry
        return out

    def _resolve(
        self, path: str, fd: int, st: os.stat_result, head: bytes, initial: bool
    ) -> tuple[int, str | None] | None:
        """Where to start a file not followed yet, and the checkpoint it continues; None: leave it for now."""
        ident = (st.st_dev, st.st_ino)
        entries = self._entries()
        # The same inode still holding the same content: resume where delivery stopped.
        for key, e in entries.items():
            if (e.dev, e.ino) == ident and e.head <= len(head) and zlib.crc32(head[: e.head]) == e.crc:
                return self._resume(path, key, e, st, "same file"), key
        if len(head) == self.config.fingerprint_bytes:
            twin = next((w for w in self.watchers.values() if w.head == head), None)
            if twin is not None:
                # A copy of a file being read (copytruncate in progress), or a file that merely starts
                # alike. Its reader finds a copy itself once its file is truncated; look again later.
                if ident not in self._deferred or not self._intact(twin) or self._is_prefix_copy(twin, fd, st):
                    self._deferred.add(ident)
                    return None
            else:
                crc = zlib.crc32(head)
                for key, e in entries.items():
                    if e.head == len(head) and e.crc == crc:
                        return self._resume(path, key, e, st, "same content under another inode"), key
        if ident in self._known_idents:
            log.warning(
                "checkpoint for this inode does not match the file's content (inode reused or file rewritten); "
                "not trusted, reading the file from the start",
                extra={"source": self.name, "path": path},
            )
        known = path in self._known_paths or ident in self._known_idents
        if initial and self.config.start_at == "end" and not known:
            end = _end_of_last_line(fd, st.st_size)
            if self.config.backfill_events:
                end = _backfill_start(fd, end, self.config.backfill_events, self._scanner)
            return end, None
        return 0, None  # new since shipper started, or new content at a known place: read all of it

    def _scanner(self) -> Processor:
        """A parser grouping lines as this source's feeds do (no redaction: only boundaries are wanted)."""
        return build_processor(self.name, self.config, host=self.context.host, redact=RedactConfig(enabled=False))

    def _resume(self, path: str, key: str, e: _Entry, st: os.stat_result, why: str) -> int:
        if st.st_size < e.offset:
            self._truncations.inc()
            log.warning(
                "file is shorter than its checkpoint (truncated while stopped); reading it from the start",
                extra={"source": self.name, "path": path, "offset": e.offset, "size": st.st_size},
            )
            return 0
        log.info("resuming file", extra={"source": self.name, "path": path, "offset": e.offset, "match": why})
        return e.offset

    def _intact(self, w: _Watcher) -> bool:
        """`w`'s file still holds what `w` read: not shorter than the offset, same head, and the same
        last bytes before the offset (a rewrite may keep a header line, or the whole first KiB)."""
        if os.fstat(w.fd).st_size < w.offset or (w.head and os.pread(w.fd, len(w.head), 0) != w.head):
            return False
        return not w.tail or os.pread(w.fd, len(w.tail), w.offset - len(w.tail)) == w.tail

    @staticmethod
    def _is_prefix_copy(w: _Watcher, fd: int, st: os.stat_result) -> bool:
        """The file at `fd` holds the beginning of `w`'s file (same bytes where it ends)."""
        end = min(st.st_size, os.fstat(w.fd).st_size)
        if st.st_size > end:
            return False
        span = min(TAIL_BYTES, end)
        return os.pread(fd, span, end - span) == os.pread(w.fd, span, end - span)

    def _find_rotated(
        self, directory: str, wanted: _Wanted, live: set[Ident]
    ) -> tuple[str, int, os.stat_result, bytes] | None:
        """A file in `directory` holding `wanted`, opened: the same inode renamed, else the newest copy."""
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        best: tuple[str, int, os.stat_result, bytes] | None = None
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            same_inode = ident == wanted.ident
            if not stat.S_ISREG(st.st_mode) or ident in live or st.st_size < wanted.offset:
                continue
            if not same_inode and not (wanted.head_len and (wanted.full or wanted.tail)):
                continue
            try:
                fd, st, head = _open_head(path, self.config.fingerprint_bytes)
            except OSError:
                continue
            span = len(wanted.tail)
            match = len(head) >= wanted.head_len and zlib.crc32(head[: wanted.head_len]) == wanted.head_crc
            if match and span:
                match = os.pread(fd, span, wanted.offset - span) == wanted.tail
            if match and (same_inode or best is None or st.st_mtime > best[2].st_mtime):
                if best is not None:
                    os.close(best[1])
                best = (path, fd, st, head)
                if same_inode:
                    break
            else:
                os.close(fd)
        return best

    async def _recover_rotated(self) -> None:
        """Finish files rotated while shipper was stopped: their unread rest is in the rotated file."""
        now = time.time()
        for key, e in self._entries().items():
            if now - e.seen > self.config.forget_after:
                continue
            wanted = _Wanted((e.dev, e.ino), e.head, e.crc, e.offset, b"", full=e.head == self.config.fingerprint_bytes)
            found = await asyncio.to_thread(self._find_rotated, os.path.dirname(e.path), wanted, set(self.watchers))
            if found is None:
                continue
            path, fd, st, head = found
            if st.st_size == e.offset or (st.st_dev, st.st_ino) in self.watchers:
                os.close(fd)
                continue
            log.info(
                "reading the rest of a file rotated while stopped",
                extra={"source": self.name, "path": path, "was": e.path, "offset": e.offset},
            )
            self._watch(path, fd, st, head, e.offset, replaces=key, matched=False)

    def _expire(self) -> None:
        """Forget checkpoints of files gone for longer than `forget_after` (and unreadable ones)."""
        owned = {w.key for w in self.watchers.values()}
        now = time.time()
        for key, raw in list(self.context.checkpoints.state.items()):
            entry = _Entry.trusted(raw)
            if key not in owned and (entry is None or now - entry.seen > self.config.forget_after):
                self.context.checkpoints.remove(key)

    # ------------------------------------------------------------------ following one file

    def _key(self, w: _Watcher) -> str:
        fingerprint = f"{w.head_crc:08x}" if len(w.head) >= self.config.fingerprint_bytes else "short"
        return f"{w.dev}:{w.ino}:{fingerprint}"

    def _commit(self, w: _Watcher, position: int) -> None:
        """The feed's on_commit: everything before `position` was delivered."""
        if w.forgotten:
            return
        entry = {
            "path": w.path,
            "dev": w.dev,
            "ino": w.ino,
            "offset": position,
            "size": max(w.size, position),
            "head": len(w.head),
            "crc": w.head_crc,
            "seen": time.time(),
        }
        self.context.checkpoints.update(w.key, entry)

    def _rekey(self, w: _Watcher) -> None:
        """Move `w`'s checkpoint to its current key (new inode, or a head that became a full fingerprint)."""
        old, w.key = w.key, self._key(w)
        if old != w.key:
            self._commit(w, w.feed.tracker.committed if w.feed is not None else w.offset)
            self.context.checkpoints.remove(old)

    def _watch(
        self,
        path: str,
        fd: int,
        st: os.stat_result,
        head: bytes,
        offset: int,
        *,
        replaces: str | None = None,
        matched: bool = True,
    ) -> None:
        w = _Watcher(path, fd, st, head, offset)
        w.key = self._key(w)
        w.matched = matched
        if offset:
            span = min(TAIL_BYTES, offset)
            w.tail = os.pread(fd, span, offset - span)
        w.feed = self.context.open_feed(functools.partial(self._commit, w), committed=offset, fields={"file": w.path})
        self.watchers[w.ident] = w
        self._commit(w, offset)  # a restart resumes here, not wherever `start_at` says
        if replaces is not None and replaces != w.key:
            self.context.checkpoints.remove(replaces)
        log.debug("following file", extra={"source": self.name, "path": path, "offset": offset})
        task = asyncio.create_task(self._follow(w), name=f"file:{path}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, w: _Watcher) -> None:
        """Read `w` until shipper stops, or until its file is gone (rotated away or deleted) and idle."""
        try:
            while not self.context.stopping.is_set():
                st = os.fstat(w.fd)
                # Written to since the last look (a rewrite in place may keep the size): still what was read?
                changed = st.st_size != w.size or st.st_mtime_ns != w.mtime_ns
                if st.st_size < w.offset or (changed and not self._intact(w)):
                    if not await self._truncated(w, st):
                        return
                    continue
                w.size, w.mtime_ns = st.st_size, st.st_mtime_ns
                if w.size > w.offset:
                    await self._read(w)
                    w.idle_since = time.monotonic()
                    continue
                gone = not w.matched or st.st_nlink == 0
                if gone and time.monotonic() - w.idle_since >= self.config.rotate_wait:
                    await self._finish(w)
                    return
                await self._stopped_within(self.config.poll_interval)
        except OSError as exc:
            log.error("cannot read file", extra={"source": self.name, "path": w.path, "error": str(exc)})
            await self._finish(w, flush=False)
        except Exception:
            log.exception("file reader failed", extra={"source": self.name, "path": w.path})
            await self._finish(w, flush=False)

    async def _read(self, w: _Watcher) -> None:
        """Read from the offset to the end of the file, one push per chunk, the next pread overlapping the parse."""
        assert w.feed is not None
        size = self.config.read_bytes
        pending = _pread(w.fd, size, w.offset)
        while True:
            data = await pending
            if not data:
                return
            w.offset += len(data)
            more = len(data) == size and not self.context.stopping.is_set()
            if more:
                pending = _pread(w.fd, size, w.offset)
            w.tail = (w.tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]
            if len(w.head) < self.config.fingerprint_bytes:
                self._grow_head(w)  # before the push: its commit records the head
            await w.feed.push(data, None, w.offset)
            if not more:
                return

    def _grow_head(self, w: _Watcher) -> None:
        head = os.pread(w.fd, self.config.fingerprint_bytes, 0)
        if len(head) > len(w.head):
            w.head, w.head_crc = head, zlib.crc32(head)
            self._rekey(w)

    async def _truncated(self, w: _Watcher, st: os.stat_result) -> bool:
        """`w`'s file shrank below the offset or its head changed. True when `w` goes on reading a copy."""
        self._truncations.inc()
        wanted = _Wanted(None, len(w.head), w.head_crc, w.offset, w.tail, full=False)
        copy = await asyncio.to_thread(self._find_rotated, os.path.dirname(w.path), wanted, set(self.watchers))
        original, fd = w.path, w.fd
        head = os.pread(fd, self.config.fingerprint_bytes, 0)
        del self.watchers[w.ident]
        if copy is None:
            unread = max(0, w.size - w.offset)
            log.warning(
                "file truncated; reading it again from the start",
                extra={"source": self.name, "path": original, "offset": w.offset, "unread_bytes_lost": unread},
            )
            self._lost.inc(unread)
            w.fd = -1  # the new reader owns the descriptor
            w.forgotten = True
            self.context.checkpoints.remove(w.key)
            self._watch(original, fd, st, head, 0)  # before any await: never an inode without its reader
            await self._finish(w)
            return False
        path, copy_fd, copy_st, _ = copy
        log.warning(
            "file truncated (copytruncate); reading its rest from the copy, then the file from the start",
            extra={"source": self.name, "path": original, "copy": path, "offset": w.offset},
        )
        w.path, w.fd, w.dev, w.ino, w.size = path, copy_fd, copy_st.st_dev, copy_st.st_ino, copy_st.st_size
        w.matched, w.idle_since = False, time.monotonic()
        self._rekey(w)
        self.watchers[w.ident] = w
        self._watch(original, fd, st, head, 0)
        return True

    async def _finish(self, w: _Watcher, *, flush: bool = True) -> None:
        """Stop following `w`: its file was read to the end after it went away (or its content is gone)."""
        if w.feed is not None:
            if flush:  # nothing more will come: a last line without a newline is still a line
                await w.feed.flush(force=True)
            self.context.close_feed(w.feed)
        if self.watchers.get(w.ident) is w:
            del self.watchers[w.ident]
        if w.fd >= 0:
            os.close(w.fd)
            w.fd = -1
        log.info("stopped following file", extra={"source": self.name, "path": w.path, "offset": w.offset})


REGISTRATION = (FileConfig, FileSource)
