"""A sink's disk buffer: an append-only log of checksummed records in segment files.

Layout: `<state_dir>/buffers/<sink>/<seq>.seg`, and `position.json` (a checkpoint file: the first
record not yet delivered). A record is one channel part: a header (magic, payload length, event
count, CRC32 of the count and payload), then the part's events (each one's wire bytes, timestamp
and fields), marshalled and compressed with zstd (level 1: ~400 MB/s, logs shrink 5-10x).

Records are written whole, in the event loop, through an unbuffered descriptor, so the reader sees
each one as soon as it is written. Every run starts a new segment (a tail torn by a crash is never
appended to), and so does a segment past `segment_bytes`. Reads are sequential from the delivered
position. Each record read gets an ack from the log's own `AckTracker`, exactly as a source's
chunk does: the delivered position moves over contiguous delivered records only; segments wholly
before it are deleted, and once everything is delivered the last one too.

A record that fails its checks (a torn tail, garbled or zeroed bytes) is skipped to the next valid
record of its segment (found by its magic and checksum) or to the segment's end: counted
(`shipper_buffer_corrupt_bytes_total`, and the events its header still names as dropped with
reason `buffer_corrupt`) and logged, never retried, so a bad record can neither loop nor stall
the buffer.

Durability (`fsync`): "interval" (the default) fsyncs the written segments at least every
`fsync_interval` and before the agent saves any checkpoint, so a source's checkpoint is never on
disk ahead of the data it handed to this buffer; "always" fsyncs each record before the source's
data counts as taken; "never" leaves it to the kernel (a process crash loses nothing either way,
only a power loss can).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import marshal
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from shipper import metrics
from shipper.checkpoint import CheckpointStore
from shipper.event import ENCODED_OVERHEAD, Encoded, Event, memory_size
from shipper.pipeline.acks import Ack, AckTracker
from shipper.statelock import StateLock

log = logging.getLogger("shipper.buffer")

MAGIC = b"SPB\x01"
HEADER = struct.Struct("<4sIII")  # magic, payload length, events, CRC32 of (events, payload)
MAX_RECORD = 1 << 31  # a header naming more is garbage
_SEGMENT = re.compile(r"^(\d{16})\.seg$")
Position = tuple[int, int]  # (segment, offset of the next record)


class Spilled(Encoded):
    """A prepared event read back from a disk buffer: it is on disk until delivered."""

    __slots__ = ()


class SpilledEvent(Event):
    """A parsed event (for a sink without a preparer) read back from a disk buffer."""

    __slots__ = ()


def on_disk(event: Event) -> bool:
    """Whether `event` came out of a disk buffer, where it stays until delivered."""
    return isinstance(event, (Spilled, SpilledEvent))


def segment_bytes_for(max_bytes: int) -> int:
    """Segments of a sixteenth of the bound, between 1 and 64 MiB: deleted whole once delivered, so
    the bound is kept to within one segment."""
    return min(max(max_bytes // 16, 1 << 20), 64 << 20)


class SpillLog:
    def __init__(
        self,
        sink: str,
        directory: Path,
        max_bytes: int,
        fsync: str = "interval",
        on_change: Callable[[], None] | None = None,
        segment_bytes: int | None = None,
    ) -> None:
        self.sink = sink
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes or segment_bytes_for(max_bytes)
        self.store = CheckpointStore(directory / "position.json", on_change, kind="buffer_position")
        self.lock = StateLock(
            directory.parent.parent / "locks" / f"buffer-{sink}.lock",
            f"the disk buffer of sink {sink} is in use by {{owner}} ({{path}} is locked); give each shipper "
            "its own agent.state_dir",
        )
        self._ends: dict[int, int] = {}  # segment -> bytes of it that hold records (its size on disk)
        self._events: dict[int, int] = {}  # segment -> events written to it
        self._writing: int | None = None  # the segment being appended to, with its descriptor
        self._write_fd = -1
        self._unsynced: list[int] = []  # descriptors written since the last sync (closed once synced)
        self._lock = threading.Lock()  # between the loop (rotation) and a sync in a worker thread
        self._read: Position = (0, 0)
        self._next_segment = 0
        self._read_fd = -1
        self._read_segment = -1
        self.tracker = AckTracker(self._commit)
        self._gauge_bytes = metrics.buffer_disk_bytes.labels(sink)
        self._gauge_events = metrics.buffer_disk_events.labels(sink)
        self._corrupt = metrics.buffer_corrupt_bytes.labels(sink)
        metrics.buffer_disk_capacity.labels(sink).set(max_bytes)

    # ------------------------------------------------------------------ opening

    def open(self) -> None:
        """Take the buffer (one process at a time) and find what a previous run left undelivered:
        reading starts at the delivered position."""
        self.lock.acquire(f"sink {self.sink}")
        if self.directory.is_dir():
            for entry in os.scandir(self.directory):
                match = _SEGMENT.match(entry.name)
                if match:
                    self._ends[int(match.group(1))] = entry.stat().st_size
                    self._events[int(match.group(1))] = 0
        state = self.store.load()
        segment, offset = state.get("segment"), state.get("offset")
        if not (isinstance(segment, int) and isinstance(offset, int) and segment >= 0 and offset >= 0):
            if state:  # checksummed, yet nonsense: every record the buffer holds is sent (again)
                self.store.reject("offset", f"segment {segment!r}, offset {offset!r}: replaying all it holds")
            segment, offset = 0, 0
        for stale in [seq for seq in self._ends if seq < segment]:  # delivered, but not yet deleted
            self._delete(stale)
        if segment not in self._ends or offset > self._ends[segment]:
            if segment in self._ends:
                why = f"offset {offset} past the end of segment {segment} ({self._ends[segment]} bytes): replaying it"
                self.store.reject("offset", why)
            segment, offset = min(self._ends, default=segment), 0
        self._read = (segment, offset)
        self._next_segment = max(self._ends, default=segment) + 1
        self.tracker.committed = self._read
        self._count_events()
        if self.pending:
            log.info(
                "disk buffer holds undelivered events from a previous run; sending them first",
                extra={"sink": self.sink, "events": self.nevents, "bytes": self.nbytes},
            )

    def _count_events(self) -> None:
        """Event counts per segment from the record headers (for the gauges), without reading payloads."""
        for segment, end in self._ends.items():
            try:
                with open(self._path(segment), "rb") as handle:
                    offset = 0
                    while offset + HEADER.size <= end:
                        magic, length, events, _ = HEADER.unpack(handle.read(HEADER.size))
                        if magic != MAGIC:
                            break
                        self._events[segment] += events
                        offset += HEADER.size + length
                        handle.seek(offset)
            except (OSError, struct.error):
                continue
        self._update_gauges()

    # ------------------------------------------------------------------ state

    @property
    def pending(self) -> bool:
        """Records written and not yet read."""
        segment, offset = self._read
        return any(seq > segment for seq in self._ends) or offset < self._ends.get(segment, 0)

    @property
    def nbytes(self) -> int:
        return sum(self._ends.values())

    @property
    def nevents(self) -> int:
        return sum(self._events.values())

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:016d}.seg"

    def _update_gauges(self) -> None:
        self._gauge_bytes.set(self.nbytes)
        self._gauge_events.set(self.nevents)

    # ------------------------------------------------------------------ writing

    def append(self, events: list[Event], alone_over_bound: bool = True) -> Position | None:
        """Write `events` as one record; the position after it. None, writing nothing, when the bound
        would be passed, but for a record that goes into an empty log alone when `alone_over_bound`
        (a part bigger than the whole bound must not wait forever); OSError (disk full, ...) when
        the write failed, the segment left as it was."""
        record = encode_record(events)
        if self.nbytes + len(record) > self.max_bytes and (self.nbytes or not alone_over_bound):
            return None
        if self._writing is None or self._ends[self._writing] >= self.segment_bytes:
            self._start_segment()
        assert self._writing is not None
        segment, fd = self._writing, self._write_fd
        try:
            _write_all(fd, record)
        except OSError:
            self._abandon_segment(segment)
            raise
        self._ends[segment] += len(record)
        self._events[segment] += len(events)
        self._update_gauges()
        return (segment, self._ends[segment])

    def consume(self, position: Position, events: int) -> Ack:
        """The record of `events` just written up to `position` is kept in memory by a caught-up
        reader: read past it. Its ack, as `read` gives."""
        self._read = position
        return self._ack(position, events)

    def _ack(self, position: Position, events: int) -> Ack:
        """An ack of a record read, holding a unit per event: the driver releases them as delivered."""
        ack = self.tracker.open(position)
        ack.add(events - 1)
        return ack

    def _start_segment(self) -> None:
        self._retire_writer()
        self.directory.mkdir(parents=True, exist_ok=True)
        segment = self._next_segment
        self._next_segment += 1
        fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._ends[segment] = 0
        self._events[segment] = 0
        with self._lock:
            self._writing, self._write_fd = segment, fd
            self._unsynced.append(fd)

    def _retire_writer(self) -> None:
        """Stop appending to the current segment (its descriptor is closed by the next sync)."""
        with self._lock:
            self._writing, self._write_fd = None, -1

    def _abandon_segment(self, segment: int) -> None:
        """After a failed write: cut the segment back to its last whole record (a reader would skip a
        torn one anyway) and write the next record to a new segment."""
        with contextlib.suppress(OSError):
            os.truncate(self._path(segment), self._ends[segment])
        self._retire_writer()

    def sync(self) -> None:
        """Flush what was written to the disk ("never": only close retired segments), from a worker
        thread or the loop."""
        with self._lock:
            descriptors = self._unsynced
            self._unsynced = [self._write_fd] if self._write_fd >= 0 else []
            for fd in descriptors:
                if self.fsync != "never":
                    try:
                        os.fsync(fd)
                    except OSError as exc:
                        log.error("cannot fsync the disk buffer", extra={"sink": self.sink, "error": str(exc)})
                if fd != self._write_fd:
                    os.close(fd)

    # ------------------------------------------------------------------ reading

    def read(self) -> tuple[list[Event], Ack] | None:
        """The next record's events and their ack (delivering them moves the delivered position past
        the record); None when every record was read."""
        while True:
            segment, offset = self._read
            end = self._ends.get(segment)
            if end is None or offset >= end:
                later = [seq for seq in self._ends if seq > segment]
                if not later:
                    return None
                self._close_reader()
                self._read = (min(later), 0)
                continue
            if self._read_segment != segment:
                self._close_reader()
                self._read_fd = os.open(self._path(segment), os.O_RDONLY)
                self._read_segment = segment
            head = os.pread(self._read_fd, HEADER.size, offset)
            record = self._decode_at(head, offset, end)
            if record is None:
                self._skip_corrupt(segment, offset, end, head)
                continue
            events, size = record
            self._read = (segment, offset + size)
            return events, self._ack(self._read, len(events))

    def _decode_at(self, head: bytes, offset: int, end: int) -> tuple[list[Event], int] | None:
        if len(head) < HEADER.size:
            return None
        magic, length, count, crc = HEADER.unpack(head)
        if magic != MAGIC or offset + HEADER.size + length > end:
            return None
        payload = os.pread(self._read_fd, length, offset + HEADER.size)
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(struct.pack("<I", count))) != crc:
            return None
        try:
            events = decode_payload(payload)
        except (ValueError, EOFError, TypeError):
            return None
        return (events, HEADER.size + length) if len(events) == count else None

    def _skip_corrupt(self, segment: int, offset: int, end: int, head: bytes) -> None:
        """Move the read position past a bad record: to the next record that checks out, or the end."""
        rest = os.pread(self._read_fd, end - offset, offset)
        resume = end
        at = rest.find(MAGIC, 1)
        while at >= 0:
            candidate = offset + at
            if self._decode_at(rest[at : at + HEADER.size], candidate, end) is not None:
                resume = candidate
                break
            at = rest.find(MAGIC, at + 1)
        lost_events = 0
        if len(head) == HEADER.size:
            magic, _, count, _ = HEADER.unpack(head)
            lost_events = count if magic == MAGIC else 0
        self._corrupt.inc(resume - offset)
        if lost_events:
            metrics.events_dropped.labels(self.sink, "buffer_corrupt").inc(lost_events)
            self._events[segment] = max(0, self._events[segment] - lost_events)
        log.error(
            "disk buffer record is corrupt; skipped",
            extra={
                "sink": self.sink,
                "segment": str(self._path(segment)),
                "offset": offset,
                "skipped_bytes": resume - offset,
                "events_lost": lost_events,
            },
        )
        self._read = (segment, resume)  # always past `offset`: a bad record cannot loop

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
        self._read_fd, self._read_segment = -1, -1

    # ------------------------------------------------------------------ acknowledging

    def _commit(self, position: Position) -> None:
        """Every record before `position` was delivered: remember it, delete whole segments before
        it, and the last one too when everything written was delivered."""
        segment, offset = position
        for done in [seq for seq in self._ends if seq < segment]:
            self._delete(done)
        if not self.tracker.outstanding and not self.pending and segment in self._ends:  # all delivered
            if self._writing == segment:
                self._retire_writer()
            self._delete(segment)
        self.store.update("segment", segment)
        self.store.update("offset", offset)
        self._update_gauges()

    def _delete(self, segment: int) -> None:
        if self._read_segment == segment:
            self._close_reader()
        self._ends.pop(segment, None)
        self._events.pop(segment, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(segment))

    def save(self) -> None:
        """Flush what was written, then save the delivered position (the agent does it before it saves
        any source's checkpoint, which must never be on disk ahead of what it handed this buffer)."""
        self.sync()
        try:
            self.store.save()
        except OSError as exc:
            log.error("cannot write a disk buffer's position", extra={"sink": self.sink, "error": str(exc)})

    def close(self) -> None:
        """Save, then release the files and the lock (at shutdown, or when a reload removes the sink)."""
        self.save()
        self._retire_writer()
        self._close_reader()
        with self._lock:
            for fd in self._unsynced:
                os.close(fd)
            self._unsynced = []
        self.lock.release()


# ---------------------------------------------------------------------- records


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a write cut short (the disk filling up) is continued, so that the error
    that follows is the disk's own (ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the disk accepted no bytes")
        view = view[written:]


def encode_record(events: list[Event]) -> bytes:
    """One record: the header and the events' bytes, timestamps and fields (shared fields once)."""
    first = events[0].fields
    shared = all(event.fields is first for event in events)
    fields = [first] if shared else [event.fields for event in events]
    prepared = isinstance(events[0], Encoded)
    stamps = [event.stamp for event in events] if prepared else None  # type: ignore[attr-defined]
    import cramjam  # here, not at the top: its ~2 MiB are paid only by a sink that spills

    payload = bytes(cramjam.zstd.compress(marshal.dumps((prepared, [e.raw for e in events], stamps, fields)), level=1))
    count = len(events)
    return HEADER.pack(MAGIC, len(payload), count, zlib.crc32(payload, zlib.crc32(struct.pack("<I", count)))) + payload


def decode_payload(payload: bytes) -> list[Event]:
    """A record's events; ValueError when the payload does not decompress."""
    import cramjam

    try:
        plain = bytes(cramjam.zstd.decompress(payload))
    except cramjam.DecompressionError as exc:
        raise ValueError(str(exc)) from exc
    prepared, raws, stamps, fields = marshal.loads(plain)
    shared = fields[0] if len(fields) == 1 else None
    if prepared:
        if shared is not None:
            return [Spilled(shared, raw, stamp) for raw, stamp in zip(raws, stamps, strict=True)]
        return [Spilled(own, raw, stamp) for own, raw, stamp in zip(fields, raws, stamps, strict=True)]
    if shared is not None:
        return [SpilledEvent(shared, raw) for raw in raws]
    return [SpilledEvent(own, raw) for own, raw in zip(fields, raws, strict=True)]


def events_memory(events: list[Event]) -> int:
    """What events read back cost in memory, as the channel counts it."""
    if events and isinstance(events[0], Encoded):
        return sum([len(event.raw) for event in events]) + ENCODED_OVERHEAD * len(events)
    return memory_size(events)
