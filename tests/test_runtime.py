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
