"""Property tests: any bytes in, no exception, no lost byte, exact held_bytes, chunking-independent."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper import parse_worker, workers
from shipper.config import MultilineConfig, RedactConfig, SourceConfig
from shipper.event import Event
from shipper.metrics import registry
from shipper.parsing import Processor, build_processor

RECEIVED = 1_795_394_900.0
SAMPLES = [
    b'{"level":30,"time":1795394836366,"pid":30302,"hostname":"vm","reqId":"req-1","req":{"method":"GET",'
    b'"url":"/health"},"msg":"incoming request"}',
    b'{"level":50,"time":1795394836538,"pid":1,"hostname":"vm","err":{"type":"Error","message":"x",'
    b'"stack":"Error: x\\n    at f (/a.js:1:1)"},"msg":"x"}',
    b'{"level":"error","pid":1,"timestamp":1795394871771,"message":{"a":1},"context":"C","stack":"Error: e"}',
    b"[Nest] 31830  - 11/23/2026, 12:47:50 AM   ERROR [ExceptionsHandler] Error: database connection lost",
    b"\x1b[32m[Nest] 31709  - \x1b[39m11/23/2026, 12:47:48 AM \x1b[32m    LOG\x1b[39m \x1b[38;5;3m[NestFactory] "
    b"\x1b[39m\x1b[32mStarting Nest application...\x1b[39m",
    b"[Nest] 1  - 23.11.2026, 01:47:56   DEBUG [UsersService] cache lookup +3ms",
    b"    at AppController.boom (file:///srv/app/nest-app/dist/app.controller.js:74:15)",
    b"  code: 'E_GATEWAY',",
    b"  [cause]: TypeError: Cannot read properties of undefined (reading 'token')",
    b"}",
    b"message with\ttab",
    b"file:///srv/app/nest-app/dist/app.controller.js:82",
    b"            ^",
    b"Error: unhandled failure in background job",
    b"Node.js v20.20.2",
    b"[00:47:27.125] \x1b[31mERROR\x1b[39m (30917): \x1b[36mdatabase connection lost\x1b[39m",
    b'    \x1b[35mreqId\x1b[39m: "req-g"',
    b"    err: {",
    b'      "stack":',
    b"          Error: database connection lost",
    b"    }",
    b"",
    b"{",
    b"\r",
    b"plain text line",
]
line = st.one_of(
    st.sampled_from(SAMPLES),
    st.binary(max_size=80).map(lambda data: data.replace(b"\n", b"")),
    st.builds(lambda sample, tail: sample + tail, st.sampled_from(SAMPLES), st.binary(max_size=8)),
    st.builds(lambda size, byte: bytes([byte]) * size, st.integers(0, 300_000), st.sampled_from(b"{ [x\x1b")),
)
line = line.map(lambda data: data.replace(b"\n", b""))


def make(max_lines: int = 1000, max_bytes: int = 1024 * 1024) -> Processor:
    config = SourceConfig(
        type="file", timezone="UTC", multiline=MultilineConfig(max_lines=max_lines, max_bytes=max_bytes)
    )
    return build_processor("fuzz", config, host="agent", redact=RedactConfig(enabled=False))


def dropped_so_far() -> float:
    return registry.get_sample_value("shipper_parse_fallbacks_total", {"source": "fuzz", "reason": "empty"}) or 0.0


def align(inputs: list[bytes], events: list[Event]) -> list[int]:
    """Map every emitted line to its input line; only whitespace-only input lines may be missing."""
    emitted = [part for event in events for part in event.raw.split(b"\n")]
    origin: list[int] = []
    for index, data in enumerate(inputs):
        stripped = data[:-1] if data.endswith(b"\r") else data
        if len(origin) < len(emitted) and emitted[len(origin)] == stripped:
            origin.append(index)
        else:
            assert not stripped.strip(), (index, stripped[:80])
    assert len(origin) == len(emitted), "an event carries bytes that were never fed"
    return origin


def signature(events: list[Event]) -> list[tuple[Any, bytes]]:
    return [(event.fields, event.raw) for event in events]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    batches=st.lists(st.lists(line, max_size=12), max_size=8),
    caps=st.tuples(st.integers(1, 12), st.integers(64, 4096)),
)
def test_any_lines_are_kept_and_held_bytes_is_exact(batches: list[list[bytes]], caps: tuple[int, int]) -> None:
    # Whitespace-only lines may be dropped (counted); make them 1 byte so the count gives their size.
    batches = [[b"" if not data.strip() else data for data in batch] for batch in batches]
    processor = make(*caps)
    inputs: list[bytes] = []
    events: list[Event] = []
    checkpoints: list[tuple[int, int, float, int]] = []
    start = dropped_so_far()
    for batch in batches:
        events += processor.parse(batch, None, RECEIVED)
        inputs += batch
        checkpoints.append((len(inputs), len(events), dropped_so_far() - start, processor.held_bytes))
    events += processor.flush(force=True)
    assert processor.held_bytes == 0
    origin = align(inputs, events)
    sizes = [len(data) + 1 for data in inputs]
    for fed, emitted, dropped, held in checkpoints:
        covered = sum(len(event.raw.split(b"\n")) for event in events[:emitted])
        assert held == sum(sizes[:fed]) - sum(sizes[i] for i in origin[:covered]) - dropped
    for event in events:
        assert isinstance(event.fields["message"], str)
        assert event.fields["level"] in ("trace", "debug", "info", "warn", "error", "fatal")


def feed_like_a_source(processor: Processor, data: bytes, cuts: list[int]) -> list[Event]:
    """Split `data` at `cuts` into reads, split reads on newlines, hold partial lines (LineFeed.push)."""
    events: list[Event] = []
    partial = b""
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        chunk, previous = data[previous:cut], cut
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        if lines:
            events += processor.parse(lines, None, RECEIVED)
    if partial:
        events += processor.parse([partial], None, RECEIVED)
    return events + processor.flush(force=True)


STREAM = (
    b"\n".join(
        [
            SAMPLES[0],
            SAMPLES[3],
            SAMPLES[6],
            SAMPLES[6],
            SAMPLES[4],
            b"Object(2) {",
            SAMPLES[7],
            SAMPLES[9],
            SAMPLES[1],
            b"",
            SAMPLES[15],
            SAMPLES[16],
            SAMPLES[17],
            b'      "type": "Error",',
            SAMPLES[18],
            SAMPLES[19],
            b"              at f (/a.js:1:1)",
            SAMPLES[20],
            SAMPLES[11],
            SAMPLES[12],
            b"",
            SAMPLES[13],
            SAMPLES[6],
            b"",
            SAMPLES[14],
            b"\xff\xfe garbage \x00",
            SAMPLES[2],
        ]
    )
    + b"\n"
)


def test_two_reads_split_at_every_offset_give_the_same_events() -> None:
    whole = signature(feed_like_a_source(make(), STREAM, []))
    assert len(whole) == 8
    for offset in range(1, len(STREAM)):
        assert signature(feed_like_a_source(make(), STREAM, [offset])) == whole, offset


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    whole = signature(feed_like_a_source(make(), STREAM, []))
    assert signature(feed_like_a_source(make(), STREAM, cuts)) == whole


@settings(max_examples=100, deadline=None)
@given(pattern=st.lists(st.booleans(), min_size=1, max_size=40), lines=st.lists(line, min_size=1, max_size=40))
def test_interleaved_streams_match_separate_processors(pattern: list[bool], lines: list[bytes]) -> None:
    """stdout and stderr fed alternately to one processor = one processor per stream."""
    shared = make()
    per_stream = {"stdout": make(), "stderr": make()}
    got: dict[str, list[Event]] = {"stdout": [], "stderr": []}
    want: dict[str, list[Event]] = {"stdout": [], "stderr": []}
    for index, data in enumerate(lines):
        stream = "stderr" if pattern[index % len(pattern)] else "stdout"
        for event in shared.parse([data], stream, RECEIVED):
            got[event.fields["stream"]].append(event)
        want[stream] += per_stream[stream].parse([data], stream, RECEIVED)
    for event in shared.flush(force=True):
        got[event.fields["stream"]].append(event)
    for stream, proc in per_stream.items():
        want[stream] += proc.flush(force=True)
    assert {k: signature(v) for k, v in got.items()} == {k: signature(v) for k, v in want.items()}


WORKER_FEED_SETUP = workers.feed_setup(
    "fuzz",
    SourceConfig(type="file", timezone="UTC", multiline=MultilineConfig(max_lines=5, max_bytes=4096)),
    host="agent",
    redact=RedactConfig(),
    fields={"file": "/var/log/fuzz.log"},
    routes=[
        workers.SinkRoute(
            "dd",
            None,
            ("sinks.datadog_logs:LogEncoder", {"source": "nodejs", "service": None, "tags": ["level:{level}"],
             "max_event_bytes": 8192, "out_of_range": "restamp"}),
            None,  # type: ignore[arg-type]  # the channel is the agent's; a worker never sees it
        )
    ],
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches=st.lists(st.lists(line, max_size=12), max_size=6))
def test_a_parse_worker_makes_one_valid_datadog_log_of_every_event(batches: list[list[bytes]]) -> None:
    """What a worker answers for any input: per event exactly one log, valid JSON, an object,
    within max_event_bytes. An exception there would stop the agent, so nothing may raise."""
    feed = parse_worker.WorkerFeed(WORKER_FEED_SETUP)
    count = 0
    logs: list[bytes] = []
    for batch in [*batches, None]:
        events = feed.processor.flush(RECEIVED, True) if batch is None else feed.processor.parse(batch, None, RECEIVED)
        _held, emitted, routed = feed.parsed(events, RECEIVED)
        count += emitted
        for _route, ndjson, stamps in routed:
            lines = ndjson.split(b"\n")
            assert lines.pop() == b"" and len(lines) == len(stamps)
            logs += lines
    assert len(logs) == count
    for log in logs:
        assert len(log) <= 8192
        doc = orjson.loads(log)
        assert isinstance(doc, dict) and isinstance(doc["message"], str) and doc["ddsource"] == "nodejs"
        assert doc["file"] == "/var/log/fuzz.log" or "file" in doc.get("shipper.dropped_fields", [])
