"""The agent's HTTP endpoints: /metrics (Prometheus) and /health, /health/live, /health/ready.

/health is the full report: every sink's state (ok, degraded, failing; shipper/health.py) with the
evidence, that of every source calling an API (the Supabase poller), and the worst of them as
`status` (503 when one is failing). /health/ready is about shipper itself (started, not draining)
unless `api.ready_requires_healthy_sinks` also asks for no failing sink. /metrics requires
`Authorization: Bearer $METRICS_TOKEN` when METRICS_TOKEN is set; the token is compared in constant
time and never logged. Health endpoints carry no secrets and need no token.
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
from shipper.health import worst

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

    async def health(self, request: web.Request) -> web.Response:
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
                }
                for name, driver in drivers.items()
            },
            "sources": {name: health.report() for name, health in sources.items()},
        }
        return web.json_response(report, status=503 if status == "failing" else 200)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        report: dict[str, object] = {"ready": self.agent.ready, "stopping": self.agent.stopping.is_set()}
        if self.config.ready_requires_healthy_sinks:
            failing = [name for name, driver in self.agent.drivers.items() if not driver.healthy]
            report["failing_sinks"] = failing
            report["ready"] = self.agent.ready and not failing
        return web.json_response(report, status=200 if report["ready"] else 503)
