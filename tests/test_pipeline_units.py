"""Acks, routing, channels and the sink driver, exercised in-process with a scripted sink."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import orjson
import pytest

from shipper import metrics
from shipper.config import SinkConfig, WhenConfig, config_from_dict
from shipper.event import Event, memory_size
from shipper.parsing import build_processor
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.driver import SinkDriver
from shipper.pipeline.feed import LineFeed
from shipper.pipeline.routing import Routing
from shipper.sink import DELIVERED, BatchLimits, Outcome, Request, Sink
from shipper.source import SourceContext
from shipper.when import compile_when
from shipper.workers import SinkRoute
from sinks import build_sink
from tests.conftest import CORPUS, needs_corpus
from tests.driving import one_sink_context, parse_worker


def event(message: str, level: str = "info", **fields: object) -> Event:
    return Event({"message": message, "level": level, **fields}, message.encode())


def sample(metric: object, **labels: str) -> float:
    value = metrics.registry.get_sample_value(metric, labels)  # type: ignore[arg-type]
    return value or 0.0


# ------------------------------------------------------------------------------------- acks


def test_checkpoint_moves_only_over_contiguous_prefix() -> None:
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    acks = [tracker.open(position) for position in (100, 200, 300)]
    for ack in acks:
        ack.add(2)
        ack.done()  # the opener's hold
    acks[2].done(2)
    acks[1].done(2)
    assert commits == [] and tracker.committed is None  # chunk 1 still outstanding
    acks[0].done(1)
    assert commits == []
    acks[0].done(1)
    assert commits == [300] and tracker.outstanding == 0


def test_chunk_with_no_routed_events_commits_in_order() -> None:
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    first = tracker.open(10)
    first.add(1)
    first.done()
    tracker.open(20).done()  # nothing routed: complete at once, but behind `first`
    assert commits == []
    first.done()
    assert commits == [20]


# ------------------------------------------------------------------------------------ router


def test_when_filters() -> None:
    level = compile_when(WhenConfig(level="warn"))
    assert level is not None
    assert [level(event("x", lv)) for lv in ("debug", "info", "warn", "error")] == [False, False, True, True]
    nested = compile_when(WhenConfig(equals={"res.statusCode": 500, "context": "ExceptionsHandler"}))
    assert nested is not None
    assert nested(event("x", res={"statusCode": 500}, context="ExceptionsHandler"))
    assert not nested(event("x", res={"statusCode": 200}, context="ExceptionsHandler"))
    assert not nested(event("x", context="ExceptionsHandler"))
    regex = compile_when(WhenConfig(matches={"message": "time(d)?out", "req.url": "^/api"}))
    assert regex is not None
    assert regex(event("upstream timedout", req={"url": "/api/x"}))
    assert not regex(event("upstream timedout", req={"url": "/health"}))
    assert compile_when(None) is None


def test_routing_gives_each_sink_its_share_by_when_in_its_wire_form() -> None:
    """One routing path: each route's share by its `when`, prepared by its sink's preparer (as
    NDJSON) or, for a sink without one, the events themselves; a route that takes none is left out."""
    fields_json = ("shipper.encoding:FieldsJson", {})
    errors, fatal = WhenConfig(level="error"), WhenConfig(level="fatal")
    routing = Routing.build([(None, "all", fields_json), (errors, "errors", None), (fatal, "fatal", None)])
    events = [event("a"), event("b", "error"), event("c", "error")]
    shares = routing.split(events)
    assert [index for index, _ in shares] == [0, 1]
    lines, stamps = shares[0][1]  # type: ignore[misc]
    assert [orjson.loads(line)["message"] for line in lines.splitlines()] == ["a", "b", "c"] and stamps is None
    assert shares[1][1] == events[1:]


async def test_a_line_feed_puts_one_ack_unit_per_event_per_sink(tmp_path: Path) -> None:
    everything, errors = Channel("all", 1 << 20, "block"), Channel("errors", 1 << 20, "block")
    table = {"sources": {"app": {"type": "stdin"}}, "sinks": {"all": {"type": "console", "inputs": ["app"]}}}
    config = config_from_dict(table, environ={})
    context = SourceContext(
        "app", config.sources["app"], host="h", redact=config.redact, state_dir=tmp_path, stopping=asyncio.Event(),
        routes=[SinkRoute("all", None, None, everything), SinkRoute("errors", WhenConfig(level="error"), None, errors)],
    )  # fmt: skip
    commits: list[int] = []
    feed = context.open_feed(on_commit=commits.append)
    await feed.push(b'{"level":30,"msg":"a"}\n{"level":50,"msg":"b"}\n{"level":60,"msg":"c"}\n', end_offset=69)
    assert everything.nevents == 3 and errors.nevents == 2
    parts = [await everything.get(0), await errors.get(0)]
    assert commits == []
    for part in parts:
        assert part is not None
        part.ack.done(len(part.events))
    assert commits == [69]  # once every sink released every event


# ----------------------------------------------------------------------------------- channel


async def test_channel_blocks_when_full_and_admits_one_oversized_part() -> None:
    channel = Channel("c", 100, "block")
    tracker = AckTracker()
    await channel.put(Part([event("big")], tracker.open(1), 500))  # empty channel: admitted
    blocked = asyncio.create_task(channel.put(Part([event("next")], tracker.open(2), 10)))
    await asyncio.sleep(0.05)
    assert not blocked.done() and channel.nevents == 1
    await channel.get(0)
    await asyncio.wait_for(blocked, 1)
    assert channel.nevents == 1


async def test_a_backlog_filling_the_buffer_again_and_again_warns_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A file read from its start fills a small buffer many times a second: that is backpressure
    working, said once (then once a minute, with how many times it was not said)."""
    channel = Channel("backlog", 100, "block")
    tracker = AckTracker()
    with caplog.at_level(logging.WARNING, logger="shipper.channel"):
        for number in range(5):
            await channel.put(Part([event(f"a{number}")], tracker.open(number), 90))
            blocked = asyncio.create_task(channel.put(Part([event(f"b{number}")], tracker.open(number), 90)))
            await asyncio.sleep(0.01)
            assert not blocked.done()  # full: the source waits
            await channel.get(0)
            await asyncio.wait_for(blocked, 1)
            await channel.get(0)
    warned = [record for record in caplog.records if "sink buffer full" in record.getMessage()]
    assert len(warned) == 1 and warned[0].getMessage() == "sink buffer full: pausing the source"


