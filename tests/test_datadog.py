"""Datadog sink: config, encoding within the intake's limits, response classification, key check,
and the generic driver against the fake intake over real loopback HTTP."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import random
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from shipper import metrics
from shipper.config import config_from_dict
from shipper.errors import ConfigError
from shipper.event import Encoded, Event, encoded_events
from shipper.parsing.clock import epoch_ms
from shipper.pipeline.acks import AckTracker
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.driver import SinkDriver
from shipper.sink import Request
from sinks import build_sink
from sinks.datadog import DatadogConfig, DatadogSink
from tests.fakes.datadog_intake import BadPayload, DatadogIntake, PayloadTooLarge, inflate
from tests.fakes.forward_proxy import ForwardProxy

KEY = "dd-unit-secret-5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"
_names = itertools.count()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso(offset: timedelta = timedelta()) -> str:
    return iso(datetime.now(UTC) + offset)


def event(i: int = 0, **fields: Any) -> Event:
    base: dict[str, Any] = {
        "timestamp": now_iso(),
        "level": "info",
        "message": f"message {i}",
        "service": "api",
        "host": "web-1",
        "source": "app",
        "stream": "stdout",
        "reqId": f"req-{i}",
    }
    base.update(fields)
    return Event(base, repr(base).encode("utf-8", "replace"))


def make_sink(**options: Any) -> DatadogSink:
    table: dict[str, Any] = {"type": "datadog", "inputs": ["app"], "api_key": KEY, **options}
    config = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": {"dd": table}}, environ={})
    sink = build_sink(f"dd{next(_names)}", config.sinks["dd"])
    assert isinstance(sink, DatadogSink)
    return sink


def sink_name(key: str) -> str:
    return key.split(".")[1]


def docs(request: Request) -> list[dict[str, Any]]:
    parsed = orjson.loads(request.body)
    assert isinstance(parsed, list)
    return parsed


def metric(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------- config


def test_sites_map_to_intake_and_api_hosts() -> None:
    assert make_sink().intake == "https://http-intake.logs.datadoghq.com/api/v2/logs"
    eu = make_sink(site="eu1")
    assert eu.config.site == "EU1" and eu.intake == "https://http-intake.logs.datadoghq.eu/api/v2/logs"
    assert eu.api_base == "https://api.datadoghq.eu"
    assert make_sink(site="us5.datadoghq.com").config.site == "US5"
    assert make_sink(site="US1-FED").intake == "https://http-intake.logs.ddog-gov.com/api/v2/logs"
    assert make_sink(site="AP2").intake == "https://http-intake.logs.ap2.datadoghq.com/api/v2/logs"


def test_endpoint_override_is_a_base_url() -> None:
    for given in ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.0.0.1:8080/api/v2/logs"):
        sink = make_sink(endpoint=given)
        assert sink.intake == "http://127.0.0.1:8080/api/v2/logs"
        assert sink.api_base == "http://127.0.0.1:8080"
    assert make_sink(endpoint="https://proxy.local/dd").intake == "https://proxy.local/dd/api/v2/logs"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"site": "mars1"}, "sinks.dd.site"),
        ({"endpoint": "ftp://x"}, "sinks.dd.endpoint"),
        ({"api_key": "  "}, "sinks.dd.api_key"),
        ({"tags": ["a,b"]}, "sinks.dd.tags"),
        ({"tags": ["lvl:{level"]}, "sinks.dd.tags"),
        ({"max_event_bytes": "2MB"}, "sinks.dd.max_event_bytes"),
        ({"out_of_range": "keep"}, "sinks.dd.out_of_range"),
        ({"batch": {"max_events": 1001}}, "sinks.dd.batch.max_events"),
    ],
)
def test_invalid_options_name_their_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        sink = make_sink(**options)
        SinkDriver(sink, Channel(sink.name, 1 << 20, "block"))  # batch limits are checked by the driver
    assert error.value.key.replace(f"sinks.{sink_name(error.value.key)}.", "sinks.dd.") == key
    assert KEY not in str(error.value)


def test_api_key_is_never_shown() -> None:
    sink = make_sink()
    config = sink.config
    assert isinstance(config, DatadogConfig)
    for text in (repr(config), str(config), repr(config.model_dump()), str(sink), repr(sink)):
        assert KEY not in text
    assert config.api_key.get_secret_value() == KEY
    assert sink.auth_headers() == {"DD-API-KEY": KEY}


# ---------------------------------------------------------------------------------- encoding


def test_reserved_attributes_and_pass_through() -> None:
    sink = make_sink(service="checkout", source="nodejs", tags=["env:prod", "level:{level}", "ctx:{context}"])
    ev = event(1, level="error", req={"method": "GET", "url": "/x"}, status=500)
    (request,) = sink.encode([ev])
    (doc,) = docs(request)
    assert doc["message"] == "message 1"
    assert doc["status"] == "error"
    assert doc["service"] == "checkout"
    assert doc["hostname"] == "web-1" and "host" not in doc and "level" not in doc
    assert doc["ddsource"] == "nodejs"
    assert doc["ddtags"] == "env:prod,level:error"  # {context} missing: that tag is left out
    assert doc["timestamp"] == ev.fields["timestamp"]  # canonical UTC: as is (Datadog reads ISO8601)
    assert doc["req"] == {"method": "GET", "url": "/x"} and doc["reqId"] == "req-1"
    assert doc["source"] == "app" and doc["stream"] == "stdout"
    assert doc["status_original"] == 500  # an event field named like a reserved attribute is kept aside
    assert ev.fields["level"] == "error" and "status" in ev.fields  # the shared event is not mutated


def test_service_from_event_and_level_as_status() -> None:
    sink = make_sink()
    (request,) = sink.encode([event(service="billing", level="error"), event(level="warn", hostname="web-1")])
    first, second = docs(request)
    assert first["service"] == "billing" and first["status"] == "error"
    assert second["status"] == "warn" and "hostname_original" not in second  # same value: no copy


def test_other_timestamp_forms_become_epoch_ms() -> None:
    moment = datetime.now(UTC).replace(microsecond=123456)
    forms = [moment.isoformat(), moment.astimezone(timezone(timedelta(hours=2))).isoformat(), moment.timestamp()]
    (request,) = make_sink().encode([event(i, timestamp=form) for i, form in enumerate(forms)])
    assert [d["timestamp"] for d in docs(request)] == [round(moment.timestamp() * 1000)] * 3


def test_epoch_ms_parsing() -> None:
    assert epoch_ms("2026-11-23T00:47:16.241Z") == 1795394836241
    assert epoch_ms("2026-11-23T01:47:16.241+01:00") == 1795394836241
    assert epoch_ms("2026-11-23T00:47:16.241") == 1795394836241  # zone-less: UTC
    assert epoch_ms(1795394836241) == 1795394836241 and epoch_ms(1795394836.241) == 1795394836241
    assert epoch_ms("yesterday") is None and epoch_ms(True) is None


def test_templated_tags_nested_paths_and_commas() -> None:
    sink = make_sink(tags=["team:core", "method:{req.method}", "ctx:{context}"])
    (request,) = sink.encode(
        [event(req={"method": "POST"}, context="Users,Admin"), event(req={"method": "POST"}), event(context={"x": 1})]
    )
    assert [d["ddtags"] for d in docs(request)] == [
        "team:core,method:POST,ctx:Users_Admin",
        "team:core,method:POST",
        "team:core",
    ]


def test_one_field_tag_template_renders_from_its_cache_and_skips_unusable_values() -> None:
    sink = make_sink(tags=["env:prod", "level:{level}"])
    batch = [event(0, level="info"), event(1, level="error"), event(2, level={"not": "a tag"}), event(3)]
    del batch[3].fields["level"]
    expected = ["env:prod,level:info", "env:prod,level:error", "env:prod", "env:prod"]
    for _ in range(2):  # the second pass is served from the rendered-tags cache
        (request,) = sink.encode(batch)
        assert [d["ddtags"] for d in docs(request)] == expected


def test_a_batch_mixing_timestamp_forms_is_checked_event_by_event() -> None:
    sink = make_sink()
    moment = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=250_000)
    batch = [
        event(0, timestamp=iso(moment)),  # canonical: sent as is
        event(1, timestamp=moment.timestamp()),  # epoch seconds: sent as epoch ms
        event(2, timestamp=now_iso(-timedelta(hours=20))),  # too old for Datadog: re-stamped
        event(3),
    ]
    del batch[3].fields["timestamp"]  # none at all: Datadog stamps it on receipt
    (request,) = sink.encode(batch)
    entries = docs(request)
    assert entries[0]["timestamp"] == iso(moment) and entries[1]["timestamp"] == round(moment.timestamp() * 1000)
    assert abs(epoch_ms(entries[2]["timestamp"]) - time.time() * 1000) < 5_000  # type: ignore[operator]
    assert "shipper.original_timestamp" in entries[2] and "timestamp" not in entries[3]
    assert abs(request.meta["oldest_ms"] - moment.timestamp() * 1000) < 2  # the stale check's reference


def test_unparseable_timestamp_is_left_to_datadog_and_kept() -> None:
    (request,) = make_sink().encode([event(timestamp="not a date")])
    (doc,) = docs(request)
    assert "timestamp" not in doc and doc["shipper.original_timestamp"] == "not a date"


def test_limits_never_exceeded_on_3500_events_of_varying_sizes() -> None:
    rng = random.Random(3)
    sink = make_sink()
    sizes = [rng.choice((10, 200, 2_000, 20_000, 60_000)) for _ in range(3500)]
    events = [event(i, pad="x" * size) for i, size in enumerate(sizes)]
    requests = sink.encode(events)
    seen: list[str] = []
    for request in requests:
        entries = docs(request)
        assert 1 <= len(entries) <= 1000
        assert len(request.body) <= 5_000_000
        assert len(entries) == len(request.events)
        seen.extend(d["message"] for d in entries)
    assert seen == [f"message {i}" for i in range(3500)]
    assert len(requests) > 4  # the byte limit, not only the entry limit, cut some requests


def test_small_events_are_cut_at_1000_entries() -> None:
    requests = make_sink().encode([event(i) for i in range(2500)])
    assert [len(r.events) for r in requests] == [1000, 1000, 500]


def test_two_megabyte_event_is_truncated_flagged_and_counted_once() -> None:
    sink = make_sink()
    big = event(1, message="m" * 2_000_000)
    before = metric("shipper_events_truncated_total", sink=sink.name)
    (request,) = sink.encode([event(0), big, event(2)])
    entries = docs(request)
    assert [len(orjson.dumps(d)) <= 1_000_000 for d in entries] == [True, True, True]
    assert entries[1]["shipper.truncated"] is True and entries[1]["message"].startswith("mmm")
    assert len(entries[1]["message"]) > 900_000  # cut to fit, not emptied
    assert "shipper.truncated" not in entries[0] and "shipper.truncated" not in entries[2]
    assert metric("shipper_events_truncated_total", sink=sink.name) == before + 1
    assert big.fields["message"] == "m" * 2_000_000  # the shared event is left alone
    # the driver re-encodes halves on a split: already-truncated events are not cut or counted again
    again = sink.encode(request.events)
    assert docs(again[0]) == entries
    assert metric("shipper_events_truncated_total", sink=sink.name) == before + 1


def test_oversized_nested_fields_and_many_fields() -> None:
    sink = make_sink(max_event_bytes=100_000)
    nested = event(1, err={"type": "Error", "stack": "at x\n" * 100_000})
    wide = event(2, **{f"f{i}": "v" * 200 for i in range(2_000)})
    unicode = event(3, message="é\u2028\x01" * 200_000)
    (request,) = sink.encode([nested, wide, unicode])
    first, second, third = docs(request)
    for doc in (first, second, third):
        assert len(orjson.dumps(doc)) <= 100_000 and doc["shipper.truncated"] is True
    assert first["err"]["type"] == "Error" and first["err"]["stack"].startswith("at x\n")
    assert second["message"] == "message 2" and second["shipper.dropped_fields"]
    assert third["message"].startswith("é\u2028\x01")


def test_fields_larger_than_the_raw_line_are_still_checked() -> None:
    """A source whose events carry no raw line (records) cannot hide a huge event from the size check."""
    sink = make_sink()
    fields = dict(event(1).fields, message="z" * 1_500_000)
    requests = sink.encode([Event(fields, b""), event(2)])
    assert all(len(orjson.dumps(d)) <= 1_000_000 for r in requests for d in docs(r))
    assert docs(requests[0])[0]["shipper.truncated"] is True


def test_values_json_cannot_carry_are_sanitized_not_fatal() -> None:
    sink = make_sink()
    odd = event(1, message="bad \udcff surrogate", big=2**70, when=object(), nested={1: "int key"})
    (request,) = sink.encode([event(0), odd])
    _, doc = docs(request)
    assert doc["message"] == "bad ? surrogate" and doc["big"] == str(2**70)
    assert doc["nested"] == {"1": "int key"} and doc["shipper.sanitized"] is True


def test_out_of_range_timestamps_are_restamped_and_counted() -> None:
    sink = make_sink()
    old, future = now_iso(-timedelta(hours=19)), now_iso(timedelta(hours=3))
    before = metric("shipper_events_restamped_total", sink=sink.name)
    (request,) = sink.encode([event(0, timestamp=old), event(1), event(2, timestamp=future)])
    entries = docs(request)
    now_ms = time.time() * 1000
    for doc, original in ((entries[0], old), (entries[2], future)):
        assert abs((epoch_ms(doc["timestamp"]) or 0) - now_ms) < 5_000
        assert doc["shipper.original_timestamp"] == original
    assert "shipper.original_timestamp" not in entries[1]
    assert metric("shipper_events_restamped_total", sink=sink.name) == before + 2
    sink.encode(request.events)  # re-encoding (split) does not count them again
    assert metric("shipper_events_restamped_total", sink=sink.name) == before + 2


@pytest.mark.parametrize("out_of_range", ["restamp", "drop"])
def test_prepared_logs_get_the_window_rule_too_an_oversized_old_one_included(out_of_range: str) -> None:
    """Where events are parsed (a worker) the preparer re-stamps in the log objects it built: the
    same logs as the agent's own encoding, an old log that is also too big both truncated and
    re-stamped, each counted once."""
    sink = make_sink(out_of_range=out_of_range)
    old = now_iso(-timedelta(days=3))
    batch = [event(0, timestamp=old), event(1), event(2, timestamp=old, stack="s" * 1_200_000)]
    preparer = sink.encoder
    before = {
        name: metric(f"shipper_events_{name}_total", sink=sink.name, **labels)
        for name, labels in (("restamped", {}), ("truncated", {}), ("dropped", {"reason": "out_of_range"}))
    }
    lines, stamps = preparer.prepare(batch)
    logs = [orjson.loads(line) for line in lines.splitlines()]
    if out_of_range == "drop":
        assert [log["message"] for log in logs] == ["message 1"]
        assert metric("shipper_events_dropped_total", sink=sink.name, reason="out_of_range") == before["dropped"] + 2
        return
    assert [log["message"] for log in logs] == ["message 0", "message 1", "message 2"]
    now_ms = time.time() * 1000
    for log in (logs[0], logs[2]):
        assert abs((epoch_ms(log["timestamp"]) or 0) - now_ms) < 5_000 and log["shipper.original_timestamp"] == old
    assert logs[2]["shipper.truncated"] is True and len(lines.splitlines()[2]) <= 1_000_000
    assert stamps is not None and stamps[1] == batch[1].fields["timestamp"]
    assert metric("shipper_events_restamped_total", sink=sink.name) == before["restamped"] + 2
    assert metric("shipper_events_truncated_total", sink=sink.name) == before["truncated"] + 1


def test_out_of_range_timestamps_dropped_when_configured() -> None:
    sink = make_sink(out_of_range="drop")
    (request,) = sink.encode([event(0, timestamp=now_iso(-timedelta(days=2))), event(1)])
    assert [d["message"] for d in docs(request)] == ["message 1"]
    assert metric("shipper_events_dropped_total", sink=sink.name, reason="out_of_range") == 1
    assert sink.encode([event(0, timestamp=now_iso(timedelta(hours=2, minutes=30)))]) == []


# ---------------------------------------------------------------------------------- classification


def test_classification() -> None:
    sink = make_sink(endpoint="http://127.0.0.1:9")
    one = Request(b"[]", [event()])
    many = Request(b"[]", [event(1), event(2)])
    assert sink.classify(202, {}, b"{}", many).kind == "delivered"
    assert sink.classify(413, {}, b"", many).kind == "split"
    assert sink.classify(400, {}, b"bad", many).kind == "split"  # isolate the bad log
    rejected = sink.classify(400, {}, b'{"errors":["bad date"]}', one)
    assert rejected.kind == "reject" and rejected.reason == "http_400" and "bad date" in rejected.detail
    throttled = sink.classify(429, {"Retry-After": "7"}, b"", many)
    assert throttled.kind == "retry" and throttled.retry_after == 7.0
    assert sink.classify(429, {"X-RateLimit-Reset": "3"}, b"", many).retry_after == 3.0
    for status in (408, 500, 502, 503, 504):
        assert sink.classify(status, {}, b"", many).kind == "retry"
    for status in (401, 403):
        outcome = sink.classify(status, {}, b"", many)
        assert outcome.kind == "unhealthy" and f"API key for http://127.0.0.1:9 (HTTP {status})" in outcome.detail
        assert "site" not in outcome.detail and KEY not in outcome.detail  # the endpoint replaces the site
    assert sink.classify(404, {}, b"", many).kind == "unhealthy"


# ---------------------------------------------------------------------------------- the fake itself


def test_fake_inflates_with_a_guard() -> None:
    import gzip
    import zlib

    assert inflate(gzip.compress(b"[1]"), "gzip") == b"[1]"
    assert inflate(zlib.compress(b"[1]"), "deflate") == b"[1]"
    assert inflate(gzip.compress(b"[1]") + gzip.compress(b"[2]"), "gzip") == b"[1][2]"
    with pytest.raises(PayloadTooLarge):
        inflate(gzip.compress(b" " * 5_000_001), "gzip")
    with pytest.raises(BadPayload, match="not gzip"):
        inflate(b"[1]", "gzip")


@pytest.mark.parametrize("record", [True, False], ids=["keeping-logs", "counting-logs-for-the-bench"])
async def test_fake_enforces_the_wire_rules(record: bool) -> None:
    """Both ways the fake runs (keeping the logs, or only validating and counting them as the bench
    does) refuse what Datadog refuses."""
    import gzip

    import aiohttp

    async with DatadogIntake([KEY], record=record) as intake, aiohttp.ClientSession(auto_decompress=False) as http:
        url = intake.url + "/api/v2/logs"
        json = {"Content-Type": "application/json", "DD-API-KEY": KEY}
        gz = {**json, "Content-Encoding": "gzip"}

        async def post(body: bytes, headers: dict[str, str]) -> int:
            async with http.post(url, data=body, headers=headers) as resp:
                return resp.status

        assert await post(b'[{"message":"a"}]', {"Content-Type": "application/json"}) == 403
        assert await post(b'[{"message":"a"}]', {**json, "DD-API-KEY": "wrong"}) == 403
        assert await post(gzip.compress(b'[{"message":"a"}]'), gz) == 202
        assert await post(b' {"message":"b"}', json) == 202  # one log, not in an array
        assert await post(b'[{"message":"b"}]', gz) == 400  # says gzip, sends plain JSON
        assert await post(gzip.compress(gzip.compress(b"[]")), gz) == 400  # gzipped twice
        assert await post(b"[{not json", json) == 400
        assert await post(b'[{"message":"a"}] []', json) == 400  # trailing data
        assert await post('[{"message":"\u00e9"}]'.encode("latin-1"), json) == 400  # not UTF-8
        assert await post(b'[{"message":"a"},"text"]', json) == 400  # every log is an object
        assert await post(orjson.dumps([{"message": "x"}] * 1001), json) == 400
        assert await post(gzip.compress(orjson.dumps([{"message": "x" * 5_000_000}])), gz) == 413
        assert intake.stats()["accepted"] == 2
        if record:
            assert [log["message"] for log in intake.logs] == ["a", "b"]
        async with http.get(intake.url + "/api/v1/validate", headers={"DD-API-KEY": KEY}) as resp:
            assert resp.status == 200 and await resp.json() == {"valid": True}
        async with http.get(intake.url + "/api/v1/validate", headers={"DD-API-KEY": "nope"}) as resp:
            assert resp.status == 403


# ---------------------------------------------------------------------------------- check


async def test_check_validates_the_key_with_the_official_client() -> None:
    pytest.importorskip("datadog_api_client", reason="the optional extra shipper[datadog] is not installed")
    async with DatadogIntake([KEY]) as intake:
        sink = make_sink(endpoint=intake.url)
        result = await sink.check()
        await sink.stop()
        assert result.ok, result.detail
        assert "API key valid" in result.detail and "reachable" in result.detail
        assert result.detail.count(intake.url) == 1 and "site" not in result.detail  # the endpoint replaces the site
        assert intake.validations == 1 and intake.seen == []  # nothing was shipped
        intake.set_keys("another")
        result = await sink.check()
        await sink.stop()
        assert not result.ok and "rejected" in result.detail and KEY not in result.detail


async def test_check_without_the_client_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datadog_api_client" else real(name, *a)
    )
    async with DatadogIntake([KEY]) as intake:
        sink = make_sink(endpoint=intake.url)
        assert (await sink.check()).ok
        intake.set_keys()
        result = await sink.check()
        await sink.stop()
        assert not result.ok and "HTTP 403" in result.detail and KEY not in result.detail


@pytest.mark.parametrize("client", [True, False], ids=["official-client", "plain-http"])
async def test_check_goes_through_the_proxy_the_environment_names(
    client: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shipper check` behind an egress proxy: the key validation (either way) and the intake probe
    take HTTP_PROXY, as shipping does."""
    if not client:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "datadog_api_client" else real(name, *a)
        )
    proxy = ForwardProxy(("ops", "pw-7c6b5a"))
    await proxy.start()
    try:
        async with DatadogIntake([KEY]) as intake:
            monkeypatch.setenv("HTTP_PROXY", f"http://ops:pw-7c6b5a@127.0.0.1:{proxy.port}")
            for name in ("NO_PROXY", "no_proxy", "http_proxy"):
                monkeypatch.delenv(name, raising=False)
            sink = make_sink(endpoint=intake.url)
            result = await sink.check()
            await sink.stop()
            assert result.ok, result.detail
            assert intake.validations == 1 and proxy.forwarded == 2 and proxy.refused == 0
    finally:
        await proxy.stop()


