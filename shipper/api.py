"""The agent's HTTP endpoints: /metrics (Prometheus) and /health, /health/live, /health/ready.

/health is the full report: every sink's state (ok, degraded, failing; shipper/health.py) with the
evidence, that of every source calling an API (the Supabase poller), and the worst of them as
`status` (503 when one is failing). /health/ready is about shipper itself (started, not draining)
unless `api.ready_requires_healthy_sinks` also asks for no failing sink. /metrics requires
`Authorization: Bearer $METRICS_TOKEN` when METRICS_TOKEN is set; the token is compared in constant
time and never logged. On an address other than loopback (a container's 0.0.0.0) /metrics is only
served with a token: without one it answers 403, as metrics name the sinks, sources and hosts.
Health endpoints carry no secrets and need no token.
"""

from __future__ import annotations

import hmac
import ipaddress
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
    from shipper.pipeline.channel import Channel

log = logging.getLogger("shipper.api")


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
        if self.token is None and self.open_to_network:
            log.error(
                "METRICS_TOKEN is not set: /metrics answers 403 on a non-loopback address until it is",
                extra={"address": self.config.address},
            )
        log.info("api listening", extra={"address": self.config.address})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        if self.token is None and self.open_to_network:
            return web.Response(
                status=403, text=f"set METRICS_TOKEN: /metrics on {self.config.address} needs a token\n"
            )
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
                    **_disk_buffer(driver.channel),
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
