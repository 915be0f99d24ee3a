"""An exclusive lock on a piece of the state directory, held for the life of the process.

Two shippers sharing a state directory must not both own the same state (a Supabase project's
cursors, a sink's disk buffer): each would send what the other also sends, or write over its
files. The lock is an flock on a file that names its holder, released when the descriptor is
closed, which the kernel also does when the process dies (even by SIGKILL): a stale lock is
never left behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shipper.errors import ShipperError


class StateLock:
    def __init__(self, path: Path, conflict: str) -> None:
        self.path = path
        self.conflict = conflict  # the error when another holds it: a format string of {owner} and {path}
        self._fd: int | None = None

    def acquire(self, holder: str) -> None:
        """Take the lock for `holder` (named in the lock file), or raise naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ShipperError(self.conflict.format(owner=owner, path=self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({holder})\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
