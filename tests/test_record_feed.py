"""Record feeds: a source hands over records it parsed itself, with positions of its own (a cursor)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.agent import Agent
from shipper.config import config_from_dict
from shipper.pipeline.channel import Channel, Part
from shipper.source import SourceContext
from shipper.workers import WorkerPool
from sinks import build_sink
from sources import REGISTRY as SOURCES
from tests.driving import one_sink_context, parse_worker
from tests.record_source import page_records


def context_for(tmp_path: Path, channel: Channel, workers: WorkerPool | None) -> SourceContext:
    table = {
        "sources": {"polled": {"type": "stdin"}},
        "sinks": {"out": {"type": "file", "inputs": ["polled"], "path": str(tmp_path / "unused")}},
    }
    config = config_from_dict(table, environ={})
    return one_sink_context(config, "polled", build_sink("out", config.sinks["out"]), channel, tmp_path, workers)


async def parts_of(channel: Channel) -> list[Part]:
    parts = []
    while channel.nevents:
        part = await channel.get(0)
        assert part is not None
        parts.append(part)
    return parts


def logs(parts: list[Part]) -> list[dict[str, Any]]:
    return [orjson.loads(event.raw) for part in parts for event in part.events]


PAGES = [page_records(page, 4) for page in range(3)]


async def pushed(tmp_path: Path, workers: WorkerPool | None) -> tuple[list[Part], list[Any]]:
    channel = Channel("out", 1 << 30, "block")
    context = context_for(tmp_path, channel, workers)
    commits: list[Any] = []
    feed = context.open_record_feed(on_commit=commits.append, fields={"collection": "edge_logs"})
    for page, records in enumerate(PAGES):
        await feed.push_records([dict(record) for record in records], f"cursor-{page + 1}")
    await feed.flush(force=True)
    return await parts_of(channel), commits


async def test_records_through_a_worker_and_in_the_agent_give_the_same_logs(tmp_path: Path) -> None:
    in_agent, _ = await pushed(tmp_path, None)
    async with parse_worker() as pool:
        in_worker, _ = await pushed(tmp_path, pool)
    assert logs(in_worker) == logs(in_agent)
    got = logs(in_agent)
    assert [log["id"] for log in got] == [f"{page}-{index}" for page in range(3) for index in range(4)]
    first = got[0]
    # Normalized as a line would be: level word, message, the record's own time (microseconds), the
    # feed's fields; and redacted: a record source never skips redaction.
    assert first["level"] == "error" and first["message"] == "record 0-0" and first["collection"] == "edge_logs"
    assert first["timestamp"].endswith("Z") and first["source"] == "polled"
    assert "sk-page0-secret" not in orjson.dumps(got).decode()


@pytest.mark.parametrize("with_worker", [False, True])
async def test_the_cursor_moves_only_after_delivery_and_only_over_a_contiguous_range(
    tmp_path: Path, with_worker: bool
) -> None:
    if with_worker:
        async with parse_worker() as pool:
            parts, commits = await pushed(tmp_path, pool)
    else:
        parts, commits = await pushed(tmp_path, None)
    assert len(parts) == 3 and commits == []  # nothing delivered: nothing committed
    parts[1].ack.done(len(parts[1].events))
    assert commits == []  # a later page delivered never moves the cursor past an earlier one
    parts[0].ack.done(len(parts[0].events))
    assert commits == ["cursor-2"]
    parts[2].ack.done(len(parts[2].events))
    assert commits == ["cursor-2", "cursor-3"]


async def test_a_big_page_is_parsed_in_pieces_but_commits_its_cursor_once_whole(tmp_path: Path) -> None:
    channel = Channel("out", 1 << 30, "block")
    feed = context_for(tmp_path, channel, None).open_record_feed(on_commit=(commits := []).append, committed="c0")
    feed.PIECE_LINES = 3  # type: ignore[misc]
    await feed.push_records(page_records(0, 10), "c1")
    parts = await parts_of(channel)
    assert [len(part.events) for part in parts] == [3, 3, 3, 1]
    for part in parts[:-1]:
        part.ack.done(len(part.events))
    assert commits in ([], ["c0"])  # the earlier pieces commit nothing new
    parts[-1].ack.done(1)
    assert commits[-1] == "c1"


async def test_an_agent_runs_a_record_source_end_to_end_and_resumes_from_its_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SOURCES.modules, "test-records", "tests.record_source")
    out = tmp_path / "out.ndjson"

    async def run(pages: int) -> int:
        table = {
            "agent": {"state_dir": str(tmp_path / "state"), "parse_workers": 1},
            "api": {"enabled": False},
            "sources": {"polled": {"type": "test-records", "pages": pages, "per_page": 5}},
            "sinks": {"out": {"type": "file", "inputs": ["polled"], "path": str(out)}},
        }
        return await asyncio.wait_for(Agent(config_from_dict(table, environ={})).run(), 30)

    assert await run(2) == 0
    assert await run(3) == 0  # resumes at page 2: pages 0-1 are not sent again
    ids = [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
    assert ids == [f"{page}-{index}" for page in range(3) for index in range(5)]
    state = orjson.loads((tmp_path / "state" / "checkpoints" / "polled.json").read_bytes())["state"]
    assert state == {"cursor": 3}


@pytest.mark.parametrize("with_worker", [False, True])
async def test_a_push_of_no_records_commits_its_position_only_behind_the_pushes_before_it(
    tmp_path: Path, with_worker: bool
) -> None:
    async def push(workers: WorkerPool | None) -> tuple[list[Part], list[Any]]:
        channel = Channel("out", 1 << 30, "block")
        commits: list[Any] = []
        feed = context_for(tmp_path, channel, workers).open_record_feed(on_commit=commits.append, committed="c0")
        await feed.push_records(page_records(0, 3), "c1")
        await feed.push_records([], "c2")  # a poll that found nothing new
        await feed.flush(force=True)
        return await parts_of(channel), commits

    if with_worker:
        async with parse_worker() as pool:
            parts, commits = await push(pool)
    else:
        parts, commits = await push(None)
    assert commits == []  # the empty push waits for the records pushed before it
    [part] = parts
    part.ack.done(len(part.events))
    assert commits == ["c2"]
