"""A forward HTTP proxy on loopback: what shipper meets behind an egress proxy (`HTTP_PROXY`).

It takes absolute-form requests (`POST http://127.0.0.1:PORT/api/v2/logs`), answers 407 with
`Proxy-Authenticate` when credentials are required and missing or wrong (as Squid does), and
forwards the rest byte for byte: no decompression either way, hop-by-hop headers dropped. It only
forwards to loopback.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator

import aiohttp
from aiohttp import web

from tests.fakes.threaded import served_in_thread

HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "Transfer-Encoding", "Host")
)


class ForwardProxy:
    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        user, password = credentials or ("", "")
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if credentials else None
        self.forwarded = 0
        self.refused = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self.expected is not None and request.headers.get("Proxy-Authorization") != self.expected:
            self.refused += 1
            return web.Response(status=407, headers={"Proxy-Authenticate": 'Basic realm="egress"'})
        target = request.url
        if target.host not in ("127.0.0.1", "localhost"):
            return web.Response(status=403, text="this proxy only reaches loopback")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        assert self._session is not None
        body = await request.read()
        async with self._session.request(
            request.method, target, data=body, headers=headers, allow_redirects=False
        ) as resp:
            answer = await resp.read()
            back = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        self.forwarded += 1
        return web.Response(status=resp.status, body=answer, headers=back)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[ForwardProxy]:
        with served_in_thread(self.start, self.stop, "forward-proxy"):
            yield self