async def test_channel_drop_newest_counts_and_acks() -> None:
    channel = Channel("dropper", 100, "drop_newest")
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    before = sample("shipper_events_dropped_total", sink="dropper", reason="buffer_full")
    first, second = tracker.open(1), tracker.open(2)
    first.add(1)
    await channel.put(Part([event("kept")], first, 90))
    second.add(2)
    await channel.put(Part([event("x"), event("y")], second, 90))
    first.done()
    second.done()
    assert channel.nevents == 1
    assert sample("shipper_events_dropped_total", sink="dropper", reason="buffer_full") - before == 2
    assert commits == []  # the kept part is not delivered yet, so nothing moves
    await channel.get(0)
    first.done()
    assert commits == [2]


# ------------------------------------------------------------------------------------ driver


class ScriptedConfig(SinkConfig):
    type: Literal["scripted"] = "scripted"


class ScriptedSink(Sink):
    """Answers each request with the next outcome from a script (then delivers)."""

    limits = BatchLimits(max_events=10, max_bytes=10_000, timeout=0.05)

    def __init__(self, script: Callable[[Request], Outcome], **settings: object) -> None:
        retry = {"initial_backoff": 0.01, "max_backoff": 0.05}
        super().__init__("scripted", ScriptedConfig(inputs=["x"], retry=retry, **settings))
        self.script = script
        self.requests: list[list[str]] = []
        self.delivered: list[str] = []

    def encode(self, events: list[Event]) -> list[Request]:
        return [Request(b"", events)]

    async def send(self, request: Request) -> Outcome:
        messages = [e.fields["message"] for e in request.events]
        self.requests.append(messages)  # type: ignore[arg-type]
        outcome = self.script(request)
        if outcome.kind == "delivered":
            self.delivered.extend(messages)  # type: ignore[arg-type]
        return outcome


async def drive(sink: ScriptedSink, batches: list[list[Event]], timeout: float = 5) -> list[int]:
    channel = Channel(sink.name, 1 << 20, "block")
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    driver = SinkDriver(sink, channel)
    runner = asyncio.create_task(driver.run())
    for position, events in enumerate(batches, start=1):
        ack = tracker.open(position)
        ack.add(len(events))
        await channel.put(Part(events, ack, sum(e.size for e in events)))
        ack.done()
    channel.close()
    await asyncio.wait_for(runner, timeout)
    return commits


