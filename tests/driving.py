"""Driving the pipeline in tests: a sink driver (chunks in, checkpoints out), a parse worker, a
source context feeding one sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from shipper.config import Config
from shipper.event import Event
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.driver import SinkDriver
from shipper.sink import Sink
from shipper.source import SourceContext
from shipper.workers import SinkRoute, WorkerPool


async def deliver(driver: SinkDriver, chunks: list[list[Event]]) -> list[int]:
    """Each chunk through the driver with its own ack (positions 1, 2, ...); the channel then closes
    and the driver drains. The checkpoints committed, in order."""
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    for position, events in enumerate(chunks, start=1):
        ack = tracker.open(position)
        ack.add(len(events))
        await driver.channel.put(Part(events, ack, sum(e.size for e in events)))
        ack.done()
    driver.channel.close()
    await asyncio.wait_for(driver.run(), 20)
    return commits


@asynccontextmanager
async def parse_worker() -> AsyncIterator[WorkerPool]:
    """One started parse worker, ended when the block ends (also when it fails)."""
    pool = WorkerPool(1, "info", "json", lambda: None)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


def one_sink_context(
    config: Config, source: str, sink: Sink, channel: Channel, state_dir: Path, workers: WorkerPool | None = None
) -> SourceContext:
    """The context of `source` feeding only `sink` (its preparer and `channel`), parsed in `workers` if given."""
    return SourceContext(
        source, config.sources[source], routes=[SinkRoute(sink.name, None, sink.preparer(), channel)], host="h",
        redact=config.redact, state_dir=state_dir, stopping=asyncio.Event(), workers=workers,
    )  # fmt: skip
