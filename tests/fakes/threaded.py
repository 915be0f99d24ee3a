"""Serving a fake from a background thread, for synchronous tests that run a real shipper process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator


@contextlib.contextmanager
def served_in_thread(
    start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[None]], name: str
) -> Iterator[None]:
    """Run `start()` on a new event loop in a daemon thread, serve until the block ends, then `stop()`."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(stop())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True, name=name)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"{name} did not start")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
