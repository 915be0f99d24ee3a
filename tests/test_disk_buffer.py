"""The disk buffer (shipper/pipeline/spill.py) and the channel's ordered spill to it.

A user trusts it with events that exist nowhere else (stdin, a wrapped API), so each test states
a promise: what goes in comes out whole and in order, a delivered record is gone from disk, the
next run starts where delivery stopped, a damaged file loses only what is damaged (counted), and
the bound holds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from shipper.errors import ShipperError
from shipper.event import Encoded, Event
from shipper.pipeline.acks import Ack, AckTracker
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.spill import HEADER, Spilled, SpilledEvent, SpillLog, on_disk
from tests.test_driver_acks import sample


def prepared(first: int, count: int, source: str = "api") -> list[Event]:
    fields = {"source": source}
    return [
        Encoded(fields, b'{"message":"line %d"}' % i, (f'{{"service":"{source}"}}', i, b""))
        for i in range(first, first + count)
    ]


def ids(events: list[Event]) -> list[int]:
    return [int(event.raw.split(b"line ")[1].rstrip(b'"}')) for event in events]


def spill_log(directory: Path, max_bytes: int = 1 << 30, **kwargs: Any) -> SpillLog:
    log = SpillLog("sink-under-test", directory / "buffers" / "sink-under-test", max_bytes, **kwargs)
    log.open()
    return log


def read_all(log: SpillLog) -> list[tuple[list[Event], Ack]]:
    records = []
    while (record := log.read()) is not None:
        records.append(record)
    return records


def deliver(records: list[tuple[list[Event], Ack]]) -> None:
    """Acknowledge records as a driver does once the destination accepted them."""
    for events, ack in records:
        ack.done(len(events))


# ---------------------------------------------------------------------- the log itself


def test_records_come_back_whole_and_in_order_with_their_timestamps_and_fields(tmp_path: Path) -> None:
    log = spill_log(tmp_path)
    log.append(prepared(0, 500))
    own = [Event({"source": "api", "n": i, "nested": {"a": [1, 2.5, None, True]}}, b"raw %d" % i) for i in range(3)]
    log.append(own)
    [(first, _), (second, _)] = read_all(log)
    assert ids(first) == list(range(500))
    assert [event.stamp for event in first][:2] == [('{"service":"api"}', 0, b""), ('{"service":"api"}', 1, b"")]  # type: ignore[attr-defined]
    assert all(isinstance(event, Spilled) and on_disk(event) for event in first)
    assert first[0].fields is first[1].fields  # shared fields stay shared: one dict per record
    assert [event.fields for event in second] == [event.fields for event in own]
    assert [event.raw for event in second] == [event.raw for event in own]
    assert all(isinstance(event, SpilledEvent) for event in second)
    log.close()


def test_a_record_takes_a_fraction_of_its_events_bytes_on_disk(tmp_path: Path) -> None:
    log = spill_log(tmp_path)
    events = prepared(0, 2000)
    log.append(events)
    raw_bytes = sum(len(event.raw) for event in events)
    assert log.nbytes < raw_bytes / 4  # compressed: an outage fills the disk several times slower
    log.close()


def test_delivered_segments_are_deleted_and_the_bound_is_freed(tmp_path: Path) -> None:
    log = spill_log(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024)
    written = 0
    while log.append(prepared(written, 200)) is not None:
        written += 200
    assert written > 0 and log.nbytes <= 64 * 1024  # full: the next record was refused, nothing written
    assert sample("shipper_buffer_disk_bytes", sink="sink-under-test") == log.nbytes
    assert sample("shipper_buffer_disk_events", sink="sink-under-test") == written
    segments = sorted(log.directory.glob("*.seg"))
    assert len(segments) > 2
    records = read_all(log)
    assert sum(len(events) for events, _ in records) == written
    deliver(records[:-1])  # all but the last: the segments before the last one go
    assert len(list(log.directory.glob("*.seg"))) < len(segments)
    assert log.append(prepared(written, 200)) is not None  # room again
    deliver(records[-1:] + read_all(log))
    assert not list(log.directory.glob("*.seg")) and log.nbytes == 0 and log.nevents == 0
    assert sample("shipper_buffer_disk_bytes", sink="sink-under-test") == 0
    log.close()


def test_an_ack_out_of_order_holds_the_delivered_position_back(tmp_path: Path) -> None:
    log = spill_log(tmp_path)
    positions = [log.append(prepared(first, 100)) for first in range(0, 300, 100)]
    records = read_all(log)
    records[2][1].done(100)
    records[1][1].done(60)
    records[1][1].done(40)  # a part cut across two batches: delivered once both are
    assert log.store.state == {}  # the first record is not delivered yet: nothing moves
    records[0][1].done(100)
    assert (log.store.state["segment"], log.store.state["offset"]) == positions[2]
    log.close()


def test_the_next_run_starts_at_the_first_undelivered_record(tmp_path: Path) -> None:
    log = spill_log(tmp_path)
    for first in range(0, 400, 100):
        log.append(prepared(first, 100))
    records = read_all(log)
    deliver(records[:2])
    log.store.save()  # the agent saves it soon after it moves, and at exit
    log.close()

    again = spill_log(tmp_path)
    assert again.pending and again.nevents == 400  # the gauge counts the undeleted segment's events
    assert [ids(events)[0] for events, _ in read_all(again)] == [200, 300]
    again.append(prepared(400, 100))  # a new run writes a new segment after the old ones
    assert [ids(events)[0] for events, _ in read_all(again)] == [400]
    again.close()


def test_a_second_process_cannot_take_the_same_buffer(tmp_path: Path) -> None:
    first = spill_log(tmp_path)
    with pytest.raises(ShipperError, match="disk buffer of sink sink-under-test is in use by pid"):
        spill_log(tmp_path)
    first.close()
    spill_log(tmp_path).close()  # released at close


@pytest.mark.parametrize("damage", ["garbled", "zeroed", "torn"])
def test_a_damaged_record_is_skipped_counted_and_the_rest_delivered(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = spill_log(tmp_path)
    positions = [log.append(prepared(first, 100)) for first in range(0, 300, 100)]
    log.close()
    [segment] = log.directory.glob("*.seg")
    data = bytearray(segment.read_bytes())
    first_end, second_end = positions[0][1], positions[1][1]  # type: ignore[index]
    if damage == "garbled":  # bytes flipped inside the second record's payload
        data[first_end + HEADER.size + 20 : first_end + HEADER.size + 30] = b"\xff" * 10
    elif damage == "zeroed":  # the second record's header and payload NUL-filled
        data[first_end:second_end] = bytes(second_end - first_end)
    else:  # the third record cut in the middle, as a crash mid-write leaves it
        del data[second_end + 40 :]
    segment.write_bytes(bytes(data))
    corrupt_before = sample("shipper_buffer_corrupt_bytes_total", sink="sink-under-test")
    dropped_before = sample("shipper_events_dropped_total", sink="sink-under-test", reason="buffer_corrupt")

    again = spill_log(tmp_path)
    with caplog.at_level(logging.ERROR, "shipper.buffer"):
        records = read_all(again)
    survivors = [ids(events)[0] for events, _ in records]
    assert survivors == ([0, 100] if damage == "torn" else [0, 200])
    assert sample("shipper_buffer_corrupt_bytes_total", sink="sink-under-test") > corrupt_before
    lost = sample("shipper_events_dropped_total", sink="sink-under-test", reason="buffer_corrupt") - dropped_before
    assert lost == (0 if damage == "zeroed" else 100)  # a header that still reads says how many it held
    [said] = [r for r in caplog.records if r.getMessage() == "disk buffer record is corrupt; skipped"]
    assert str(segment) == said.segment  # type: ignore[attr-defined]
    deliver(records)
    assert not list(again.directory.glob("*.seg"))  # the damaged segment does not stick around either
    again.close()


def half_delivered(tmp_path: Path) -> SpillLog:
    """A closed buffer of two records, the first delivered (its position saved)."""
    log = spill_log(tmp_path)
    log.append(prepared(0, 100))
    log.append(prepared(100, 100))
    records = read_all(log)
    deliver(records[:1])
    log.store.save()
    log.close()
    return log


@pytest.mark.parametrize("state", [b"", b"\x00" * 40, b"not json", b'{"version":1,"crc32":0,"state":{}}'])
def test_a_damaged_position_file_replays_what_the_buffer_holds(tmp_path: Path, state: bytes) -> None:
    log = half_delivered(tmp_path)
    (log.directory / "position.json").write_bytes(state)
    again = spill_log(tmp_path)
    assert [ids(events)[0] for events, _ in read_all(again)] == [0, 100]  # duplicates, never a loss
    again.close()


def test_a_position_past_its_segments_end_is_not_trusted(tmp_path: Path) -> None:
    log = spill_log(tmp_path)
    log.append(prepared(0, 100))
    log.close()
    [segment] = log.directory.glob("*.seg")
    log.store.update("segment", int(segment.stem))
    log.store.update("offset", segment.stat().st_size + 1000)
    log.store.save()
    before = sample("shipper_state_corrupt_total", file_kind="buffer_position", reason="invalid_entry")
    again = spill_log(tmp_path)
    assert [ids(events)[0] for events, _ in read_all(again)] == [0]
    assert sample("shipper_state_corrupt_total", file_kind="buffer_position", reason="invalid_entry") == before + 1
    again.close()


def test_a_failed_write_leaves_no_torn_record_and_the_next_one_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = spill_log(tmp_path)
    log.append(prepared(0, 100))
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])  # part of it made it to the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError):
        log.append(prepared(100, 100))
    monkeypatch.setattr(os, "write", real_write)
    log.append(prepared(200, 100))
    assert [ids(events)[0] for events, _ in read_all(log)] == [0, 200]
    log.close()


# ---------------------------------------------------------------------- the channel


def part(events: list[Event], tracker: AckTracker) -> Part:
    ack = tracker.open(ids(events)[-1])
    ack.add(len(events))
    ack.done()
    return Part(events, ack, sum(len(e.raw) for e in events) + 128 * len(events))


async def take_all(channel: Channel) -> list[Part]:
    parts = []
    while (got := await channel.get(0)) is not None:
        parts.append(got)
    return parts


async def test_a_source_that_cannot_wait_spills_in_order_and_never_blocks(tmp_path: Path) -> None:
    spill = SpillLog("spilling", tmp_path / "buffers" / "spilling", 1 << 30)
    channel = Channel("spilling", 4096, "block", spill)
    channel.open()
    stdin = AckTracker()
    parts = [part(prepared(first, 50), stdin) for first in range(0, 1000, 50)]
    for each in parts:  # ~50 KiB into a 4 KiB channel, nobody reading
        await asyncio.wait_for(channel.put(each, replayable=False), 1)
    in_memory = channel.nevents // 50
    assert 0 < in_memory < len(parts) and spill.nevents == 1000 - channel.nevents
    # What is on disk counts as taken: only the parts in memory still hold their acks.
    assert [each.ack.remaining > 0 for each in parts] == [True] * in_memory + [False] * (len(parts) - in_memory)

    tailed = AckTracker()
    waiting = asyncio.create_task(channel.put(part(prepared(1000, 50, "file"), tailed)))  # a file waits its turn
    await asyncio.sleep(0.05)
    assert not waiting.done()
    delivered: list[int] = []
    while not waiting.done() or channel.nevents or spill.pending:
        got = await channel.get(0.1)
        if got is not None:
            delivered.extend(ids(got.events))
            got.ack.done(len(got.events))
    delivered.extend(id_ for got in await take_all(channel) for id_ in ids(got.events))
    assert delivered == list(range(1050))  # memory first, then the disk, then the file's part: in order
    assert not list(spill.directory.glob("*.seg"))
    spill.close()


async def test_past_the_disk_bound_a_source_that_cannot_wait_loses_the_newest_counted(tmp_path: Path) -> None:
    spill = SpillLog("tiny-disk", tmp_path / "buffers" / "tiny-disk", 4096)
    channel = Channel("tiny-disk", 1024, "block", spill)
    channel.open()
    before = sample("shipper_events_dropped_total", sink="tiny-disk", reason="buffer_full")
    stdin = AckTracker()
    for first in range(0, 20_000, 500):
        await asyncio.wait_for(channel.put(part(prepared(first, 500), stdin), replayable=False), 1)
    dropped = sample("shipper_events_dropped_total", sink="tiny-disk", reason="buffer_full") - before
    kept = channel.nevents + spill.nevents
    assert dropped > 0 and kept + dropped == 20_000
    spill.close()


async def test_a_part_bigger_than_the_disk_bound_spills_what_fits_and_the_bound_holds(tmp_path: Path) -> None:
    """Memory full and the disk buffer empty, a part whose record alone would pass the bound goes in
    halves: the oldest of it within the bound, the rest counted as dropped, nothing over the bound."""
    spill = SpillLog("small-disk", tmp_path / "buffers" / "small-disk", 4096)
    channel = Channel("small-disk", 1024, "block", spill)
    channel.open()
    before = sample("shipper_events_dropped_total", sink="small-disk", reason="buffer_full")
    stdin = AckTracker()
    await channel.put(part(prepared(0, 10), stdin), replayable=False)  # fills memory
    pad = [os.urandom(60).hex().encode() for _ in range(200)]  # incompressible: the record passes 4 KiB
    big = [Encoded({"source": "api"}, b'{"pad":"%s","message":"line %d"}' % (pad[i], 10 + i), None) for i in range(200)]
    await asyncio.wait_for(channel.put(part(big, stdin), replayable=False), 1)
    dropped = sample("shipper_events_dropped_total", sink="small-disk", reason="buffer_full") - before
    assert 0 < spill.nbytes <= 4096
    assert spill.nevents > 0 and spill.nevents + dropped == 200
    kept = [event for events, _ in read_all(spill) for event in events]
    assert [event.raw for event in kept] == [event.raw for event in big[: len(kept)]]  # the oldest, in order
    spill.close()


async def test_a_disk_buffer_takes_everything_first_and_the_next_run_resends_the_undelivered(tmp_path: Path) -> None:
    def durable() -> tuple[Channel, SpillLog]:
        spill = SpillLog("durable", tmp_path / "buffers" / "durable", 1 << 30)
        channel = Channel("durable", 8192, "block", spill, durable=True)
        channel.open()
        return channel, spill

    channel, spill = durable()
    tailed = AckTracker()
    for first in range(0, 600, 100):
        await asyncio.wait_for(channel.put(part(prepared(first, 100, "file"), tailed)), 1)
    assert tailed.committed == 599  # the file's checkpoint moves once its lines are on disk
    parts = await take_all(channel)
    assert [e for p in parts for e in ids(p.events)] == list(range(600))
    for got in parts[:2]:  # the destination accepted two parts, then the process died
        got.ack.done(len(got.events))
    spill.store.save()
    spill.close()

    channel, spill = durable()
    resent = await take_all(channel)
    assert [e for p in resent for e in ids(p.events)] == list(range(200, 600))
    spill.close()


async def test_a_full_disk_buffer_pauses_a_file_until_delivery_frees_room(tmp_path: Path) -> None:
    spill = SpillLog("durable-full", tmp_path / "buffers" / "durable-full", 6000, segment_bytes=1024)
    channel = Channel("durable-full", 1 << 20, "block", spill, durable=True)
    channel.open()
    tailed = AckTracker()
    first = 0
    while spill.nbytes + 1500 < spill.max_bytes:
        await asyncio.wait_for(channel.put(part(prepared(first, 100, "file"), tailed)), 1)
        first += 100
    blocked = asyncio.create_task(channel.put(part(prepared(first, 2000, "file"), tailed)))
    await asyncio.sleep(0.1)
    assert not blocked.done() and tailed.committed == first - 1  # waiting, its data still in the file
    for got in await take_all(channel):
        got.ack.done(len(got.events))
    await asyncio.wait_for(blocked, 5)
    assert tailed.committed == first + 1999
    spill.close()


# ---------------------------------------------------------------------- every sink


SINKS: dict[str, dict[str, Any]] = {
    "datadog": {"type": "datadog", "api_key": "${DD_KEY}", "tags": ["env:test"]},
    "loki": {"type": "loki", "endpoint": "http://127.0.0.1:1", "structured_metadata": {"id": "{reqId}"}},
    "cloudwatch": {"type": "cloudwatch", "log_group": "/test/app", "region": "us-east-1"},
    "http": {"type": "http", "url": "http://127.0.0.1:1/logs"},
    "file": {"type": "file", "path": "out.ndjson"},
    "console": {"type": "console"},
}


@pytest.mark.parametrize("kind", sorted(SINKS))
def test_every_sink_sends_the_same_requests_from_the_disk_buffer_as_from_memory(kind: str) -> None:
    """What a sink's preparer made (its wire form and timestamps: Loki's stream keys, Datadog's
    times) comes back from disk exactly, so the requests built from it are byte for byte the same."""
    from shipper.config import config_from_dict
    from shipper.event import encoded_events
    from shipper.pipeline.routing import build_preparer
    from shipper.pipeline.spill import decode_payload, encode_record
    from sinks import build_sink

    table = {"inputs": ["app"], **SINKS[kind]}
    config = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": {kind: table}}, environ={"DD_KEY": "k"})
    sink, twin = (build_sink(f"spill-{kind}-{n}", config.sinks[kind]) for n in (1, 2))  # framers keep state (Loki)
    spec = sink.preparer()
    assert spec is not None
    now_ms = int(time.time() * 1000)
    events: list[Event] = [
        Event(
            {
                "time": now_ms - 1000 + i,
                "timestamp": "",
                "level": "info",
                "message": f"line {i}",
                "service": "api",
                "host": "web-1",
                "source": "app",
                "reqId": f"req-{i}",
            },
            b'{"msg":"line %d"}' % i,
        )
        for i in range(200)
    ]
    for event in events:
        event.fields["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now_ms / 1000))
    in_memory = encoded_events(build_preparer(sink.name, spec).prepare(events), {"source": "app"})
    from_disk = decode_payload(encode_record(in_memory)[HEADER.size :])
    assert [e.raw for e in from_disk] == [e.raw for e in in_memory]
    assert [e.stamp for e in from_disk] == [e.stamp for e in in_memory]  # type: ignore[attr-defined]
    assert [r.body for r in sink.encode(from_disk)] == [r.body for r in twin.encode(in_memory)]


def test_a_buffer_left_by_a_sink_no_longer_configured_is_named_by_validate(tmp_path: Path) -> None:
    from shipper.config import config_from_dict, config_warnings

    log = SpillLog("old-name", tmp_path / "buffers" / "old-name", 1 << 20)
    log.open()
    log.append(prepared(0, 10))
    log.close()
    (tmp_path / "buffers" / "delivered").mkdir()  # an empty one is no concern
    table = {"type": "console", "inputs": ["app"]}
    config = config_from_dict(
        {"agent": {"state_dir": str(tmp_path)}, "sources": {"app": {"type": "stdin"}}, "sinks": {"new-name": table}}
    )
    [warning] = [w for w in config_warnings(config) if w.key == "sinks"]
    assert "buffers/old-name holds" in str(warning) and "add [sinks.old-name] back" in str(warning)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_fsync_always_syncs_each_record_before_the_source_lets_go_interval_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    spill = SpillLog(f"fsync-{fsync}", tmp_path / "buffers" / "fsync", 1 << 30, fsync=fsync)
    channel = Channel(f"fsync-{fsync}", 1 << 20, "block", spill, durable=True)
    channel.open()
    tailed = AckTracker()
    synced_while_held: list[bool] = []
    real_fsync = os.fsync
    each = part(prepared(0, 100, "file"), tailed)

    def watched(fd: int) -> None:
        synced_while_held.append(each.ack.remaining > 0)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watched)
    await channel.put(each)
    assert tailed.committed == 99
    assert synced_while_held == ([True] if fsync == "always" else [])  # "interval": the agent's loop syncs
    spill.sync()  # what the agent does before saving checkpoints, and every fsync_interval
    assert len(synced_while_held) == {"always": 2, "interval": 1, "never": 0}[fsync]
    spill.close()