async def test_batches_respect_max_events_and_commit_after_delivery() -> None:
    sink = ScriptedSink(lambda request: DELIVERED)
    commits = await drive(sink, [[event(f"m{i}") for i in range(25)], [event("last")]])
    assert all(len(r) <= 10 for r in sink.requests)
    assert sink.delivered == [f"m{i}" for i in range(25)] + ["last"]
    assert commits[-1] == 2


async def test_batch_timeout_flushes_a_small_batch() -> None:
    sink = ScriptedSink(lambda request: DELIVERED)
    channel = Channel(sink.name, 1 << 20, "block")
    driver = SinkDriver(sink, channel)
    runner = asyncio.create_task(driver.run())
    ack = AckTracker().open(1)
    ack.add(1)
    await channel.put(Part([event("lonely")], ack, 70))
    await asyncio.sleep(0.3)
    assert sink.delivered == ["lonely"]  # sent by age, not by size; the channel is still open
    channel.close()
    await asyncio.wait_for(runner, 2)


async def first_request(sink: ScriptedSink, parts: list[list[Event]], gap: float) -> list[list[str]]:
    """Parts put `gap` seconds apart into a running driver's open channel; the requests made by
    the time the first one came (waiting at most 10 s), the channel still open then."""
    channel = Channel(sink.name, 1 << 20, "block")
    runner = asyncio.create_task(SinkDriver(sink, channel).run())
    tracker = AckTracker()
    for position, events in enumerate(parts, start=1):
        ack = tracker.open(position)
        ack.add(len(events))
        await channel.put(Part(events, ack, memory_size(events)))
        await asyncio.sleep(gap)
    waited = 0.0
    while not sink.requests and waited < 10:
        await asyncio.sleep(0.02)
        waited += 0.02
    made = list(sink.requests)
    channel.close()
    await asyncio.wait_for(runner, 2)
    return made


async def test_a_batch_leaves_when_its_input_pauses_not_a_whole_timeout_later() -> None:
    sink = ScriptedSink(lambda request: DELIVERED, batch={"timeout": "60s", "idle": "100ms"})
    started = time.monotonic()
    assert await first_request(sink, [[event("burst-1"), event("burst-2")]], 0) == [["burst-1", "burst-2"]]
    assert time.monotonic() - started < 10  # the batch far from full, its timeout far off


async def test_a_batch_keeps_filling_while_input_flows() -> None:
    sink = ScriptedSink(lambda request: DELIVERED, batch={"timeout": "60s", "idle": "1s"})
    parts = [[event(f"m{number}")] for number in range(6)]  # a part every 50 ms: never a pause of `idle`
    assert await first_request(sink, parts, 0.05) == [[f"m{number}" for number in range(6)]]


async def test_split_halves_down_to_single_events() -> None:
    def too_large_above_two(request: Request) -> Outcome:
        return Outcome("split", reason="payload_too_large") if len(request.events) > 2 else DELIVERED

    sink = ScriptedSink(too_large_above_two)
    await drive(sink, [[event(f"m{i}") for i in range(7)]])
    assert sorted(sink.delivered) == sorted(f"m{i}" for i in range(7))


async def test_single_event_too_large_is_dropped_with_reason() -> None:
    sink = ScriptedSink(
        lambda r: (
            Outcome("split", reason="payload_too_large")
            if any(e.fields["message"] == "huge" for e in r.events)
            else DELIVERED
        )
    )
    before = sample("shipper_events_dropped_total", sink="scripted", reason="payload_too_large")
    commits = await drive(sink, [[event("a"), event("huge"), event("b")]])
    assert sorted(sink.delivered) == ["a", "b"]
    assert sample("shipper_events_dropped_total", sink="scripted", reason="payload_too_large") - before == 1
    assert commits == [1]  # a deliberate, counted drop still lets the checkpoint move


async def test_retry_honours_retry_after_then_delivers() -> None:
    answers = iter([Outcome("retry", reason="http_429", retry_after=0.3), Outcome("retry", reason="http_503")])
    sink = ScriptedSink(lambda request: next(answers, DELIVERED))
    started = time.monotonic()
    await drive(sink, [[event("x")]])
    assert sink.delivered == ["x"] and len(sink.requests) == 3
    assert time.monotonic() - started >= 0.3  # waited as long as the destination asked


