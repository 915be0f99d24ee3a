"""An append-only file rotated by size, kept to a bounded number of rotated copies.

The file sink and the dead-letter files share it. Its methods block on the disk: call them from a
worker thread, one caller at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


class RotatingFile:
    """Appends to `path`; past `max_size` it becomes path.1 (path.1 becomes path.2, ...) and the
    oldest beyond `max_files` is removed, so the disk holds at most `max_files + 1` files."""

    def __init__(self, path: Path, max_size: int, max_files: int, fsync: bool = False) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        self.fsync = fsync
        self._handle: IO[bytes] | None = None
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")  # noqa: SIM115 - kept open across writes
        self._size = self._handle.tell()

    def write(self, data: bytes) -> None:
        """Append `data` whole (rotating first when it would not fit): lines are never split."""
        if self._handle is None:
            self.open()
        elif self._size and self._size + len(data) > self.max_size:
            self._rotate()
        assert self._handle is not None
        self._handle.write(data)
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        self._size += len(data)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _rotate(self) -> None:
        self.close()
        path = self.path
        for index in range(self.max_files - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
        oldest = path.with_name(f"{path.name}.{self.max_files + 1}")
        if oldest.exists():
            oldest.unlink()
        self.open()
