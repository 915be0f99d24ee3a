"""Every path through delivery releases each ack exactly once, or stops the agent loudly.

A fake sink answers each request from the behaviours of the events in it (deliver, retry, turn
unhealthy, raise, ask for a split, reject, fail to encode, or a partial answer: accept some, reject
some for good, ask for some again) and keeps a ledger of how each event was resolved. Chunks with
their own acks from a real AckTracker go through a real Channel and SinkDriver; the checkpoint must
only ever move over resolved chunks, always reach the end, and the driver's metrics must count each
event exactly once; each event dropped is in the dead-letter file once, with its reason.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper import metrics
from shipper.config import DeadLetterConfig, SinkConfig
from shipper.event import Event
from shipper.lines import Lines
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.deadletter import KEY, DeadLetters
from shipper.pipeline.driver import SinkDriver
from shipper.pipeline.spill import SpillLog
from shipper.sink import BatchLimits, Outcome, Rejection, Request, Sink

# How a request holding an event is answered. The transient ones (retry, unhealthy, raise) are
# answered that many times before the event lets the request through; `poison` makes `encode`
# raise for any list of at most that many events holding it (so on the split path too); `bug`
# makes `send` return what no sink may (a bug the driver cannot classify), outside the property.
# In a request otherwise delivered, `invalid` is rejected by index and `resend` is asked for again
# that many times: a partial answer, mixing per-event results in one request.
Behaviour = tuple[str, int]
TRANSIENT = ("retry", "unhealthy", "raise")
DROP_REASONS = ("encode_error", "payload_too_large", "http_400", "invalid")
REQUEST_EVENTS = 3  # encode cuts a batch (at most 4 events) into requests of at most this many


class FakeConfig(SinkConfig):
    type: Literal["fake"] = "fake"


class FakeSink(Sink):
    limits = BatchLimits(max_events=4, max_bytes=1 << 20, timeout=0.01)

    def __init__(self, behaviour: dict[int, Behaviour], concurrency: int = 2) -> None:
        retry = {"initial_backoff": 0.001, "max_backoff": 0.002}
        super().__init__("fake", FakeConfig(inputs=["app"], concurrency=concurrency, retry=retry))
        self.behaviour = behaviour
        self.answers_left = {i: n for i, (kind, n) in behaviour.items() if kind in TRANSIENT}
        self.resends_left = {i: n for i, (kind, n) in behaviour.items() if kind == "resend"}
        self.ledger: dict[int, list[str]] = defaultdict(list)  # event id -> how it was resolved
        self.sends = 0

    def _resolve(self, ids: list[int], how: str) -> None:
        for i in ids:
            self.ledger[i].append(how)

    def encode(self, events: list[Event]) -> list[Request]:
        ids = [ident(e) for e in events]
        if any(self.behaviour[i][0] == "poison" and len(ids) <= self.behaviour[i][1] for i in ids):
            self._resolve(ids, "encode_error")
            raise ValueError("cannot encode")
        return [Request(b"", events[n : n + REQUEST_EVENTS]) for n in range(0, len(events), REQUEST_EVENTS)]

    async def send(self, request: Request) -> Outcome:
        self.sends += 1
        await asyncio.sleep(0)  # a real suspension, so concurrent batches interleave
        ids = [ident(e) for e in request.events]
        for i in ids:
            kind = self.behaviour[i][0]
            if kind == "bug":
                return None  # type: ignore[return-value]
            if self.answers_left.get(i):
                self.answers_left[i] -= 1
                if kind == "raise":
                    raise RuntimeError("send failed")
                if kind == "unhealthy":
                    return Outcome("unhealthy", reason="http_403")
                return Outcome("retry", reason="http_503", retry_after=0)
        kinds = {self.behaviour[i][0] for i in ids}
        if "huge" in kinds or ("split" in kinds and len(ids) > 1):
            if len(ids) == 1:
                self._resolve(ids, "payload_too_large")  # the driver drops a single event it cannot split
            return Outcome("split", reason="payload_too_large")
        if "reject" in kinds:
            self._resolve(ids, "http_400")
            return Outcome("reject", reason="http_400")
        invalid = [n for n, i in enumerate(ids) if self.behaviour[i][0] == "invalid"]
        resend = [n for n, i in enumerate(ids) if self.resends_left.get(i)]
        for n in resend:
            self.resends_left[ids[n]] -= 1
        self._resolve([ids[n] for n in invalid], "invalid")
        self._resolve([i for n, i in enumerate(ids) if n not in invalid and n not in resend], "sent")
        rejected = [Rejection(n, "invalid", f"event {ids[n]} is invalid") for n in invalid]
        return Outcome("delivered", reason="http_429" if resend else "", rejected=rejected, resend=resend)


def ident(event: Event) -> int:
    """An event's id: in its fields, or in its raw bytes for a prepared log (`Lines`)."""
    return int(event.fields["id"] if "id" in event.fields else orjson.loads(event.raw)["id"])


def sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def counts(sink: str) -> Counter[str]:
    """The driver's metrics: events sent, and dropped by reason."""
    out = Counter({"sent": int(sample("shipper_events_sent_total", sink=sink))})
    for reason in DROP_REASONS:
        out[reason] = int(sample("shipper_events_dropped_total", sink=sink, reason=reason))
    return out


@dataclass
class Run:
    """One scenario through a real tracker, channel and driver, and what it left behind."""

    chunks: list[list[Behaviour]]
    concurrency: int = 2
    dead_letter: Path | None = None  # the dead-letter file, when the sink has one
    sink: FakeSink = field(init=False)
    driver: SinkDriver = field(init=False)
    chunk_ids: list[list[int]] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # commits past an unresolved event
    failures: int = 0  # on_failure calls
    as_lines: bool = False  # each chunk arrives as prepared logs (shipper/lines.py), as from a parse worker

    def __post_init__(self) -> None:
        behaviour: dict[int, Behaviour] = {}
        for chunk in self.chunks:
            ids = list(range(len(behaviour), len(behaviour) + len(chunk)))
            behaviour.update(zip(ids, chunk, strict=True))
            self.chunk_ids.append(ids)
        self.sink = FakeSink(behaviour, self.concurrency)
        dead_letters = DeadLetters("fake", DeadLetterConfig(path=self.dead_letter)) if self.dead_letter else None
        channel = Channel(self.sink.name, 1 << 30, "block")
        self.driver = SinkDriver(self.sink, channel, on_failure=self._failed, dead_letters=dead_letters)

    def _failed(self) -> None:
        self.failures += 1

    def _committed(self, position: int) -> None:
        unresolved = [i for ids in self.chunk_ids[:position] for i in ids if not self.sink.ledger.get(i)]
        if unresolved:
            self.violations.append(f"committed {position} with events {unresolved} unresolved")
        self.commits.append(position)

    async def fill(self) -> None:
        """Queue every chunk, each with its own ack, as the router does."""
        tracker = AckTracker(self._committed)
        for position, ids in enumerate(self.chunk_ids, start=1):
            events = [Event({"message": f"event {i}", "id": i}, orjson.dumps({"id": i})) for i in ids]
            ack = tracker.open(position)
            ack.add(len(events))
            if self.as_lines:
                lines = Lines.of((bytearray(b"".join(e.raw + b"\n" for e in events)), [(i, "s") for i in ids]), {})
                await self.driver.channel.put(Part(lines, ack, lines.wire, lines.wire))
            else:
                await self.driver.channel.put(Part(events, ack, sum(e.size for e in events)))
            ack.done()  # the opener's hold


def run_loop(scenario: Callable[[], Any]) -> list[dict[str, Any]]:
    """Run `scenario()` on a fresh loop; the errors the loop reported, such as "Task exception was
    never retrieved" (collected before the loop closes, so a dead task cannot slip past)."""
    reported: list[dict[str, Any]] = []
    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(lambda loop, context: reported.append(context))
        runner.run(scenario())
        gc.collect()
    return reported


transient = st.tuples(st.sampled_from(TRANSIENT), st.integers(1, 3))
behaviours = st.one_of(
    st.just(("ok", 0)),
    transient,
    st.tuples(st.sampled_from(["split", "huge", "reject", "invalid"]), st.just(0)),
    st.tuples(st.just("resend"), st.integers(1, 3)),
    st.tuples(st.just("poison"), st.integers(1, 4)),  # 4: the whole batch; less: only once split
)
chunk_lists = st.lists(st.lists(behaviours, min_size=1, max_size=5), min_size=1, max_size=6)


@settings(max_examples=80, deadline=None)
@given(chunks=chunk_lists, concurrency=st.integers(1, 3), as_lines=st.booleans())
def test_every_event_is_resolved_once_and_the_checkpoint_follows_only_resolved_chunks(
    chunks: list[list[Behaviour]], concurrency: int, as_lines: bool
) -> None:
    """Events as objects, or prepared logs as they arrive from a worker (cut across batches as bytes)."""
    with tempfile.TemporaryDirectory() as state:
        run = Run(chunks, concurrency, Path(state) / "dead.ndjson", as_lines=as_lines)
        before = counts("fake")

        async def scenario() -> None:
            await run.fill()
            run.driver.channel.close()
            await asyncio.wait_for(run.driver.run(), 20)

        reported = run_loop(scenario)
        letters = run.dead_letter.read_bytes().splitlines() if run.dead_letter and run.dead_letter.exists() else []
    assert not reported, reported
    assert not run.violations
    assert run.commits == sorted(set(run.commits)) and run.commits[-1] == len(chunks)
    every = [i for ids in run.chunk_ids for i in ids]
    assert {i: len(run.sink.ledger[i]) for i in every} == dict.fromkeys(every, 1)  # each resolved exactly once
    ledger = Counter(how for hows in run.sink.ledger.values() for how in hows)
    assert counts("fake") - before == ledger  # and counted once, sent or dropped with its reason
    assert run.failures == 0 and not run.driver.failed and not run.driver.inflight
    parked = Counter((doc["id"], doc[KEY]["reason"]) for doc in map(orjson.loads, letters))
    dropped = Counter((i, hows[0]) for i, hows in run.sink.ledger.items() if hows != ["sent"])
    assert parked == dropped  # every event dropped is parked once, with its reason


