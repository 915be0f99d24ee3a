"""Append normalized NDJSON to a file, rotating by size; for debugging and the no-credentials default.

Writes run in a worker thread so a slow disk never stalls the event loop; a batch is acknowledged
only after it was written (and fsynced, when `fsync = true`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from shipper.config import SinkConfig, check_writable
from shipper.encoding import FIELDS_JSON, ndjson_of
from shipper.event import Event, PreparerSpec
from shipper.rotating import RotatingFile
from shipper.sink import DELIVERED, BatchLimits, CheckResult, Outcome, Request, Sink
from shipper.units import Size


class FileConfig(SinkConfig):
    type: Literal["file"]
    path: Path
    max_size: Size = 100 * 1024 * 1024
    max_files: int = Field(default=5, ge=1, le=1000)
    fsync: bool = False

    def preflight(self, key: str) -> None:
        check_writable(self.path, f"{key}.path")


class FileSink(Sink):
    config: FileConfig
    limits = BatchLimits(max_events=10_000, max_bytes=8 * 1024 * 1024, timeout=0.5)

    def __init__(self, name: str, config: FileConfig) -> None:
        super().__init__(name, config)
        self._file = RotatingFile(config.path, config.max_size, config.max_files, config.fsync)
        self._lock = asyncio.Lock()

    def preparer(self) -> PreparerSpec:
        return FIELDS_JSON

    def encode(self, events: list[Event]) -> list[Request]:
        events = self.encoded(events)
        return [Request(ndjson_of(events), events)]

    async def start(self) -> None:
        await asyncio.to_thread(self._file.open)

    async def stop(self) -> None:
        await asyncio.to_thread(self._file.close)

    async def send(self, request: Request) -> Outcome:
        async with self._lock:  # one writer at a time keeps lines whole and rotation simple
            await asyncio.to_thread(self._file.write, request.body)
        return DELIVERED

    async def check(self) -> CheckResult:
        directory = self.config.path.parent
        if os.access(directory, os.W_OK):
            return CheckResult(True, f"{directory} is writable")
        return CheckResult(False, f"{directory} is not writable")


REGISTRATION = (FileConfig, FileSink)
