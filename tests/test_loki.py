"""The Loki sink's encoding, framing and reading of Loki's answers, without a server.

What a user would notice: labels and lines as configured, entries ordered per stream with string
nanosecond timestamps, a replayed backlog re-stamped rather than refused, a label set explosion
contained, a partial 400 acted on entry by entry, and config mistakes named with their key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from shipper import tally
from shipper.config import RetryConfig, config_from_dict, parse_config
from shipper.errors import ConfigError
from shipper.event import Encoded, Event
from shipper.parsing import build_processor
from shipper.parsing.clock import format_ms
from shipper.pipeline.channel import Channel
from shipper.pipeline.driver import SinkDriver
from shipper.sink import Request
from sinks import build_sink
from sinks.loki import LokiConfig, LokiSink
from tests.driving import deliver, one_sink_context, parse_worker
from tests.fakes.loki import FakeLoki, LokiLimits

HOUR_NS = 3600 * 1_000_000_000


def loki(**settings: Any) -> LokiSink:
    return LokiSink("loki", LokiConfig(type="loki", inputs=["api"], **{"endpoint": "http://127.0.0.1:1", **settings}))


def event(ms: int, message: str = "hello", level: str = "info", service: str = "api", **fields: Any) -> Event:
    doc = {"timestamp": format_ms(ms), "level": level, "message": message, "service": service, "source": "app"}
    doc.update(fields)
    return Event(doc, orjson.dumps({"time": ms, "msg": message, **fields}))


def now_ms() -> int:
    return int(time.time() * 1000)


def pushed(request: Request) -> list[dict[str, Any]]:
    return list(orjson.loads(request.body)["streams"])


def test_entries_are_grouped_by_stream_and_ordered_with_string_nanosecond_timestamps() -> None:
    base = now_ms() - 60_000
    sink = loki()
    events = [
        event(base + 30, "late info"),
        event(base + 10, "an error", level="error"),
        event(base + 20, "first of two at 20"),
        event(base + 20, "second of two at 20"),
        event(base + 5, "early info"),
    ]
    requests = sink.encode(events)
    assert [len(pushed(r)) for r in requests] == [1, 1]  # one stream a push (see the 429 test below)
    streams = {tuple(sorted(s["stream"].items())): s["values"] for r in requests for s in pushed(r)}
    several = loki(streams_per_push=4).encode(events)
    assert len(several) == 1 and len(pushed(several[0])) == 2
    info = streams[(("level", "info"), ("service", "api"), ("source", "app"))]
    assert [orjson.loads(line)["message"] for _, line in info] == [
        "early info",
        "first of two at 20",
        "second of two at 20",
        "late info",
    ]
    assert all(isinstance(ts, str) and ts.isdigit() for ts, _ in info)
    assert int(info[0][0]) == (base + 5) * 1_000_000
    error = streams[(("level", "error"), ("service", "api"), ("source", "app"))]
    assert [orjson.loads(line)["message"] for _, line in error] == ["an error"]
    # The fields that became labels are not repeated in the line; the rest is.
    line = orjson.loads(info[0][1])
    assert "level" not in line and "service" not in line and "source" not in line
    assert line["timestamp"] == format_ms(base + 5)


def test_equal_timestamps_keep_arrival_order_and_repeated_lines_stay_apart() -> None:
    """Loki stores entries of equal time in no set order and keeps one of two equal entries: a line
    logged twice in a millisecond must arrive twice, in order, also across pushes."""
    sink = loki()
    ms = now_ms()
    events = [event(ms, "retrying"), event(ms, "retrying"), event(ms, "gave up")]
    [first] = sink.encode(events)
    [second] = sink.encode([event(ms, "retrying")])
    values = pushed(first)[0]["values"] + pushed(second)[0]["values"]
    stamps = [int(ts) for ts, _ in values]
    assert [orjson.loads(line)["message"] for _, line in values] == ["retrying", "retrying", "gave up", "retrying"]
    assert stamps == sorted(set(stamps)) and stamps[-1] - stamps[0] < 1_000_000
    assert stamps[0] == ms * 1_000_000


def test_an_entry_within_a_millisecond_of_its_streams_newest_moves_after_it_one_further_behind_keeps_its_time() -> None:
    """Equal times are moved apart in bulk; an entry more than a millisecond behind what was sent
    keeps its own time (Loki takes it: it is within max_behind)."""
    sink = loki()
    ms = now_ms() - 60_000
    [first] = sink.encode([event(ms, "newest")])
    [second] = sink.encode([event(ms, "same time"), event(ms - 5, "5 ms behind"), event(ms + 1, "next")])
    values = pushed(first)[0]["values"] + pushed(second)[0]["values"]
    assert [(int(ts), orjson.loads(line)["message"]) for ts, line in values] == [
        (ms * 1_000_000, "newest"),
        ((ms - 5) * 1_000_000, "5 ms behind"),
        (ms * 1_000_000 + 1, "same time"),
        ((ms + 1) * 1_000_000, "next"),
    ]


def test_lines_arrive_as_logged_whatever_their_strings_hold() -> None:
    """Lines are escaped for the push all at once: quotes, backslashes, escapes and any Unicode
    must come out as they went in."""
    texts = ['say "hi"', "back\\slash \\n not a newline", "line\nbreak\ttab\x01\x7f", "naïve \u2028 日本", '\\"', ""]
    ms = now_ms() - 60_000
    events = [event(ms + i, text, nested={"k": [text]}) for i, text in enumerate(texts)]
    values = [value for request in loki().encode(events) for stream in pushed(request) for value in stream["values"]]
    assert [orjson.loads(line)["message"] for _, line in values] == texts
    assert [orjson.loads(line)["nested"] for _, line in values] == [{"k": [text]} for text in texts]


def test_raw_lines_ship_unchanged_and_structured_metadata_is_templated() -> None:
    sink = loki(line="raw", structured_metadata={"request_id": "{reqId}", "status": "{res.statusCode}"})
    ms = now_ms()
    original = b'{"level":30,"time":%d,"msg":"tab\\there \\u00e9","reqId":"req-7","res":{"statusCode":404}}' % ms
    fields = {"timestamp": format_ms(ms), "level": "info", "message": "tab\there é", "service": "api"}
    fields.update(reqId="req-7", res={"statusCode": 404})
    plain = event(ms, "no request")
    requests = sink.encode([Event(fields, original), plain])
    values = [value for request in requests for stream in pushed(request) for value in stream["values"]]
    by_line = {value[1]: value for value in values}
    assert by_line[original.decode()][2] == {"request_id": "req-7", "status": "404"}
    assert len(by_line[plain.raw.decode()]) == 2  # no metadata to send: no third element


def test_a_label_value_is_bounded_and_a_missing_one_left_out() -> None:
    sink = loki(labels={"service": "{service}", "team": "{team}"})
    [request] = sink.encode([event(now_ms(), service="x" * 5000)])
    [stream] = pushed(request)
    assert stream["stream"] == {"service": "x" * 2048}


def test_a_backlog_replayed_after_newer_data_is_restamped_not_refused() -> None:
    """Loki refuses an entry more than 1 h behind its stream's newest: the sink re-stamps those it
    would send too far behind what it already pushed, and the line keeps the original time."""
    sink = loki()
    now = now_ms()
    sink.encode([event(now, "newest")])
    old = now - 3 * 3600 * 1000
    before = tally.events_restamped.labels("loki").value
    [request] = sink.encode([event(old + i, f"old {i}") for i in range(3)] + [event(now - 1000, "recent")])
    [stream] = pushed(request)
    stamps = [int(ts) for ts, _ in stream["values"]]
    assert stamps == sorted(stamps)
    assert min(stamps) >= now * 1_000_000 - HOUR_NS  # within what Loki accepts behind the newest
    lines = [orjson.loads(line) for _, line in stream["values"]]
    assert [line["message"] for line in lines] == ["old 0", "old 1", "old 2", "recent"]
    assert lines[0]["timestamp"] == format_ms(old)  # the original time is kept in the line
    assert tally.events_restamped.labels("loki").value - before == 3


def test_entries_too_far_behind_are_dropped_and_counted_when_configured() -> None:
    sink = loki(out_of_range="drop")
    now = now_ms()
    sink.encode([event(now, "newest")])
    before = tally.events_dropped.labels("loki", "too_far_behind").value
    [request] = sink.encode([event(now - 2 * 3600 * 1000, "old"), event(now, "new")])
    assert [orjson.loads(line)["message"] for _, line in pushed(request)[0]["values"]] == ["new"]
    assert tally.events_dropped.labels("loki", "too_far_behind").value - before == 1


def test_too_many_label_sets_fall_back_to_one_stream_counted() -> None:
    sink = loki(max_streams=2, labels={"service": "{service}"}, fallback_labels={"env": "prod"})
    ms = now_ms()
    before = tally.events_rerouted.labels("loki", "stream_limit").value
    requests = sink.encode([event(ms, service=f"svc-{i % 5}") for i in range(10)])
    streams = [s["stream"] for r in requests for s in pushed(r)]
    assert {"service": "svc-0"} in streams and {"service": "svc-1"} in streams
    assert {"env": "prod", "shipper_overflow": "true"} in streams
    assert len(streams) == 3
    assert tally.events_rerouted.labels("loki", "stream_limit").value - before == 6


def test_old_entries_are_restamped_into_lokis_window() -> None:
    sink = loki()
    ten_days_ago = now_ms() - 10 * 86400 * 1000
    [request] = sink.encode([event(ten_days_ago, "replayed")])
    [[ts, line]] = pushed(request)[0]["values"]
    assert int(ts) > (now_ms() - 60_000) * 1_000_000
    assert orjson.loads(line)["shipper.original_timestamp"] == format_ms(ten_days_ago)


def test_a_line_over_the_limit_is_cut_and_flagged() -> None:
    sink = loki(max_line_bytes=4096)
    [request] = sink.encode([event(now_ms(), "x" * 10_000), event(now_ms(), "short")])
    lines = [orjson.loads(line) for _, line in pushed(request)[0]["values"]]
    assert all(len(orjson.dumps(line)) <= 4096 for line in lines)
    cut = next(line for line in lines if line.get("shipper.truncated"))
    assert cut["message"].startswith("xxx")
    assert {line["message"] for line in lines if not line.get("shipper.truncated")} == {"short"}


def test_pushes_stay_within_the_request_limit() -> None:
    sink = loki(max_request_bytes=64 * 1024)
    ms = now_ms()
    events = [event(ms + i, "m" * 500, service=f"s{i % 3}") for i in range(1000)]
    requests = sink.encode(events)
    assert len(requests) > 5
    assert all(len(r.body) <= 64 * 1024 for r in requests)
    assert sum(len(r.events) for r in requests) == 1000
    for r in requests:  # a request's events are listed in body order
        flat = [value for stream in pushed(r) for value in stream["values"]]
        assert [orjson.loads(sink.framer.line(e)) for e in r.events] == [orjson.loads(line) for _, line in flat]


# ---------------------------------------------------------------------------------- answers, from the fake


def fast_retries(sink: LokiSink) -> LokiSink:
    sink.config = sink.config.model_copy(update={"retry": RetryConfig(initial_backoff=0.02, max_backoff=0.1)})
    return sink


async def ship(sink: LokiSink, chunks: list[list[Event]]) -> list[int]:
    """The chunks through the sink's driver (which starts and stops the sink); the checkpoints."""
    return await deliver(SinkDriver(sink, Channel(sink.name, 1 << 30, "block")), chunks)