@pytest.mark.parametrize("client", [True, False], ids=["official-client", "plain-http"])
async def test_check_reports_why_an_endpoint_is_unreachable(client: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    if not client:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "datadog_api_client" else real(name, *a)
        )
    port = free_port()
    sink = make_sink(endpoint=f"http://127.0.0.1:{port}", request_timeout="2s")
    result = await sink.check()
    await sink.stop()
    assert not result.ok and KEY not in result.detail
    assert result.detail == (
        f"cannot reach http://127.0.0.1:{port}/api/v1/validate to validate the API key: "
        f"connection refused to 127.0.0.1:{port}"
    )


# ---------------------------------------------------------------------------------- driver + fake


async def deliver(sink: DatadogSink, events: list[Event], part_size: int = 250, timeout: float = 20) -> SinkDriver:
    """Push `events` through a real Channel + SinkDriver and wait until every ack is released."""
    channel = Channel(sink.name, 64 * 1024 * 1024, "block")
    driver = SinkDriver(sink, channel)
    tracker = AckTracker()
    run = asyncio.create_task(driver.run())
    for start in range(0, len(events), part_size):
        chunk = events[start : start + part_size]
        ack = tracker.open(start + len(chunk))
        ack.add(len(chunk))
        await channel.put(Part(chunk, ack, sum(e.size for e in chunk)))
        ack.done()
    channel.close()
    await asyncio.wait_for(run, timeout)
    assert tracker.outstanding == 0 and tracker.committed == len(events)
    return driver


