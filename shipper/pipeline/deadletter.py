"""Dead letters: events a destination refused for good, parked in an NDJSON file with the reason.

What the driver drops on purpose (a `reject` outcome, a lone event still too large after
splitting, the per-event rejections of a partial outcome, an encoder's failure) is still counted
as dropped; with `dead_letter` configured it is also written here, one line per event: the event
as the sink would have sent it, its fields at top level, plus

    "shipper.dead_letter": {"sink", "source", "reason", "detail", "time"}

(`detail`: the destination's message; `time`: RFC 3339 UTC). Fields at top level, so that reading
the file again as JSON lines (a stdin or file source) yields the original event, marked by the
`shipper.dead_letter` object: re-sending needs no extraction step. An event whose wire form is not
a JSON object is kept as `message`.

Files are bounded and rotated by size (shipper/rotating.py). Lines are made and written in a
thread, never on the event loop, and nothing here raises into delivery: a failed write is logged
and counted (`shipper_dead_letter_errors_total`), the events still count as dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from shipper import metrics
from shipper.config import DeadLetterConfig
from shipper.event import Event
from shipper.health import iso
from shipper.log import RateLimitedLog
from shipper.rotating import RotatingFile

log = logging.getLogger("shipper.deadletter")

KEY = "shipper.dead_letter"

# One thread writes every sink's dead letters, in the order they were parked: they are rare, and
# one writer keeps each file's lines whole without a lock.
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shipper-dead-letter")

Dropped = tuple[Event, str, str]  # an event given up on, with a reason (a metric label) and the detail


def dead_letter(event: Event, sink: str, reason: str, detail: str, at: str) -> dict[str, Any]:
    """One dead letter: the event as sent (`raw`, as JSON when it is JSON) with why it was refused."""
    try:
        sent: Any = orjson.loads(event.raw)
    except orjson.JSONDecodeError:
        sent = event.raw.decode("utf-8", "replace")
    if isinstance(sent, dict):
        letter: dict[str, Any] = sent
    else:
        letter = {"message": sent if isinstance(sent, str) else event.raw.decode("utf-8", "replace")}
    source = event.fields.get("source")
    letter[KEY] = {"sink": sink, "source": source, "reason": reason, "detail": detail, "time": at}
    return letter


class DeadLetters:
    """One sink's dead-letter file."""

    def __init__(self, sink: str, config: DeadLetterConfig) -> None:
        assert config.path is not None  # filled in by config.dead_letter_config
        self.sink = sink
        self.path: Path = config.path
        self._file = RotatingFile(config.path, config.max_bytes, config.max_files)
        self._last: Future[None] | None = None
        self._problems = RateLimitedLog(log, interval=60.0)

    def park(self, dropped: Sequence[Dropped]) -> None:
        """Write `dropped` in the background, stamped now. Never raises, never blocks."""
        self._last = _writer.submit(self._write, list(dropped), iso(time.time()) or "")

    async def settled(self) -> None:
        """Wait until everything parked so far is written (or failed, and counted). A caller
        cancelled meanwhile leaves the writes going on."""
        if self._last is not None:
            await asyncio.shield(asyncio.wrap_future(self._last))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(_writer, self._file.close)

    def _write(self, dropped: list[Dropped], at: str) -> None:
        try:
            body = b"".join(
                orjson.dumps(dead_letter(event, self.sink, reason, detail, at)) + b"\n"
                for event, reason, detail in dropped
            )
            self._file.write(body)
        except Exception as exc:  # a full disk, a bad path: the drop stays counted, the loss is said
            metrics.dead_letter_errors.labels(self.sink).inc(len(dropped))
            self._problems.error(
                f"write:{type(exc).__name__}",
                "could not write dead letters; the events stay counted as dropped",
                sink=self.sink,
                path=str(self.path),
                events=len(dropped),
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        for reason, count in Counter(reason for _, reason, _ in dropped).items():
            metrics.dead_letters.labels(self.sink, reason).inc(count)