def stored_messages(fake: FakeLoki) -> list[str]:
    return [str(orjson.loads(entry.line)["message"]) for entry in fake.entries()]


async def test_a_partial_400_drops_only_the_entries_loki_refused_and_counts_them() -> None:
    """Loki's limits tighter than the sink knows (a line limit of 2 KiB): Loki stores the rest and
    names the refused entries by stream and length; they are counted, never sent again."""
    async with FakeLoki(limits=LokiLimits(max_line_bytes=2048)) as fake:
        sink = fast_retries(loki(endpoint=fake.url, tenant="t1"))
        ms = now_ms()
        events = [event(ms + i, f"ok {i}") for i in range(5)] + [event(ms + 9, "y" * 4000)]
        before = metrics_dropped("line_too_long")
        assert await ship(sink, [events]) == [1]
        assert sorted(stored_messages(fake)) == [f"ok {i}" for i in range(5)]
        assert [p.status for p in fake.pushes] == [400]  # never sent again whole
        assert metrics_dropped("line_too_long") - before == 1


async def test_a_backlog_behind_what_another_writer_pushed_is_sent_again_restamped() -> None:
    """Newer data of the stream reached Loki first (another writer, or before a restart): Loki
    refuses the backlog as too far behind; the sink learns how far the stream has moved on and
    sends those entries again re-stamped: none is lost, and each line keeps its own time."""
    async with FakeLoki() as fake:
        now = now_ms()
        other = loki(endpoint=fake.url, tenant="t1")
        assert await ship(other, [[event(now, "the other writer's newest")]]) == [1]
        sink = fast_retries(loki(endpoint=fake.url, tenant="t1"))
        old = now - 3 * 3600 * 1000
        backlog = [event(old + i * 1000, f"old {i}") for i in range(25)]
        assert await ship(sink, [backlog]) == [1]
        stored = {str(orjson.loads(e.line)["message"]): e for e in fake.entries()}
        assert set(stored) == {f"old {i}" for i in range(25)} | {"the other writer's newest"}
        assert all(stored[f"old {i}"].ts_ns >= (now - 3600 * 1000) * 1_000_000 for i in range(25))
        assert orjson.loads(stored["old 3"].line)["timestamp"] == format_ms(old + 3000)
        assert fake.rejected.get("too_far_behind", 0) == 25 and 400 in fake.statuses


