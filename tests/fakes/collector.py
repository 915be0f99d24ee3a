"""A generic HTTP log collector for the `http` sink's tests: a real aiohttp server on loopback.

It runs on its own event loop in a background thread so synchronous tests can drive a real
`shipper` process against it. It records every accepted event and can be told to answer with an
error status for a while.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Collector:
    host: str = "127.0.0.1"
    port: int = 0
    events: list[dict[str, object]] = field(default_factory=list)
    requests: int = 0
    fail_status: int | None = None
    retry_after: str | None = None
    encodings: list[str] = field(default_factory=list)
    locked_paths: set[str] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/logs"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.fail_status is not None:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=self.fail_status, text="failing on purpose", headers=headers)
        encoding = request.headers.get("Content-Encoding", "identity")
        self.encodings.append(encoding)
        raw = await request.read()  # aiohttp already undid Content-Encoding: gzip
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if request.content_type == "application/x-ndjson":
            docs = [orjson.loads(line) for line in raw.splitlines() if line]
        else:
            docs = orjson.loads(raw)
        self.events.extend(docs)
        return web.Response(status=204)

    async def _probe(self, request: web.Request) -> web.Response:
        """GET, as `shipper check` sends: 403 on a locked path, else 405 like a POST-only endpoint."""
        return web.Response(status=403 if request.path in self.locked_paths else 405)

    def start(self) -> Collector:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/logs", self._handle)
            app.router.add_get("/{path:.*}", self._probe)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            self._runner = runner
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
