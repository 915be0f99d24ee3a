"""Freed memory goes back to the system (shipper/memory.py), so the agent's resident memory
follows what it holds, not the most it ever held."""

from __future__ import annotations

import platform

import pytest

from shipper.memory import release_free_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def resident_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


@glibc
def test_a_heap_left_full_of_holes_is_given_back() -> None:
    # Logs over 512 bytes come from the C heap; a few left alive among many freed (a queue
    # delivered in order while new logs arrive) pin the heap's top, so nothing is returned.
    logs = [bytes(900) + i.to_bytes(4, "little") for i in range(60_000)]
    kept = logs[::50]
    del logs
    before = resident_kib()
    assert release_free_memory()
    after = resident_kib()
    assert before - after > 25_000, f"{before} KiB before, {after} KiB after"
    assert len(kept) == 1_200