async def test_a_tenant_429_is_retried_whole_and_a_stream_429_resends_only_that_stream() -> None:
    """Also: Loki answers a push with its last stream's error only, so a refused stream that is not
    last would be lost under a 204. One stream a push: every refusal is heard."""
    async with FakeLoki() as fake:
        fake.fail_next(2, 429, retry_after="0.05")
        fake.limit_streams({"level": "error"}, count=1)
        sink = fast_retries(loki(endpoint=fake.url, tenant="t1"))
        ms = now_ms()
        events = [event(ms + i, f"m{i}", level="error" if i % 3 == 0 else "info") for i in range(12)]
        assert await ship(sink, [events]) == [1]
        assert sorted(stored_messages(fake)) == sorted(f"m{i}" for i in range(12))
        assert fake.statuses[429] >= 3
        assert fake.deduplicated == 0  # only the limited stream was sent again
        assert fake.hidden_rejections == 0


async def test_refused_credentials_keep_the_data_until_fixed() -> None:
    async with FakeLoki(basic_auth=("12345", "right-token")) as fake:
        sink = fast_retries(loki(endpoint=fake.url, username="12345", password="wrong-token"))
        await sink.start()
        try:
            [request] = sink.encode([event(now_ms())])
            outcome = await sink.send(request)
            assert outcome.kind == "unhealthy" and "wrong-token" not in repr(outcome)
            assert (await sink.check()).ok is False
            sink.config = sink.config.model_copy(update={"password": SecretStr("right-token")})
            assert (await sink.send(request)).kind == "delivered"
            check = await sink.check()
            assert check.ok and "right-token" not in check.detail
        finally:
            await sink.stop()
        assert len(fake.entries()) == 1


