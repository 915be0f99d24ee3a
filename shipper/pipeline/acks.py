"""Acknowledgements: a source's checkpoint moves only over a contiguous acknowledged prefix.

A source opens one `Ack` per chunk, in read order. The router adds one unit per event it hands to
each sink; sinks release units once the destination accepted (or deliberately dropped, with a
counted reason) those events. When a chunk's count reaches zero it is complete, but the tracker
only advances its committed position past chunks whose predecessors are all complete too, so a
later success never jumps the checkpoint past an earlier failure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class Ack:
    """Outstanding work for one chunk; starts with one unit held by whoever opened it."""

    __slots__ = ("position", "remaining", "tracker")

    def __init__(self, tracker: AckTracker, position: Any) -> None:
        self.tracker = tracker
        self.position = position
        self.remaining = 1

    def add(self, units: int) -> None:
        self.remaining += units

    def done(self, units: int = 1) -> None:
        self.remaining -= units
        if self.remaining <= 0:
            self.tracker._advance()


class AckTracker:
    """Orders the acks of one stream of positions (one file, one stdin, one cursor)."""

    def __init__(self, on_commit: Callable[[Any], None] | None = None, committed: Any = None) -> None:
        self._pending: deque[Ack] = deque()
        self._on_commit = on_commit
        self.committed = committed

    def open(self, position: Any) -> Ack:
        """Register the next chunk, whose data ends at `position`."""
        ack = Ack(self, position)
        self._pending.append(ack)
        return ack

    def abandon(self) -> None:
        """Commit nothing more: a reload restarted the source, and its successor reads on from the
        last commit (what was in flight is sent again, never skipped)."""
        self._on_commit = None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def _advance(self) -> None:
        moved = False
        while self._pending and self._pending[0].remaining <= 0:
            self.committed = self._pending.popleft().position
            moved = True
        if moved and self._on_commit is not None and self.committed is not None:
            self._on_commit(self.committed)