def fast(intake: DatadogIntake, **options: Any) -> DatadogSink:
    retry = {"initial_backoff": "20ms", "max_backoff": "200ms"}
    return make_sink(endpoint=intake.url, retry=retry, batch={"timeout": "50ms"}, **options)


def assert_within_limits(intake: DatadogIntake) -> None:
    for seen in intake.seen:
        assert seen.entries <= 1000 and seen.json_bytes <= 5_000_000
    assert intake.unindexed == [] and intake.oversized == []


async def test_driver_delivers_everything_once_gzip_within_limits() -> None:
    rng = random.Random(5)
    events = [event(i, pad="p" * rng.randint(0, 12_000)) for i in range(3500)]
    events.append(event(3500, message="M" * 2_000_000))
    async with DatadogIntake([KEY]) as intake:
        sink = fast(intake)
        await deliver(sink, events)
        assert sorted(int(log["message"][8:]) for log in intake.logs if log["message"][:1] == "m") == list(range(3500))
        assert len(intake.logs) == 3501
        assert {s.encoding for s in intake.seen} == {"gzip"} and {s.status for s in intake.seen} == {202}
        assert_within_limits(intake)
        assert metric("shipper_events_sent_total", sink=sink.name) == 3501


async def test_identity_encoding_also_accepted() -> None:
    async with DatadogIntake([KEY]) as intake:
        await deliver(fast(intake, compression="none"), [event(i) for i in range(10)])
        assert len(intake.logs) == 10 and {s.encoding for s in intake.seen} == {"identity"}