async def test_check_proves_tenant_and_readiness_without_writing() -> None:
    async with FakeLoki() as fake:
        sink = loki(endpoint=fake.url, tenant="t1")
        await sink.start()
        try:
            result = await sink.check()
            assert result.ok and "ready" in result.detail
            missing_tenant = loki(endpoint=fake.url)
            await missing_tenant.start()
            refused = await missing_tenant.check()
            await missing_tenant.stop()
            assert not refused.ok and "401" in refused.detail
            fake.set_ready(False)
            assert not (await sink.check()).ok
        finally:
            await sink.stop()
        assert fake.entries() == []


async def test_protobuf_pushes_arrive_as_json_ones_do() -> None:
    async with FakeLoki() as fake:
        sink = loki(endpoint=fake.url, tenant="t1", encoding="protobuf", compression="none",
                    structured_metadata={"request_id": "{reqId}"})  # fmt: skip
        ms = now_ms()
        events = [event(ms + i, f'é {i} "quoted"\n', reqId=f"r{i}") for i in range(20)]
        assert await ship(sink, [events]) == [1]
        assert {p.content_type for p in fake.pushes} == {"application/x-protobuf"}
        entries = fake.entries()
        assert sorted(str(orjson.loads(e.line)["message"]) for e in entries) == sorted(
            f'é {i} "quoted"\n' for i in range(20)
        )
        assert {e.metadata["request_id"] for e in entries} == {f"r{i}" for i in range(20)}
        assert {e.ts_ns for e in entries} == {(ms + i) * 1_000_000 for i in range(20)}


def metrics_dropped(reason: str) -> float:
    from shipper import metrics

    return float(
        metrics.registry.get_sample_value("shipper_events_dropped_total", {"sink": "loki", "reason": reason}) or 0.0
    )


def request_of(sink: LokiSink, events: list[Event]) -> Request:
    [request] = sink.encode(events)
    return request


def test_blocked_ingestion_is_delivered_but_counted() -> None:
    sink = loki()
    request = request_of(sink, [event(now_ms()), event(now_ms())])
    outcome = sink.classify(260, {}, b"", request)
    assert outcome.kind == "delivered" and [r.reason for r in outcome.rejected] == ["blocked", "blocked"]


