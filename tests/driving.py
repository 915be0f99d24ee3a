"""Driving a sink driver in tests: chunks of events in, the checkpoints committed out."""

from __future__ import annotations

import asyncio

from shipper.event import Event
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.channel import Part
from shipper.pipeline.driver import SinkDriver


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