async def test_storms_of_429_503_413_lose_nothing() -> None:
    events = [event(i) for i in range(3000)]
    async with DatadogIntake([KEY]) as intake:
        intake.fail_next(3, 429, retry_after="0.1")
        intake.fail_next(2, 429, rate_limit_reset="0.1")
        intake.fail_next(3, 503)
        intake.fail_next(2, 413)
        await deliver(fast(intake), events)
        messages = [log["message"] for log in intake.logs]
        assert set(messages) == {f"message {i}" for i in range(3000)}
        assert len(messages) == 3000  # the fake answered errors before storing: no duplicates here
        assert {429, 503, 413, 202} <= set(intake.statuses)
        assert_within_limits(intake)


async def test_retry_after_is_honoured() -> None:
    async with DatadogIntake([KEY]) as intake:
        intake.fail_next(1, 429, retry_after="0.6")
        started = time.monotonic()
        await deliver(fast(intake), [event(1)])
        assert time.monotonic() - started >= 0.6
        assert len(intake.logs) == 1


async def test_bad_key_keeps_data_until_fixed() -> None:
    async with DatadogIntake(["the-right-key"]) as intake:
        sink = fast(intake)
        task = asyncio.create_task(deliver(sink, [event(i) for i in range(50)]))
        while intake.statuses[403] < 3:
            await asyncio.sleep(0.02)
        assert not task.done() and intake.logs == []
        intake.set_keys(KEY)  # the operator fixes the key (here: the intake starts accepting ours)
        driver = await task
        assert driver.healthy and len(intake.logs) == 50
        assert metric("shipper_events_dropped_total", sink=sink.name, reason="http_403") == 0


