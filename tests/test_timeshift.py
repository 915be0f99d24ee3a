"""The clock the suite runs on: under tests/timeshift/run-shifted (CI's second run, the wall clock moved
40 days ahead by libfaketime) this process and every process it starts (shipper, node, `date`) see the
same moved clock, and sleeps and timed waits still work. In an ordinary run the same checks hold
trivially, so a shifted run that silently stopped being shifted for the children fails here."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import SHIFT_DAYS

# A child's clock read a moment after ours: generous for a loaded 2-core machine, tiny next to a day.
AGREE_S = 60


def test_the_run_is_as_shifted_as_it_says() -> None:
    if SHIFT_DAYS is None:
        assert "faketime" not in os.environ.get("LD_PRELOAD", ""), "libfaketime loaded without run-shifted"
        return
    real_start = float(os.environ["SHIPPER_TEST_REAL_START"])
    assert int(SHIFT_DAYS) > 0
    assert time.time() - real_start >= int(SHIFT_DAYS) * 86400 - AGREE_S


@pytest.mark.parametrize("child", ["python", "date", "node"])
def test_children_see_the_same_clock(child: str) -> None:
    commands = {
        "python": [sys.executable, "-c", "import time; print(time.time())"],
        "date": ["date", "+%s"],
        # a timer too: node's event loop must not hang under the preload
        "node": ["node", "-e", "setTimeout(() => console.log(Date.now() / 1000), 50)"],
    }
    if shutil.which(commands[child][0]) is None:
        pytest.skip(f"{child} is not installed")
    ours = time.time()
    theirs = float(subprocess.run(commands[child], capture_output=True, check=True, timeout=30).stdout)
    assert abs(theirs - ours) < AGREE_S, f"{child} says {theirs}, this process {ours}"


def test_sleeps_and_timed_waits_take_their_time() -> None:
    """libfaketime#426: time.sleep failed with EINVAL when the monotonic clock was left alone; faking
    it instead made timed waits in threads hang. Each wait here must last about what it asks."""

    def timed(wait: Callable[[], object]) -> float:
        started = time.monotonic()
        with contextlib.suppress(queue.Empty):
            wait()
        return time.monotonic() - started

    async def asleep() -> None:
        await asyncio.sleep(0.03)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 0.03)

    waits = {
        "time.sleep": lambda: time.sleep(0.05),
        "Event.wait": lambda: threading.Event().wait(0.05),
        "Queue.get": lambda: queue.Queue().get(timeout=0.05),
        "asyncio.sleep": lambda: asyncio.run(asleep()),
    }
    for name, wait in waits.items():
        assert 0.04 < timed(wait) < 5, name
    in_thread: list[float] = []
    thread = threading.Thread(target=lambda: in_thread.append(timed(lambda: time.sleep(0.05))))
    thread.start()
    thread.join(10)
    assert in_thread and 0.04 < in_thread[0] < 5


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def test_a_timed_wait_on_a_monotonic_condition_variable_waits() -> None:
    """How CPython's GIL waits for its 5 ms switch interval. libfaketime returns from it at once (so
    every waiting thread took the GIL back immediately: a loaded machine crawled); the shim must not."""
    libc = ctypes.CDLL(None)
    attr, cond, mutex = (ctypes.create_string_buffer(128) for _ in range(3))  # larger than glibc's types
    assert libc.pthread_condattr_init(attr) == 0
    assert libc.pthread_condattr_setclock(attr, time.CLOCK_MONOTONIC) == 0
    assert libc.pthread_cond_init(cond, attr) == 0 and libc.pthread_mutex_init(mutex, None) == 0
    deadline = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 50_000_000
    timeout = _Timespec(deadline // 1_000_000_000, deadline % 1_000_000_000)
    assert libc.pthread_mutex_lock(mutex) == 0
    started = time.monotonic()
    result = libc.pthread_cond_timedwait(cond, mutex, ctypes.byref(timeout))
    waited = time.monotonic() - started
    libc.pthread_mutex_unlock(mutex)
    assert result == errno.ETIMEDOUT and 0.045 < waited < 5, (result, waited)