async def test_unhealthy_keeps_data_until_fixed() -> None:
    state = {"key_fixed": False}
    sink = ScriptedSink(lambda r: DELIVERED if state["key_fixed"] else Outcome("unhealthy", reason="http_403"))
    channel = Channel(sink.name, 1 << 20, "block")
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    driver = SinkDriver(sink, channel)
    runner = asyncio.create_task(driver.run())
    ack = tracker.open(1)
    ack.add(1)
    await channel.put(Part([event("precious")], ack, 70))
    ack.done()
    await asyncio.sleep(0.3)
    assert not driver.healthy and commits == [] and sink.delivered == []
    assert sample("shipper_sink_healthy", sink="scripted") == 0
    state["key_fixed"] = True
    channel.close()
    await asyncio.wait_for(runner, 2)
    assert sink.delivered == ["precious"] and commits == [1] and driver.healthy


async def test_reject_drops_with_reason_and_commits() -> None:
    sink = ScriptedSink(lambda r: Outcome("reject", reason="http_400", detail="bad"))
    before = sample("shipper_events_dropped_total", sink="scripted", reason="http_400")
    commits = await drive(sink, [[event("a"), event("b")]])
    assert sample("shipper_events_dropped_total", sink="scripted", reason="http_400") - before == 2
    assert commits == [1]


async def test_a_failing_batch_holds_back_the_checkpoint_of_later_ones() -> None:
    state = {"fail": True}

    def fail_first(request: Request) -> Outcome:
        if request.events[0].fields["message"] == "first" and state["fail"]:
            return Outcome("retry", reason="http_503")
        return DELIVERED

    sink = ScriptedSink(fail_first)
    channel = Channel(sink.name, 1 << 20, "block")
    commits: list[int] = []
    tracker = AckTracker(commits.append)
    runner = asyncio.create_task(SinkDriver(sink, channel).run())
    for position, message in ((1, "first"), (2, "second")):
        ack = tracker.open(position)
        ack.add(10)
        await channel.put(Part([event(message)] * 10, ack, 700))
        ack.done()
    await asyncio.sleep(0.3)
    assert "second" in sink.delivered and commits == []
    state["fail"] = False
    channel.close()
    await asyncio.wait_for(runner, 2)
    assert commits == [2]


def test_batch_limits_above_destination_limits_are_config_errors() -> None:
    from shipper.errors import ConfigError
    from shipper.pipeline.driver import batch_limits

    sink = ScriptedSink(lambda r: DELIVERED)
    sink.config = ScriptedConfig(inputs=["x"], batch={"max_events": 11})
    with pytest.raises(ConfigError) as info:
        batch_limits(sink)
    assert info.value.key == "sinks.scripted.batch.max_events"


async def test_an_encoding_bug_drops_the_batch_loudly_instead_of_stalling_the_checkpoint() -> None:
    class BrokenEncoder(ScriptedSink):
        def encode(self, events: list[Event]) -> list[Request]:
            if any(e.fields["message"] == "poison" for e in events):
                raise ValueError("bug")
            return super().encode(events)

    sink = BrokenEncoder(lambda r: DELIVERED)
    before = sample("shipper_events_dropped_total", sink="scripted", reason="encode_error")
    commits = await drive(sink, [[event("poison"), event("innocent bystander")]])
    assert sample("shipper_events_dropped_total", sink="scripted", reason="encode_error") - before == 2
    assert commits == [1]  # counted and logged, and the checkpoint moves on
    assert await drive(sink, [[event("fine")]]) == [1] and sink.delivered == ["fine"]


async def test_an_encoding_bug_on_the_split_path_drops_those_events_and_still_releases_the_acks() -> None:
    """The batch encodes; after a 413 one half does not: that half is dropped with a counted reason,
    the other half is delivered, and the checkpoint moves on (it used to stall for good)."""

    class FailsOnHalves(ScriptedSink):
        def encode(self, events: list[Event]) -> list[Request]:
            if len(events) < 4 and any(e.fields["message"] == "poison" for e in events):
                raise ValueError("bug")
            return super().encode(events)

    sink = FailsOnHalves(lambda r: Outcome("split", reason="payload_too_large") if len(r.events) == 4 else DELIVERED)
    dropped = sample("shipper_events_dropped_total", sink="scripted", reason="encode_error")
    sent = sample("shipper_events_sent_total", sink="scripted")
    commits = await drive(sink, [[event("a"), event("poison"), event("b"), event("c")]])
    assert sorted(sink.delivered) == ["b", "c"]
    assert sample("shipper_events_dropped_total", sink="scripted", reason="encode_error") - dropped == 2
    assert sample("shipper_events_sent_total", sink="scripted") - sent == 2
    assert commits == [1]


