"""Process settings for a process that parses and ships events (the agent, a parse worker).

Both make and drop buffers of 0.1-2 MiB all the time: chunks read, worker replies, request bodies
and their TLS and gzip copies. glibc's defaults return such memory to the kernel as soon as it is
freed (an allocation over its mmap threshold is unmapped; a free top of the heap over the trim
threshold is trimmed), so the next buffer faults its pages in and the kernel zeroes them again:
measured on the 1M-line bench, ~180,000 page faults a process (~700 MB zeroed) and 15-20% of the
parse worker's CPU. Raised thresholds keep those pages for the next buffer; peak RSS was the same
within 1-3 MiB (the buffers are bounded; this only stops giving their pages back between uses).
"""

from __future__ import annotations

import ctypes
import gc
import os

# Buffers up to this size come from the heap, not from mmap; a free heap top is given back to the
# kernel past TRIM_THRESHOLD. Above the largest request body a sink makes (CloudWatch's 1 MiB call,
# escaped) and below what a process holds anyway.
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024
# Each thread that allocates (gzip, file reads, request signing) would get an arena of its own,
# each keeping freed memory up to the trim threshold: two arenas hold it all (-1-2 MiB peak RSS
# on the Loki bench, the same speed). The GIL serializes nearly all allocation anyway.
ARENA_MAX = 2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h


def tune_for_events() -> None:
    """GC and allocator settings for a process that parses events (the agent, a parse worker)."""
    tune_gc()
    keep_freed_memory()


def tune_gc() -> None:
    """Events are short-lived dicts by the million: without this every full collection re-scans
    the ~30k objects of the imported modules and every event waiting in a channel. Measured on
    the pino parse bench: 200-240k lines/s with the default GC, 277-299k with these settings."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module's docstring) and cap its arenas;
    False where the C library is not glibc (musl, macOS), whose allocator is left as it is."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENA_MAX))
    return all([libc.mallopt(option, value) for option, value in settings])
