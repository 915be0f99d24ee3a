"""Serving a fake from a background thread, for synchronous tests that run a real shipper process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Self

from aiohttp import web


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


class FakeServer:
    """What every fake HTTP service shares: serving its `app()` on loopback (raw request bodies, as
    the real services judge them: WIRE.md "Test-fake traps"), on the test's event loop or from a
    thread, and its URL. A fake sets `thread_name` and builds its routes in `app()`."""

    thread_name = "fake"

    def __init__(self, port: int = 0) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> Self:
        # auto_decompress=False: the handlers see the body as sent, compressed or not.
        self._runner = web.AppRunner(self.app(), auto_decompress=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_until_signalled(self) -> None:
        """Run as its own process: serve, say where, and stop on SIGTERM or SIGINT."""
        await self.start()
        print(f"listening {self.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[Self]:
        """Serve from a background thread with its own event loop (for synchronous tests)."""
        with served_in_thread(self.start, self.stop, self.thread_name):
            yield self
