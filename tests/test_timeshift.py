"""The clock the suite runs on: under tests/timeshift/run-shifted (CI's second run, the wall clock moved
40 days ahead by libfaketime) this process and every process it starts (shipper, node, `date`) see the
same moved clock, and sleeps and timed waits still work. In an ordinary run the same checks hold
trivially, so a shifted run that silently stopped being shifted for the children fails here."""

from __future__ import annotations

import asyncio
import contextlib
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
