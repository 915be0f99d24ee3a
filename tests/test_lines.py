"""Prepared logs held as the bytes they arrived in (shipper/lines.py).

`Lines` and `Chain` must behave exactly as the lists of `Encoded` events they stand for (what a
sink, a retry, a split or the disk buffer reads of them), the compiled helpers exactly as their
Python twins, and CloudWatch's calls framed from the bytes exactly as the calls framed event by
event: the same bodies, the same events in each.
"""

from __future__ import annotations

import random
import time
from array import array
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.event import encoded_events_py, wire_ends_py
from shipper.lines import (
    Chain,
    Lines,
    events_of,
    framed_lines_py,
    line_ends_py,
    pack_stamps,
    pack_stamps_py,
    unpack_stamps_py,
)
from shipper.speedups import SPEEDUPS
from sinks.cloudwatch_events import MAX_CALL_BYTES, MAX_CALL_EVENTS, MAX_SPAN_MS, calls, line_calls

needs_speedups = pytest.mark.skipif(SPEEDUPS is None, reason="shipper._speedups is not built here")
FIELDS = {"source": "app"}
raws = st.lists(st.binary(max_size=16).map(lambda raw: raw.replace(b"\n", b" ")), min_size=1, max_size=25)


def ndjson(logs: list[bytes]) -> bytes:
    return b"".join(raw + b"\n" for raw in logs)


def shown(events: Any) -> list[tuple[Any, ...]]:
    return [(event.fields, event.raw, getattr(event, "stamp", None)) for event in events]


def log_events(times: list[int], stream: str = "s") -> tuple[bytes, list[tuple[int, str]]]:
    """CloudWatch log events as a preparer writes them, one a line, and their stamps."""
    body = b"".join(
        orjson.dumps({"timestamp": ms, "message": f"log {index}"}) + b"\n" for index, ms in enumerate(times)
    )
    return body, [(ms, stream) for ms in times]


# ---------------------------------------------------------------- the compiled helpers and their twins


@needs_speedups
@settings(max_examples=200, deadline=None)
@given(logs=st.lists(st.binary(max_size=16).map(lambda raw: raw.replace(b"\n", b" ")), max_size=25))
def test_line_ends_and_framed_lines_are_the_same_either_way(logs: list[bytes]) -> None:
    assert SPEEDUPS is not None
    body = ndjson(logs)
    assert (
        SPEEDUPS.line_ends(body)
        == line_ends_py(body)
        == [end for end in wire_ends_py(encoded_events_py((body, None), {}))]
    )
    cut = len(logs) // 2
    pieces = [memoryview(ndjson(logs[:cut])), memoryview(bytearray(ndjson(logs[cut:])))]
    for opening, separator, closing in ((b"[", b",", b"]"), (b'{"logEvents":[', b",", b"]}"), (b"", b"\n", b"")):
        compiled = SPEEDUPS.framed_lines(opening, pieces, separator, closing)
        assert compiled == framed_lines_py(opening, pieces, separator, closing)
        assert compiled == opening + separator.join(logs) + closing
    for bad in (line_ends_py, SPEEDUPS.line_ends):
        with pytest.raises(ValueError, match="newline"):
            bad(body + b"unfinished")


