"""A destination that accepts part of a request: the rest is rejected for good or sent again.

`PartialSink` answers as Loki (a partial 400 or 429) and CloudWatch (rejectedLogEventsInfo) do,
per event by index: an event whose message says `old` is refused for good, one that says `busy` is
asked for again the first times it is sent, the others are accepted. Events go through a real
AckTracker, Channel and SinkDriver.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Literal

import orjson
import pytest

from shipper import metrics
from shipper.config import DeadLetterConfig, SinkConfig
from shipper.encoding import json_array_of
from shipper.event import Encoded, Event
from shipper.pipeline.channel import Channel
from shipper.pipeline.deadletter import KEY, DeadLetters
from shipper.pipeline.driver import SinkDriver
from shipper.sink import BatchLimits, Outcome, Rejection, Request, Sink
from tests.driving import deliver


class PartialConfig(SinkConfig):
    type: Literal["partial"] = "partial"


class PartialSink(Sink):
    """Accepts, rejects for good (`old`) or asks again (`busy`, `busy_times` times) per event."""

    limits = BatchLimits(max_events=50, max_bytes=1 << 20, timeout=0.01)

    def __init__(self, name: str, busy_times: int = 2, retry_after: float | None = None) -> None:
        retry = {"initial_backoff": 0.001, "max_backoff": 0.002}
        super().__init__(name, PartialConfig(inputs=["app"], retry=retry))
        self.busy_left: Counter[int] = Counter()
        self.busy_times = busy_times
        self.retry_after = retry_after
        self.accepted: list[int] = []  # ids, in the order accepted: a duplicate would show twice
        self.sent_at: list[tuple[float, list[int]]] = []  # when each request came, with its ids

    def encode(self, events: list[Event]) -> list[Request]:
        return [Request(json_array_of(events), events)]

    async def send(self, request: Request) -> Outcome:
        logs = orjson.loads(request.body)
        self.sent_at.append((time.monotonic(), [log["id"] for log in logs]))
        rejected: list[Rejection] = []
        resend: list[int] = []
        for index, doc in enumerate(logs):
            if "old" in doc["message"]:
                rejected.append(Rejection(index, "too_old", f"entry {doc['id']} has timestamp too old"))
            elif "busy" in doc["message"] and self.busy_left[doc["id"]] < self.busy_times:
                self.busy_left[doc["id"]] += 1
                resend.append(index)
            else:
                self.accepted.append(doc["id"])
        reason = "per_stream_rate_limit" if resend else ""
        return Outcome("delivered", reason, self.retry_after if resend else None, rejected=rejected, resend=resend)


def logs(ids: range) -> list[Event]:
    kinds = ("ok", "old", "busy", "ok busy")
    return [Encoded({"source": "app"}, orjson.dumps({"id": i, "message": f"{kinds[i % 4]} {i}"}), None) for i in ids]


def sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_accepted_and_resent_events_arrive_once_the_rejected_are_counted_and_the_checkpoint_ends() -> None:
    sink = PartialSink("partial-once")
    driver = SinkDriver(sink, Channel(sink.name, 1 << 30, "block"))
    sent = sample("shipper_events_sent_total", sink=sink.name)
    too_old = sample("shipper_events_dropped_total", sink=sink.name, reason="too_old")
    retries = sample("shipper_retries_total", sink=sink.name, reason="per_stream_rate_limit")
    chunks = [logs(range(n, n + 10)) for n in range(0, 100, 10)]
    commits = await deliver(driver, chunks)
    wanted = [i for i in range(100) if i % 4 != 1]
    assert sorted(sink.accepted) == wanted  # every accepted and resent event exactly once
    assert sample("shipper_events_sent_total", sink=sink.name) - sent == len(wanted)
    assert sample("shipper_events_dropped_total", sink=sink.name, reason="too_old") - too_old == 25
    assert commits[-1] == len(chunks) and commits == sorted(commits)
    # Only the events asked for were sent again: no accepted or rejected event went twice.
    sends = Counter(i for _, ids in sink.sent_at for i in ids)
    assert {i for i, n in sends.items() if n > 1} == {i for i in range(100) if i % 4 in (2, 3)}
    assert all(sends[i] == 3 for i in range(100) if i % 4 in (2, 3))  # asked again twice, accepted the third time
    assert sample("shipper_retries_total", sink=sink.name, reason="per_stream_rate_limit") - retries > 0
    assert not driver.inflight and not driver.failed


async def test_events_asked_for_again_wait_the_retry_after_the_destination_gave() -> None:
    sink = PartialSink("partial-wait", busy_times=1, retry_after=0.3)
    driver = SinkDriver(sink, Channel(sink.name, 1 << 30, "block"))
    await deliver(driver, [logs(range(4))])
    (first, ids), (again, resent) = sink.sent_at
    assert ids == [0, 1, 2, 3] and resent == [2, 3]
    assert again - first >= 0.3


async def test_a_partial_outcome_naming_an_event_outside_its_request_holds_the_batch_and_stops() -> None:
    """A sink's bug, not the destination's answer: nothing counted, the checkpoint held, the agent told."""

    class Confused(PartialSink):
        async def send(self, request: Request) -> Outcome:
            return Outcome("delivered", resend=[len(request.events)])

    failures: list[bool] = []
    sink = Confused("partial-bug")
    driver = SinkDriver(sink, Channel(sink.name, 1 << 30, "block"), on_failure=lambda: failures.append(True))
    sent = sample("shipper_events_sent_total", sink=sink.name)
    commits = await deliver(driver, [logs(range(3))])
    assert failures == [True] and commits == [] and len(driver.failed) == 3
    assert sample("shipper_events_sent_total", sink=sink.name) == sent


def test_only_a_delivered_outcome_names_events() -> None:
    with pytest.raises(ValueError, match="only a delivered outcome"):
        Outcome("retry", rejected=[Rejection(0, "too_old")])


async def test_events_rejected_one_by_one_are_parked_with_their_own_reason_and_detail(tmp_path: Path) -> None:
    sink = PartialSink("partial-parked", busy_times=1)
    path = tmp_path / "partial.ndjson"
    driver = SinkDriver(
        sink, Channel(sink.name, 1 << 30, "block"), dead_letters=DeadLetters(sink.name, DeadLetterConfig(path=path))
    )
    await deliver(driver, [logs(range(8))])
    letters = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(letter["id"], letter[KEY]["reason"], letter[KEY]["detail"]) for letter in letters] == [
        (1, "too_old", "entry 1 has timestamp too old"),
        (5, "too_old", "entry 5 has timestamp too old"),
    ]