def test_a_bug_in_delivery_holds_the_checkpoint_and_reports_the_failure(caplog: pytest.LogCaptureFixture) -> None:
    """Not an encoder, not a send: an outcome the driver cannot handle. It must neither stall
    silently nor acknowledge the batch: it is logged, held back, and the agent told to stop."""
    run = Run([[("ok", 0)] * 4, [("bug", 0)] + [("ok", 0)] * 3, [("ok", 0)] * 4], concurrency=1)
    before = counts("fake")

    async def scenario() -> None:
        await run.fill()
        run.driver.channel.close()
        await asyncio.wait_for(run.driver.run(), 10)

    with caplog.at_level(logging.ERROR, "shipper.driver"):
        reported = run_loop(scenario)
    assert not reported, reported
    assert run.failures == 1
    assert sorted(ident(e) for e in run.driver.failed) == run.chunk_ids[1]
    assert run.commits == [1]  # chunk 3 was delivered, but the checkpoint stays before chunk 2
    assert (counts("fake") - before)["sent"] == 8
    assert any("failed unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records)


def test_cancelling_the_driver_holds_every_ack_and_stops_every_delivery() -> None:
    """The shutdown deadline: a batch retrying and one waiting for a free slot are both cut off.
    Nothing is acknowledged, nothing goes on sending, and every event is left to account for once."""
    run = Run([[("retry", 10**6)] * 4, [("ok", 0)] * 4], concurrency=1)
    unsent: list[int] = []

    async def scenario() -> None:
        await run.fill()
        runner = asyncio.create_task(run.driver.run())
        while run.sink.sends < 3:  # the first batch is retrying; the second waits for the slot
            await asyncio.sleep(0.01)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        sends = run.sink.sends
        run.sink.answers_left.clear()  # the destination recovers: a delivery still running would finish
        await asyncio.sleep(0.1)
        assert run.sink.sends == sends
        unsent.extend(ident(e) for e in run.driver.unsent())

    assert not run_loop(scenario)
    assert run.commits == []
    assert sorted(unsent) == list(range(8))  # each event once: the batch in flight, the one held back


@pytest.mark.parametrize("spill", [False, True], ids=["no-disk-buffer", "disk-buffer"])
async def test_the_agent_exits_1_when_a_delivery_dies_and_keeps_or_counts_what_stdin_left(
    tmp_path: Path, spill: bool
) -> None:
    """A delivery that dies of a bug stops the agent with exit 1. What stdin handed it cannot be read
    again: written to the sink's disk buffer for the next run, or, without one, counted as lost."""
    from shipper.agent import EXIT_FAILED, Agent
    from shipper.config import parse_config

    config = parse_config(
        f'[agent]\nstate_dir = "{tmp_path}"\n[sources.api]\ntype = "stdin"\n'
        f'[sinks.out]\ntype = "file"\ninputs = ["api"]\npath = "{tmp_path}/out.ndjson"\n'
        'batch = { timeout = "10ms" }\n' + ("" if spill else "buffer = { spill_max_bytes = 0 }\n"),
        None,
        {},
    )
    agent = Agent(config)

    async def feed_then_wait() -> None:  # stdin that never ends: only the failure can stop the agent
        feed = agent.contexts["api"].open_feed()
        await feed.push(b'{"level":30,"msg":"a"}\n{"level":30,"msg":"b"}\n')
        await feed.flush(force=True)
        await agent.stopping.wait()

    async def broken_send(request: Request) -> Outcome:
        return None  # type: ignore[return-value]

    agent.sources["api"].run = feed_then_wait  # type: ignore[method-assign]
    agent.drivers["out"].sink.send = broken_send  # type: ignore[method-assign]
    before = sample("shipper_events_dropped_total", sink="out", reason="delivery_error")
    assert await asyncio.wait_for(agent.run(), 10) == EXIT_FAILED
    dropped = sample("shipper_events_dropped_total", sink="out", reason="delivery_error") - before
    if not spill:
        assert dropped == 2
        return
    assert dropped == 0
    spill_log = SpillLog("out", tmp_path / "buffers" / "out", 1 << 20)
    spill_log.open()
    record = spill_log.read()
    assert record is not None
    assert [orjson.loads(event.raw)["message"] for event in record[0]] == ["a", "b"]
    spill_log.close()