@needs_speedups
def test_a_body_of_one_empty_line_is_framed_without_touching_the_shared_empty_bytes() -> None:
    """Framed to nothing, a lone empty line must not be copied into the empty result: that result
    is CPython's one shared b"", and a byte written into it makes b"" unequal to other empty bytes."""
    assert SPEEDUPS is not None
    assert SPEEDUPS.framed_lines(b"", [memoryview(b"\n")], b",", b"") == b""
    assert SPEEDUPS.framed_lines(b"[", [b"\n", b"\n"], b",", b"]") == b"[,]"
    assert msgspec.json.Encoder().encode_lines([]) == b""  # a fresh empty bytes, not the shared one


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    stamps=st.lists(
        st.one_of(
            st.tuples(st.integers(-(2**64), 2**64), st.sampled_from(["a", "b"])),
            st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 9)),
            st.tuples(st.booleans(), st.just("a")),
            st.tuples(st.integers(0, 9), st.just("a"), st.just(1)),
        ),
        min_size=1,
        max_size=12,
    ),
    data=st.data(),
)
def test_stamps_are_packed_and_unpacked_the_same_either_way(stamps: list[Any], data: Any) -> None:
    assert SPEEDUPS is not None
    lo = data.draw(st.integers(0, len(stamps) - 1))
    hi = data.draw(st.integers(lo + 1, len(stamps)))
    packed = SPEEDUPS.pack_stamps(stamps)
    assert packed == pack_stamps_py(stamps)
    if isinstance(packed, tuple):
        time_at, key, times, _ = packed
        assert SPEEDUPS.unpack_stamps(time_at, key, times, lo, hi) == unpack_stamps_py(time_at, key, times, lo, hi)
        assert unpack_stamps_py(time_at, key, times, 0, len(stamps)) == stamps


def test_stamps_pack_only_when_they_are_one_key_with_int_times() -> None:
    times = [5, 7, 6]
    assert pack_stamps([(ms, "s") for ms in times]) == (0, "s", array("q", times).tobytes(), False)
    assert pack_stamps([("k", 1), ("k", 2)]) == (1, "k", array("q", [1, 2]).tobytes(), True)
    for as_is in ([(1, "a"), (2, "b")], [(1, "a"), (2.0, "a")], [(1, "a", None)], [(2**63, "a")], [], None):
        assert pack_stamps(as_is) == as_is


@needs_speedups
def test_a_reply_buffer_has_the_size_asked() -> None:
    assert SPEEDUPS is not None
    assert [len(SPEEDUPS.unfilled(size)) for size in (0, 1, 70_000)] == [0, 1, 70_000]
    assert type(SPEEDUPS.unfilled(3)) is bytearray


# ---------------------------------------------------------------- Lines and Chain behave as lists


@settings(max_examples=200, deadline=None)
@given(logs=raws, packed=st.booleans(), data=st.data())
def test_lines_read_as_the_events_they_stand_for(logs: list[bytes], packed: bool, data: Any) -> None:
    """Indexing, slicing, iterating, sizes and `compact` give what the list of events gives."""
    body = bytearray(ndjson(logs))
    stamps = [(1_000 + index, "s") for index in range(len(logs))]
    arrived = pack_stamps(stamps) if packed else stamps
    lines = Lines.of((body, arrived), FIELDS)
    expected = encoded_events_py((bytes(body), stamps), FIELDS)
    assert shown(lines) == shown(expected) and len(lines) == len(expected)
    start = data.draw(st.integers(0, len(logs)))
    stop = data.draw(st.integers(start, len(logs)))
    part = lines[start:stop]
    assert shown(part) == shown(expected[start:stop])
    assert part.wire == sum(len(raw) + 1 for raw in logs[start:stop])
    assert part.wire_ends() == wire_ends_py(expected[start:stop])
    assert bytes(part.view()) == ndjson(logs[start:stop])
    compact = part.compact()
    assert shown(compact) == shown(part) and bytes(compact.view()) == bytes(part.view())
    assert len(compact.body) == part.wire  # holds its own lines, not the whole reply
    if len(part):
        index = data.draw(st.integers(-len(part), len(part) - 1))
        assert shown([part[index]]) == shown([expected[start:stop][index]])
        assert shown([compact[index]]) == shown([expected[start:stop][index]])
        inner = compact[1:]
        assert shown(inner) == shown(expected[start + 1 : stop])
    with pytest.raises(IndexError):
        part[len(part)]
    with pytest.raises(ValueError, match="timestamps"):
        Lines.of((body + b"x\n", arrived), FIELDS)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5), data=st.data())