async def test_agent_exits_non_zero_when_a_source_dies(tmp_path: Path) -> None:
    from shipper.agent import EXIT_FAILED, Agent
    from shipper.config import parse_config

    config = parse_config(
        f'[agent]\nstate_dir = "{tmp_path}"\n[sources.api]\ntype = "stdin"\n'
        f'[sinks.out]\ntype = "file"\ninputs = ["api"]\npath = "{tmp_path}/out.ndjson"\n',
        None,
        {},
    )
    agent = Agent(config)

    async def broken() -> None:
        raise RuntimeError("source bug")

    agent.sources["api"].run = broken  # type: ignore[method-assign]
    assert await asyncio.wait_for(agent.run(), 10) == EXIT_FAILED


async def test_a_source_that_dies_while_another_runs_stops_the_agent_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file source that keeps running must not hide a dead one: the agent logs it, stops (the
    checkpoints hold) and exits 1 for the supervisor to restart it, instead of running on without it."""
    from shipper.agent import EXIT_FAILED, Agent
    from shipper.config import parse_config

    (tmp_path / "app.log").write_bytes(b"")
    config = parse_config(
        f'[agent]\nstate_dir = "{tmp_path}"\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{tmp_path}/app.log"]\n[sources.other]\ntype = "stdin"\n'
        f'[sinks.out]\ntype = "file"\ninputs = ["api", "other"]\npath = "{tmp_path}/out.ndjson"\n',
        None,
        {},
    )
    agent = Agent(config)
    died = asyncio.Event()

    async def broken_later() -> None:
        await asyncio.sleep(0.2)
        died.set()
        raise RuntimeError("source bug")

    agent.sources["other"].run = broken_later  # type: ignore[method-assign]
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, "shipper.agent"):
        assert await asyncio.wait_for(agent.run(), 10) == EXIT_FAILED
    assert died.is_set() and time.monotonic() - started < 5  # the file source did not keep it running
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["task failed"]


# ------------------------------------------------------------------------------- line feed


def line_feed_into(channel: Channel, state_dir: Path, fields: dict[str, str] | None = None) -> LineFeed:
    """A line feed of a stdin source named `app` whose events all go to `channel`."""
    config = config_from_dict(
        {"sources": {"app": {"type": "stdin"}}, "sinks": {"out": {"type": "console", "inputs": ["app"]}}}, environ={}
    )
    context = SourceContext(
        "app", config.sources["app"], routes=[SinkRoute("out", None, None, channel)], host="h",
        redact=config.redact, state_dir=state_dir, stopping=asyncio.Event(),
    )  # fmt: skip
    return context.open_feed(fields=fields)


async def test_a_source_that_never_waits_still_lets_its_sinks_run_between_chunks(tmp_path: Path) -> None:
    """A file in the page cache reads without ever blocking. Were the sinks to run only when the
    buffer is full, memory would sit at the bound and batches would leave in bursts: each pushed
    chunk must give the consumer a turn."""
    channel = Channel("out", 1 << 30, "block")
    feed = line_feed_into(channel, tmp_path)
    taken: list[int] = []

    async def consume() -> None:
        while (part := await channel.get(None)) is not None:
            taken.append(len(part.events))

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)  # the consumer now waits for its first part
    for chunk in range(5):
        await feed.push(b"".join(b'{"level":30,"time":1,"msg":"m%d"}\n' % (chunk * 100 + i) for i in range(100)))
        assert sum(taken) == 100 * (chunk + 1), "the consumer did not run after this chunk"
    channel.close()
    await consumer


async def test_feed_fields_fill_in_but_never_replace_what_the_application_logged(tmp_path: Path) -> None:
    channel = Channel("out", 1 << 20, "block")
    feed = line_feed_into(channel, tmp_path, fields={"file": "/var/log/api.log"})
    await feed.push(b'{"level":30,"time":1,"msg":"a"}\n{"level":30,"time":2,"msg":"b","file":"users.ts"}\n')
    part = await channel.get(0)
    assert part is not None
    assert [event.fields["file"] for event in part.events] == ["/var/log/api.log", "users.ts"]


@needs_corpus
def test_the_memory_estimate_of_parsed_events_is_close_to_their_real_size() -> None:
    """Buffer bounds are in estimated memory: "32MiB" must not turn out to be 45 MiB for the
    Fastify lines that make up most of a real API's logs (nor be wildly over for Nest's)."""
    config = config_from_dict(
        {"sources": {"app": {"type": "stdin"}}, "sinks": {"out": {"type": "console", "inputs": ["app"]}}}, environ={}
    )
    for path, low, high in ((CORPUS / "fastify-pino.ndjson", 0.9, 1.2), (CORPUS / "nest-text-plain.log", 1.0, 1.6)):
        data = path.read_bytes()
        processor = build_processor("app", config.sources["app"], host="h", redact=config.redact)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            lines = data.split(b"\n")[:-1]  # the raw lines the events keep are part of their cost
            events = processor.parse(lines, "stdout", time.time()) + processor.flush(force=True)
            del lines
            gc.collect()
            actual = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        ratio = memory_size(events) / actual
        assert low <= ratio <= high, f"{path.name}: estimated/actual = {ratio:.2f}"


async def test_a_chunk_of_tiny_lines_reaches_the_buffer_in_bounded_pieces(tmp_path: Path) -> None:
    """A chunk is bounded in bytes, not lines: 1 MiB of 2-byte lines is 524,288 events (~600 MiB
    parsed at once). They must be parsed and queued a piece at a time, each waiting for room, so
    the buffer stays near its bound however short the lines."""
    bound = 4 * 1024 * 1024
    channel = Channel("out", bound, "block")
    feed = line_feed_into(channel, tmp_path)
    sizes: list[int] = []
    peak = 0

    async def consume() -> None:
        nonlocal peak
        while (part := await channel.get(None)) is not None:
            peak = max(peak, channel.nbytes + part.nbytes)
            sizes.append(len(part.events))
            part.ack.done(len(part.events))

    consumer = asyncio.create_task(consume())
    await feed.push(b"x\n" * (512 * 1024))
    await feed.flush(force=True)  # the last line waits to see whether a continuation follows
    channel.close()
    await consumer
    assert sum(sizes) == 512 * 1024
    assert max(sizes) <= LineFeed.PIECE_LINES
    assert peak <= bound + memory_size([Event({"message": "x"}, b"x")]) * LineFeed.PIECE_LINES


async def test_pieces_parsed_in_a_worker_move_the_checkpoint_to_their_exact_line_ends(tmp_path: Path) -> None:
    """Through a parse worker, a chunk split into pieces acks each piece at the byte just past its
    last line: a checkpoint never covers an undelivered line, and the last one is the chunk's end."""
    table = {
        "sources": {"app": {"type": "stdin"}},
        "sinks": {"dd": {"type": "datadog", "inputs": ["app"], "api_key": "k"}},
    }
    config = config_from_dict(table, environ={})
    sink = build_sink("dd", config.sinks["dd"])
    channel = Channel("dd", 1 << 30, "block")
    async with parse_worker() as pool:
        commits: list[int] = []
        feed = one_sink_context(config, "app", sink, channel, tmp_path, pool).open_feed(on_commit=commits.append)
        feed.PIECE_LINES = 7  # type: ignore[misc]
        data = b"".join(b'{"level":30,"time":1795394836241,"msg":"%s"}\n' % (b"m" * (i % 13)) for i in range(100))
        offset = 0
        for cut in (333, 1800, 2900, len(data)):  # reads that end mid-line, as a file's do
            await feed.push(data[offset:cut], end_offset=cut)
            offset = cut
        await feed.flush(force=True)
        delivered = 0
        while channel.nevents:
            part = await channel.get(0)
            assert part is not None
            delivered += len(part.events)
            part.ack.done(len(part.events))
        line_ends = {index + 1 for index, byte in enumerate(data) if byte == ord("\n")}
        assert delivered == 100
        assert commits == sorted(set(commits)) and set(commits) <= line_ends
        assert len(commits) > 4 and commits[-1] == len(data)
