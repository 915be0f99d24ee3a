"""The agent's HTTP endpoints: /metrics (Prometheus) and /health, /health/live, /health/ready.

/metrics requires `Authorization: Bearer $METRICS_TOKEN` when METRICS_TOKEN is set; the token is
compared in constant time and never logged. Health endpoints carry no secrets and need no token.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shipper import metrics
from shipper.config import ApiConfig

if TYPE_CHECKING:
    from shipper.agent import Agent

log = logging.getLogger("shipper.api")


class ApiServer:
    def __init__(self, config: ApiConfig, agent: Agent) -> None:
        self.config = config
        self.agent = agent
        self.token = os.environ.get("METRICS_TOKEN") or None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.config.address.rpartition(":")
        await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
        if self.token is None and host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            log.warning("METRICS_TOKEN is not set: /metrics is open on a non-loopback address")
        log.info("api listening", extra={"address": self.config.address})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        for name, context in self.agent.contexts.items():  # computed at scrape time, off the hot path
            metrics.checkpoint_lag.labels(name).set(sum(feed.tracker.outstanding for feed in context.feeds))
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _status(self) -> dict[str, object]:
        return {
            "status": "ok" if self.agent.ready else "degraded",
            "stopping": self.agent.stopping.is_set(),
            "sinks": {
                name: {
                    "healthy": driver.healthy,
                    "buffer_bytes": driver.channel.nbytes,
                    "buffer_max_bytes": driver.channel.max_bytes,
                    "inflight_events": driver.inflight_events,
                }
                for name, driver in self.agent.drivers.items()
            },
        }

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(), status=200 if self.agent.ready else 503)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.agent.ready and not self.agent.stopping.is_set()
        return web.json_response({"ready": ready}, status=200 if ready else 503)