def test_a_chain_reads_as_its_pieces_joined(sizes: list[int], data: Any) -> None:
    pieces: list[Any] = []
    expected: list[Any] = []
    for number, size in enumerate(sizes):
        logs = [b"piece %d log %d" % (number, index) for index in range(size)]
        stamps = [(index, "s") for index in range(size)]
        events = encoded_events_py((ndjson(logs), stamps), FIELDS)
        pieces.append(Lines.of((ndjson(logs), stamps), FIELDS) if number % 2 == 0 else events)
        expected += events
    chain = Chain(pieces)
    assert len(chain) == len(expected) and shown(chain) == shown(expected)
    assert shown(events_of(chain)) == shown(expected)
    start = data.draw(st.integers(0, len(expected)))
    stop = data.draw(st.integers(start, len(expected)))
    assert shown(chain[start:stop]) == shown(expected[start:stop])
    assert len(chain[start:stop]) == stop - start
    for index in range(-len(expected), len(expected)):
        assert shown([chain[index]]) == shown([expected[index]])
    with pytest.raises(IndexError):
        chain[len(expected)]


# ---------------------------------------------------------------- CloudWatch calls from the bytes


def chained(times: list[int], cut_every: int, stream: str = "s") -> Chain:
    """Log events arrived in replies of `cut_every` lines (stamps packed, as a worker sends them)."""
    pieces: list[Any] = []
    for start in range(0, len(times), cut_every):
        body, stamps = log_events(times[start : start + cut_every], stream)
        pieces.append(Lines.of((bytearray(body), pack_stamps(stamps)), FIELDS)[0:])
    return Chain(pieces)


def same_calls(fast: Any, slow: Any) -> None:
    assert [request.body for request in fast] == [request.body for request in slow]
    assert [request.meta for request in fast] == [request.meta for request in slow]
    assert [shown(request.events) for request in fast] == [shown(request.events) for request in slow]


def test_one_streams_logs_in_order_are_framed_from_their_bytes_as_event_by_event() -> None:
    now = int(time.time() * 1000)
    times = sorted(now - random.Random(3).randint(0, 60_000) for _ in range(2_500))
    batch = chained(times, 700)
    fast = line_calls(batch, "/group")
    assert fast is not None and len(fast) == 1
    same_calls(fast, calls(list(batch), "/group"))
    body = orjson.loads(fast[0].body)
    assert [log["timestamp"] for log in body["logEvents"]] == times


@pytest.mark.parametrize("limit", ["events", "bytes", "span"])
def test_a_batch_over_a_calls_limits_is_cut_as_event_by_event(limit: str) -> None:
    now = int(time.time() * 1000)
    count = {"events": MAX_CALL_EVENTS + 2_345, "bytes": 30_000, "span": 3_000}[limit]
    times = [now - 40 * 3_600_000 + index * (50_000 if limit == "span" else 1) for index in range(count)]
    batch = chained(times, 1_000)
    fast = line_calls(batch, "/group")
    assert fast is not None and len(fast) >= 2
    same_calls(fast, calls(list(batch), "/group"))
    for request in fast:
        logs = orjson.loads(request.body)["logEvents"]
        assert len(logs) <= MAX_CALL_EVENTS and len(request.body) <= MAX_CALL_BYTES + 200
        assert logs[-1]["timestamp"] - logs[0]["timestamp"] < MAX_SPAN_MS


def test_logs_out_of_order_or_of_two_streams_are_left_to_event_by_event_framing() -> None:
    now = int(time.time() * 1000)
    backwards = chained([now, now - 5, now + 1], 3)
    across = Chain([*chained([now, now + 1], 2).pieces, *chained([now - 1], 1).pieces])
    streams = Chain([*chained([now], 1, "a").pieces, *chained([now + 1], 1, "b").pieces])
    for batch in (backwards, across, streams):
        assert line_calls(batch, "/group") is None
        slow = calls(list(batch), "/group")
        for request in slow:  # the fallback still sorts each stream's events by time
            stamps = [log["timestamp"] for log in orjson.loads(request.body)["logEvents"]]
            assert stamps == sorted(stamps)
    listed = Chain([list(chained([now], 1))])
    assert line_calls(listed, "/group") is None  # events already made: nothing to frame from bytes
