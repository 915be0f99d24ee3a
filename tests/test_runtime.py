"""The allocator settings of the agent and its parse workers: buffers made and dropped over and over
(chunks, replies, request bodies) keep their pages instead of faulting them in again each time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.procutil import REPO

GLIBC = bool(os.confstr("CS_GNU_LIBC_VERSION")) if "CS_GNU_LIBC_VERSION" in os.confstr_names else False

# Four buffers of 0.2-1.5 MiB alive at a time, then dropped together, 300 times (~4 GB in all):
# the shape of a worker's replies and a sink's request bodies. Prints the page faults it took.
CHURN = textwrap.dedent(
    """
    import resource, sys
    from shipper.runtime import keep_freed_memory
    if sys.argv[1] == "tuned":
        assert keep_freed_memory()
    sizes = [300_000, 1_000_000, 700_000, 1_500_000, 200_000, 900_000]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(300):
        held = [b"x" * sizes[(i + k) % len(sizes)] for k in range(4)]
        del held
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc")
def test_freed_buffers_keep_their_pages_under_glibc() -> None:
    plain, tuned = page_faults("plain"), page_faults("tuned")
    # ~4 GB through buffers: zeroed page by page when given back (tens of thousands of faults),
    # kept when the thresholds are raised (a few hundred, from the first round).
    assert tuned * 10 < plain, (plain, tuned)
    assert tuned < 5_000, tuned


# Four threads at once allocate and free buffers; glibc's malloc_info then lists its arenas (`<heap nr=`).
ARENAS = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    from shipper.runtime import keep_freed_memory
    if sys.argv[1] == "tuned":
        assert keep_freed_memory()
    together = threading.Barrier(4)  # all alive at once: none inherits an arena another left
    def churn():
        together.wait()
        for _ in range(50):
            held = [b"x" * 100_000 for _ in range(4)]
            del held
    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile(delete=False) as file:
        path = file.name
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(open(path).read().count("<heap nr="))
    os.unlink(path)
    """
)


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc")
def test_threads_share_at_most_two_arenas_under_glibc() -> None:
    def arenas(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", ARENAS, mode], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    plain, tuned = arenas("plain"), arenas("tuned")
    assert tuned <= 2 < plain, (plain, tuned)
