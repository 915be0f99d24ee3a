"""Handing freed memory back to the system while events stream through.

Logs over 512 bytes are allocated by the C library, not by Python's small-object allocator, and a
queue of them freed in delivery order leaves the C heap full of free holes between the few objects
still alive: the process's resident memory creeps up to what it once held at most and stays there
(measured: the agent grew from 74 to 98 MiB over a million Datadog logs, its own data ~30 MiB).
glibc's `malloc_trim` gives the free pages in those holes back. Elsewhere (musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# How often the agent trims: each call walks the heap once (~1 ms on a 100 MiB heap).
TRIM_INTERVAL = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Give free heap pages back to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
