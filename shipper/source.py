"""The source side of the pipeline: the interface a source implements, and what the agent gives it.

A source turns the outside world into chunks of lines plus a position (a file offset), or records
plus a position of its own (a cursor), and pushes them into feeds (shipper/pipeline/feed.py) that
its `SourceContext` opens. It never knows about sinks.
"""

from __future__ import annotations

import asyncio
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from shipper.checkpoint import CheckpointStore
from shipper.config import RedactConfig, SourceConfig
from shipper.health import Health
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.feed import LineFeed, RecordFeed
from shipper.sink import CheckResult
from shipper.workers import SinkRoute, WorkerPool

FeedT = TypeVar("FeedT", bound=LineFeed)


class SourceContext:
    """What the agent gives a source: its feeds, its checkpoint store, and the stop signal."""

    def __init__(
        self,
        name: str,
        config: SourceConfig,
        *,
        routes: list[SinkRoute],
        host: str,
        redact: RedactConfig,
        state_dir: Path,
        stopping: asyncio.Event,
        workers: WorkerPool | None = None,
        checkpoint_moved: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.routes = routes  # the sinks this source feeds, in config order
        self.host = host
        self.redact = redact
        self.stopping = stopping
        self.workers = workers  # parse workers: feeds parse (and sinks prepare) there
        self.state_dir = state_dir
        # The agent saves checkpoints as soon as one moves (`checkpoint_moved`, shipper/agent.py).
        on_change = checkpoint_moved.set if checkpoint_moved is not None else None
        self.checkpoints = CheckpointStore(state_dir / "checkpoints" / f"{name}.json", on_change)
        self.feeds: list[LineFeed] = []
        self.command: list[str] | None = None  # `shipper run -- CMD ARGS` for a process source
        self.exit_code: int | None = None  # set by a source whose end should end the agent (wrapped API)
        self.stop_signal: int | None = None  # the signal that stopped the agent, for a wrapped process
        self.health: Health | None = None  # set by a source that calls an API (/health shows it)
        # Whether its input can be read again: when not, its events spill to disk rather than wait.
        self.replayable = True

    def open_feed(
        self,
        on_commit: Callable[[Any], None] | None = None,
        committed: Any = None,
        fields: dict[str, Any] | None = None,
    ) -> LineFeed:
        """A feed for one input stream; `fields` are added to each of its events (e.g. the file path)."""
        return self._opened(LineFeed(self, AckTracker(on_commit, committed), fields))

    def open_record_feed(
        self,
        on_commit: Callable[[Any], None] | None = None,
        committed: Any = None,
        fields: dict[str, Any] | None = None,
    ) -> RecordFeed:
        """A feed of records this source parsed itself, acknowledged at positions of its own."""
        return self._opened(RecordFeed(self, AckTracker(on_commit, committed), fields))

    def _opened(self, feed: FeedT) -> FeedT:
        self.feeds.append(feed)
        return feed

    def close_feed(self, feed: LineFeed) -> None:
        self.feeds.remove(feed)
        if feed.remote is not None:
            feed.remote.close()


class Source(ABC):
    """A source reads until its input ends or `context.stopping` is set."""

    replayable: ClassVar[bool] = False

    def __init__(self, name: str, config: SourceConfig, context: SourceContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    @abstractmethod
    async def run(self) -> None:
        """Read and push until EOF or stop; return normally in both cases."""

    def forward_signal(self, signum: signal.Signals) -> bool:
        """Pass `signum` on to a process this source runs; False when it runs none."""
        return False

    def close(self) -> None:
        """Release what the source holds for the whole run (a lock), once the agent has saved the
        last checkpoints: `run` returns before its events are delivered."""

    async def check(self) -> CheckResult | None:
        """What `shipper check` proves of this source without shipping logs (credentials, an API's
        answer); None when there is nothing to prove (a file, stdin)."""
        return None
