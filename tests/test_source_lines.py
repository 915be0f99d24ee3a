"""Lines longer than `max_line_bytes`: shipped in pieces marked `shipper.fragment`, each with the
level and time the line's start showed, every byte in order, never more than `max_line_bytes` of
one line held; the same whether the feed parses in the agent or in a parse worker."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import metrics
from shipper.config import config_from_dict
from shipper.event import Event
from shipper.pipeline.channel import Channel
from shipper.pipeline.feed import LineFeed
from shipper.source import SourceContext
from shipper.workers import SinkRoute
from sinks import build_sink
from tests.driving import one_sink_context, parse_worker

FRAGMENT = "shipper.fragment"
MAX = 1000  # max_line_bytes in these tests: a "long" line is a few KiB
NOW_MS = int(time.time() * 1000)  # Datadog re-stamps times older than 18 h: keep the line's time recent
STAMP = datetime.fromtimestamp(NOW_MS / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
LONG = b'{"level":50,"time":%d,"pid":7,"hostname":"h","msg":"payload rejected","body":"%s"}' % (NOW_MS, b"y" * 3500)
SHORT = b'{"level":30,"time":%d,"pid":7,"hostname":"h","msg":"ok"}' % NOW_MS
WARNING = "line longer than max_line_bytes"


def config_table(sink: dict[str, Any]) -> dict[str, Any]:
    return {"sources": {"app": {"type": "stdin", "max_line_bytes": MAX}}, "sinks": {"out": sink}}


def local_feed(channel: Channel, tmp_path: Path) -> LineFeed:
    """A feed that parses in the agent (`--parse-workers 0`), its events all to `channel`."""
    config = config_from_dict(config_table({"type": "console", "inputs": ["app"]}), environ={})
    context = SourceContext(
        "app", config.sources["app"], routes=[SinkRoute("out", None, None, channel)], host="h",
        redact=config.redact, state_dir=tmp_path, stopping=asyncio.Event(),
    )  # fmt: skip
    return context.open_feed()


async def drain(channel: Channel) -> list[Event]:
    events: list[Event] = []
    while channel.nevents:
        part = await channel.get(0)
        assert part is not None
        events += part.events
        part.ack.done(len(part.events))
    return events


def too_long() -> float:
    return (
        metrics.registry.get_sample_value("shipper_parse_fallbacks_total", {"source": "app", "reason": "line_too_long"})
        or 0.0
    )


def check_pieces(pieces: list[dict[str, Any]], line: bytes, known: int) -> None:
    """Pieces of `line` in order, at most MAX bytes each; the first `known` without a count (sent
    before the line's end was read), the others with it; `last` on the final one only."""
    count = len(pieces)
    assert [p[FRAGMENT]["index"] for p in pieces] == list(range(count))
    assert [p[FRAGMENT].get("count") for p in pieces] == [None] * known + [count] * (count - known)
    assert [p[FRAGMENT].get("last") for p in pieces] == [None] * (count - 1) + [True]
    assert "".join(p["message"] for p in pieces) == line.decode()
    assert all(len(p["message"]) <= MAX for p in pieces)
    assert all(p["timestamp"] == STAMP and "shipper.time_estimated" not in p for p in pieces)


async def test_a_long_line_parsed_in_the_agent_is_cut_into_marked_pieces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    channel = Channel("out", 1 << 30, "block")
    feed = local_feed(channel, tmp_path)
    before = too_long()
    with caplog.at_level(logging.WARNING, "shipper.parsing"):
        await feed.push(SHORT + b"\n" + LONG + b"\n" + SHORT + b"\n" + LONG + b"\n")
    events = await drain(channel)
    assert [e.raw for e in events] == [SHORT, *(LONG[i : i + MAX] for i in range(0, len(LONG), MAX))] * 2
    pieces = [e.fields for e in events[1:5]]
    check_pieces(pieces, LONG, known=0)
    assert all(p["level"] == "error" and p["level_num"] == 50 for p in pieces)
    assert events[0].fields["message"] == "ok" and FRAGMENT not in events[0].fields  # short lines as ever
    assert too_long() - before == 2
    warnings = [r for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].__dict__["max_line_bytes"] == MAX  # once a minute per source


async def push_in_reads(feed: LineFeed, data: bytes) -> None:
    """`data` 700 bytes at a time, as a writer still writing it would be read; never more than
    MAX bytes of a line held."""
    for start in range(0, len(data), 700):
        await feed.push(data[start : start + 700])
        assert feed.held_bytes <= MAX


async def test_a_long_line_streaming_in_is_never_held_whole(tmp_path: Path) -> None:
    """Pieces go as soon as more than MAX bytes of the line are held, so their count is not known
    yet; the pieces cut once the newline is read have it. A last line without its newline (stdin
    closed) ends at the final flush."""
    channel = Channel("out", 1 << 30, "block")
    feed = local_feed(channel, tmp_path)
    await push_in_reads(feed, LONG + b"\n" + SHORT + b"\n" + LONG)
    await feed.flush(force=True)
    events = await drain(channel)
    assert [e.raw for e in events].index(SHORT) == 4
    for pieces in (events[:4], events[5:]):
        assert b"".join(e.raw for e in pieces) == LONG
        check_pieces([e.fields for e in pieces], LONG, known=3)
        assert all(e.fields["level"] == "error" for e in pieces)


@pytest.mark.parametrize(
    ("line", "level"),
    [
        (b'{"level":"warn","pid":7,"timestamp":%d,"message":"%s"}' % (NOW_MS, b"m" * 2500), "warn"),  # Nest JSON
        (
            b"[Nest] 7  - %s     LOG [App] %s"
            % (datetime.fromtimestamp(NOW_MS // 1000, UTC).strftime("%m/%d/%Y, %I:%M:%S %p").encode(), b"m" * 2500),
            "info",
        ),
        (b"ERROR something huge happened " + b"m" * 2500, "error"),  # plain text with a level word
    ],
    ids=["nest-json", "nest-text", "text"],
)
async def test_every_piece_has_the_level_and_time_of_the_line_start(tmp_path: Path, line: bytes, level: str) -> None:
    channel = Channel("out", 1 << 30, "block")
    feed = local_feed(channel, tmp_path)
    await feed.push(line + b"\n")
    events = await drain(channel)
    assert b"".join(e.raw for e in events) == line and len(events) == 3
    assert {e.fields["level"] for e in events} == {level}
    assert len({e.fields["timestamp"] for e in events}) == 1


async def test_a_long_line_parsed_in_a_worker_is_cut_the_same_way(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Through a real parse worker and the Datadog sink's preparer, whole and streaming in."""
    config = config_from_dict(config_table({"type": "datadog", "inputs": ["app"], "api_key": "k" * 32}), environ={})
    sink = build_sink("out", config.sinks["out"])
    channel = Channel("out", 1 << 30, "block")
    async with parse_worker() as pool:
        feed = one_sink_context(config, "app", sink, channel, tmp_path, pool).open_feed()
        await feed.push(SHORT + b"\n" + LONG + b"\n")
        await push_in_reads(feed, LONG + b"\n" + LONG)  # the same line twice more, streaming in
        await feed.flush(force=True)
        logs = [orjson.loads(event.raw) for event in await drain(channel)]
    assert logs[0]["message"] == "ok" and FRAGMENT not in logs[0]
    whole, streamed, unterminated = logs[1:5], logs[5:9], logs[9:]
    check_pieces(whole, LONG, known=0)
    check_pieces(streamed, LONG, known=3)
    check_pieces(unterminated, LONG, known=3)
    assert all(log["status"] == "error" and log["level_num"] == 50 for log in logs[1:])
    assert capfd.readouterr().err.count(WARNING) == 1
