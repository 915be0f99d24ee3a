"""Append normalized NDJSON to a file, rotating by size; for debugging and the no-credentials default.

Writes run in a worker thread so a slow disk never stalls the event loop; a batch is acknowledged
only after it was written (and fsynced, when `fsync = true`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Literal

from pydantic import Field

from shipper.config import SinkConfig
from shipper.encoding import FIELDS_JSON, ndjson_body
from shipper.errors import ConfigError
from shipper.event import Event, PreparerSpec
from shipper.sink import DELIVERED, BatchLimits, CheckResult, Outcome, Request, Sink
from shipper.units import Size


class FileConfig(SinkConfig):
    type: Literal["file"]
    path: Path
    max_size: Size = 100 * 1024 * 1024
    max_files: int = Field(default=5, ge=1, le=1000)
    fsync: bool = False

    def preflight(self, key: str) -> None:
        directory = self.path.parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent  # the sink creates missing directories below the first existing one
        if not directory.is_dir():
            raise ConfigError(f"{key}.path", f"cannot write {str(self.path)!r}: {str(directory)!r} is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}.path", f"cannot write {str(self.path)!r}: {str(directory)!r} is not writable")


class FileSink(Sink):
    config: FileConfig
    limits = BatchLimits(max_events=10_000, max_bytes=8 * 1024 * 1024, timeout=0.5)

    def __init__(self, name: str, config: FileConfig) -> None:
        super().__init__(name, config)
        self._handle: IO[bytes] | None = None
        self._size = 0
        self._lock = asyncio.Lock()

    def preparer(self) -> PreparerSpec:
        return FIELDS_JSON

    def encode(self, events: list[Event]) -> list[Request]:
        events = self.encoded(events)
        return [Request(ndjson_body([event.raw for event in events]), events)]

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    async def stop(self) -> None:
        if self._handle is not None:
            await asyncio.to_thread(self._handle.close)
            self._handle = None

    async def send(self, request: Request) -> Outcome:
        async with self._lock:  # one writer at a time keeps lines whole and rotation simple
            await asyncio.to_thread(self._write, request.body)
        return DELIVERED

    async def check(self) -> CheckResult:
        directory = self.config.path.parent
        if os.access(directory, os.W_OK):
            return CheckResult(True, f"{directory} is writable")
        return CheckResult(False, f"{directory} is not writable")

    def _open(self) -> None:
        self.config.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.config.path, "ab")  # noqa: SIM115 - kept open across batches
        self._size = self._handle.tell()

    def _write(self, body: bytes) -> None:
        if self._handle is None:
            self._open()
        elif self._size and self._size + len(body) > self.config.max_size:
            self._rotate()
        assert self._handle is not None
        self._handle.write(body)
        self._handle.flush()
        if self.config.fsync:
            os.fsync(self._handle.fileno())
        self._size += len(body)

    def _rotate(self) -> None:
        """path -> path.1 -> path.2 ...; the oldest beyond `max_files` is removed."""
        assert self._handle is not None
        self._handle.close()
        path = self.config.path
        for index in range(self.config.max_files - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
        oldest = path.with_name(f"{path.name}.{self.config.max_files + 1}")
        if oldest.exists():
            oldest.unlink()
        self._open()


REGISTRATION = (FileConfig, FileSink)