def test_credentials_refused_keep_the_data_and_never_show_the_password() -> None:
    sink = loki(tenant="acme", username="12345", password="glc_secret_token")
    request = request_of(sink, [event(now_ms())])
    outcome = sink.classify(401, {}, b"invalid token", request)
    assert outcome.kind == "unhealthy" and "glc_secret_token" not in repr(outcome)
    headers = sink.auth_headers()
    assert headers["X-Scope-OrgID"] == "acme" and headers["Authorization"].startswith("Basic ")
    assert "glc_secret_token" not in repr(sink.config)


# ---------------------------------------------------------------------------------- config

LOKI = """\
[sources.api]
type = "stdin"

[sinks.loki]
type = "loki"
inputs = ["api"]
endpoint = "http://127.0.0.1:3100/loki/api/v1/push"
"""


def config_error(extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(LOKI + extra, Path("config.toml"), {})
    return info.value


def test_the_push_path_is_appended_once() -> None:
    config = parse_config(LOKI, Path("config.toml"), {})
    assert build_sink("loki", config.sinks["loki"]).url(Request(b"", [])) == "http://127.0.0.1:3100/loki/api/v1/push"


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('labels = { "__name" = "x" }\n', "labels", "not starting with __"),
        ('labels = { "bad-name" = "x" }\n', "labels", "invalid name"),
        ("labels = { " + ", ".join(f'l{i} = "v"' for i in range(16)) + " }\n", "labels", "at most 15"),
        ('labels = { request = "{reqId}" }\n', "sinks.loki", "structured_metadata"),
        ('labels = { trace = "{trace_id}" }\n', "sinks.loki", "allow_high_cardinality_labels"),
        ('username = "123"\n', "sinks.loki", "both username and password"),
        ('labels = { service = "{service" }\n', "labels", "invalid template"),
        ('tenant = "a/b"\n', "tenant", "invalid tenant"),
    ],
)
def test_label_mistakes_are_named_with_their_key(extra: str, key: str, words: str) -> None:
    error = config_error(extra)
    assert key in str(error) and words in str(error)


def test_an_id_label_is_allowed_when_the_user_insists() -> None:
    config = parse_config(
        LOKI + 'labels = { request = "{reqId}" }\nallow_high_cardinality_labels = true\n', Path("c"), {}
    )
    assert config.sinks["loki"].labels == {"request": "{reqId}"}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- both cores


async def test_entries_prepared_in_a_parse_worker_frame_like_those_prepared_here(tmp_path: Path) -> None:
    """The sink's per-event encoding runs where events are parsed: through a parse worker the
    pushes are the same as when the agent prepares them."""
    table = {"sources": {"app": {"type": "stdin"}}, "sinks": {"loki": {**LOKI_TABLE}}}
    config = config_from_dict(table, environ={})
    ms = now_ms()
    lines = [
        b'{"level":%d,"time":%d,"msg":"line %d","reqId":"r%d"}' % (30 + 10 * (i % 3), ms + i, i, i) for i in range(50)
    ]
    sink = build_sink("loki", config.sinks["loki"])
    channel = Channel("loki", 1 << 30, "block")
    async with parse_worker() as pool:
        feed = one_sink_context(config, "app", sink, channel, tmp_path, pool).open_feed(on_commit=lambda _: None)
        await feed.push(b"\n".join(lines) + b"\n")
        await feed.flush(force=True)
        prepared: list[Event] = []
        while channel.nevents:
            part = await channel.get(0)
            assert part is not None
            prepared += part.events
    assert len(prepared) == 50 and all(isinstance(e, Encoded) for e in prepared)
    local = build_sink("loki", config.sinks["loki"])
    here = build_processor("app", config.sources["app"], host="h", redact=config.redact).parse(lines, None, time.time())
    worker_body = [s for r in sink.encode(prepared) for s in pushed(r)]
    local_body = [s for r in local.encode(here) for s in pushed(r)]
    assert sorted(map(orjson.dumps, (s["stream"] for s in worker_body))) == sorted(
        map(orjson.dumps, (s["stream"] for s in local_body))
    )
    assert sum(len(s["values"]) for s in worker_body) == 50
    assert sorted(orjson.dumps(v) for s in worker_body for v in s["values"]) == sorted(
        orjson.dumps(v) for s in local_body for v in s["values"]
    )


LOKI_TABLE = {
    "type": "loki",
    "inputs": ["app"],
    "endpoint": "http://127.0.0.1:1",
    "structured_metadata": {"id": "{reqId}"},
}
