"""The agent's HTTP endpoints: /metrics (Prometheus) and /health, /health/live, /health/ready.

/health is the full report: every sink's state (ok, degraded, failing; shipper/health.py) with the
evidence, that of every source calling an API (the Supabase poller), and the worst of them as
`status` (503 when one is failing). /health/ready is about shipper itself (started, not draining)
unless `api.ready_requires_healthy_sinks` also asks for no failing sink. /metrics requires
`Authorization: Bearer $METRICS_TOKEN` when METRICS_TOKEN is set; the token is compared in constant
time and never logged. On an address other than loopback (a container's 0.0.0.0) /metrics is only
served with a token: without one it answers 403, as metrics name the sinks, sources and hosts.
Health endpoints carry no secrets and need no token.

Served by a small HTTP/1.1 server on asyncio streams (GET and HEAD, kept-alive connections, a
bounded request head, idle connections closed): aiohttp's server cost the agent ~9 MiB of RSS,
more than the rest of this module does with its four endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shipper import metrics
from shipper.config import ApiConfig
from shipper.health import worst
from shipper.httpclient import Headers, split_head

if TYPE_CHECKING:
    from shipper.agent import Agent
    from shipper.pipeline.channel import Channel

log = logging.getLogger("shipper.api")

MAX_HEAD = 16 * 1024  # a request's line and headers
MAX_BODY = 64 * 1024  # a body sent with a GET is read and dropped, up to this
IDLE_SECONDS = 60.0  # a connection that sends no complete request head within this is closed


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = {}


def json_reply(document: Any, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(document), "application/json")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (an address's host part, without brackets)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


class ApiServer:
    def __init__(self, config: ApiConfig, agent: Agent) -> None:
        self.config = config
        self.agent = agent
        self.token = os.environ.get("METRICS_TOKEN") or None
        self.open_to_network = not is_loopback(config.address.rpartition(":")[0].strip("[]"))
        self.routes: dict[str, Callable[[Headers], Awaitable[Reply]]] = {
            "/metrics": self.metrics,
            "/health": self.health,
            "/health/live": self.live,
            "/health/ready": self.ready,
        }
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        host, _, port = self.config.address.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host.strip("[]"), int(port), limit=MAX_HEAD)
        if self.token is None and self.open_to_network:
            log.error(
                "METRICS_TOKEN is not set: /metrics answers 403 on a non-loopback address until it is",
                extra={"address": self.config.address},
            )
        log.info("api listening", extra={"address": self.config.address})

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the one given for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests answered in turn while the client keeps it alive."""
        self._connections.add(writer)
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_SECONDS):
                        request_line, headers = split_head(await reader.readuntil(b"\r\n\r\n"))
                    method, target, version = request_line.split(" ")
                    if not version.startswith("HTTP/1.") or "chunked" in headers.get("transfer-encoding", ""):
                        raise ValueError(request_line)
                    length = int(headers.get("content-length", "0"))
                    if not 0 <= length <= MAX_BODY:
                        raise ValueError(f"a body of {length} bytes")
                    await reader.readexactly(length)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # closed by the client, or idle
                except (asyncio.LimitOverrunError, ValueError):
                    await _answer(writer, "GET", Reply(400, b"bad request\n"), keep=False)
                    return
                reply = await self._route(method, target, headers)
                keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
                await _answer(writer, method, reply, keep)
                if not keep:
                    return
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _route(self, method: str, target: str, headers: Headers) -> Reply:
        handler = self.routes.get(target.partition("?")[0])
        if handler is None:
            return Reply(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"})
        return await handler(headers)

    async def metrics(self, headers: Headers) -> Reply:
        if self.token is None and self.open_to_network:
            return Reply(403, f"set METRICS_TOKEN: /metrics on {self.config.address} needs a token\n".encode())
        if self.token is not None:
            given = headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return Reply(401, b"unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        for name, context in self.agent.contexts.items():  # computed at scrape time, off the hot path
            metrics.checkpoint_lag.labels(name).set(sum(feed.tracker.outstanding for feed in context.feeds))
        return Reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)

    async def health(self, headers: Headers) -> Reply:
        drivers = self.agent.drivers
        sources = {name: c.health for name, c in self.agent.contexts.items() if c.health is not None}
        status = worst([driver.health.state for driver in drivers.values()] + [h.state for h in sources.values()])
        report = {
            "status": status,
            "ready": self.agent.ready,
            "stopping": self.agent.stopping.is_set(),
            "sinks": {
                name: {
                    **driver.health.report(),
                    "buffer_bytes": driver.channel.nbytes,
                    "buffer_max_bytes": driver.channel.max_bytes,
                    "inflight_requests": len(driver.inflight),
                    "inflight_events": driver.inflight_events,
                    **_disk_buffer(driver.channel),
                }
                for name, driver in drivers.items()
            },
            "sources": {name: health.report() for name, health in sources.items()},
        }
        return json_reply(report, 503 if status == "failing" else 200)

    async def live(self, headers: Headers) -> Reply:
        return json_reply({"status": "ok"})

    async def ready(self, headers: Headers) -> Reply:
        report: dict[str, object] = {"ready": self.agent.ready, "stopping": self.agent.stopping.is_set()}
        if self.config.ready_requires_healthy_sinks:
            failing = [name for name, driver in self.agent.drivers.items() if not driver.healthy]
            report["failing_sinks"] = failing
            report["ready"] = self.agent.ready and not failing
        return json_reply(report, 200 if report["ready"] else 503)


async def _answer(writer: asyncio.StreamWriter, method: str, reply: Reply, keep: bool) -> None:
    lines = [
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
        *(f"{name}: {value}" for name, value in reply.headers.items()),
        f"Connection: {'keep-alive' if keep else 'close'}",
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else reply.body))
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _disk_buffer(channel: Channel) -> dict[str, int]:
    """A sink's disk buffer in /health: what waits on disk, against its bound."""
    spill = channel.spill
    if spill is None:
        return {}
    return {
        "disk_buffer_bytes": spill.nbytes,
        "disk_buffer_events": spill.nevents,
        "disk_buffer_max_bytes": spill.max_bytes,
    }
