"""Routes events from sources to sink channels by `inputs` and the optional `when` filter."""

from __future__ import annotations

from dataclasses import dataclass

from shipper.acks import Ack
from shipper.channel import Channel, Part
from shipper.event import Event, memory_size
from shipper.when import Predicate


@dataclass(slots=True)
class Route:
    channel: Channel
    predicate: Predicate | None


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, list[Route]] = {}

    def add(self, source: str, channel: Channel, predicate: Predicate | None) -> None:
        self.routes.setdefault(source, []).append(Route(channel, predicate))

    async def route(self, source: str, events: list[Event], ack: Ack) -> None:
        """Hand each sink its share; `ack` gains one unit per event per sink that receives it."""
        total: int | None = None
        for route in self.routes.get(source, ()):
            if route.predicate is None:
                selected = events
                if total is None:
                    total = memory_size(events)
                nbytes = total
            else:
                selected = [e for e in events if route.predicate(e)]
                if not selected:
                    continue
                nbytes = memory_size(selected)
            ack.add(len(selected))
            await route.channel.put(Part(selected, ack, nbytes))