async def test_a_400_costs_only_the_bad_log() -> None:
    async with DatadogIntake([KEY]) as intake:
        intake.poison = lambda log: log["message"] == "poison"
        sink = fast(intake)
        await deliver(sink, [event(i, message="poison" if i == 17 else f"message {i}") for i in range(64)])
        assert sorted(log["message"] for log in intake.logs) == sorted(f"message {i}" for i in range(64) if i != 17)
        assert metric("shipper_events_dropped_total", sink=sink.name, reason="http_400") == 1


async def test_connection_refused_then_intake_comes_up() -> None:
    from tests.conftest import free_port

    port = free_port()
    intake = DatadogIntake([KEY], port=port)
    sink = fast(intake)
    task = asyncio.create_task(deliver(sink, [event(i) for i in range(20)]))
    await asyncio.sleep(0.4)
    assert not task.done()
    async with intake:
        await task
        assert len(intake.logs) == 20


@pytest.mark.parametrize("prepared", [False, True], ids=["encoded-here", "prepared-by-a-worker"])
async def test_a_request_stale_in_the_queue_is_restamped_before_sending(prepared: bool) -> None:
    async with DatadogIntake([KEY]) as intake:
        sink = fast(intake)
        batch = [event(0), event(1)]
        if prepared:
            batch = encoded_events(sink.encoder.prepare(batch), {"source": "app"})
        (request,) = sink.encode(batch)
        # As if it had waited 20 h behind a revoked key: its first log is now too old for Datadog.
        old = now_iso(-timedelta(hours=20))
        first = request.events[0]
        if isinstance(first, Encoded):
            doc = orjson.loads(first.raw)
            doc["timestamp"] = old
            request.events[0] = Encoded(first.fields, orjson.dumps(doc), old)
        else:
            first.fields["timestamp"] = old
        request.meta["oldest_ms"] = epoch_ms(old)
        outcome = await sink.send(request)
        await sink.stop()
        assert outcome.kind == "delivered"
        assert len(intake.logs) == 2 and intake.unindexed == []
        assert intake.logs[0]["shipper.original_timestamp"] == old
