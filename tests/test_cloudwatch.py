"""CloudWatch Logs sink: config, per-event encoding and framing within PutLogEvents' limits, and the
driver against moto's server behind a fault-injecting front over real loopback HTTP (SigV4 checked)."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import msgspec
import orjson
import pytest

from shipper import metrics
from shipper.config import config_from_dict
from shipper.errors import ConfigError
from shipper.event import Encoded, Event, encoded_events
from shipper.parsing.clock import epoch_ms, format_ms
from shipper.pipeline import routing
from shipper.pipeline.channel import Channel
from shipper.pipeline.driver import SinkDriver
from shipper.sink import Request
from sinks import build_sink
from sinks.cloudwatch import CloudWatchConfig, CloudWatchSink
from sinks.cloudwatch_events import MAX_CALL_BYTES, calls
from tests.driving import deliver
from tests.fakes.cloudwatch import CloudWatchFront

KEY_ID, SECRET = "AKIDCWUNITTEST000001", "cw-unit-secret/0a1b2c3d4e5f60718293a4b5c6d7e8f9"
REGION = "us-east-1"
PLUS_2H = timezone(timedelta(hours=2))
_names = itertools.count()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake static keys in the environment (the standard chain's first provider), nothing else of AWS's."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def front(moto: str) -> Iterator[CloudWatchFront]:
    with CloudWatchFront(moto, {KEY_ID: SECRET}).threaded() as served:
        yield served


def make_sink(environ: dict[str, str] | None = None, name: str | None = None, **options: Any) -> CloudWatchSink:
    table: dict[str, Any] = {"type": "cloudwatch", "inputs": ["app"], "log_group": "/test/app", **options}
    config = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": {"cw": table}}, environ=environ or {})
    sink = build_sink(name or f"cw{next(_names)}", config.sinks["cw"])  # metrics are per sink name
    assert isinstance(sink, CloudWatchSink)
    return sink


def group_name() -> str:
    return f"/test/{time.monotonic_ns()}"


def now_ms() -> int:
    return int(time.time() * 1000)


def event(i: int = 0, ms: int | None = None, **fields: Any) -> Event:
    base: dict[str, Any] = {
        "timestamp": format_ms(now_ms() if ms is None else ms),
        "level": "info",
        "message": f"message {i}",
        "service": "api",
        "host": "web-1",
        "source": "app",
        "reqId": f"req-{i}",
    }
    base.update(fields)
    return Event(base, repr(base).encode("utf-8", "replace"))


def prepare(sink: CloudWatchSink, events: list[Event]) -> tuple[bytes, list[Any] | None]:
    """The sink's preparer, built as a parse worker builds it, run on `events`."""
    return routing.build_preparer(sink.name, sink.preparer()).prepare(events)


def log_events(sink: CloudWatchSink, events: list[Event]) -> list[dict[str, Any]]:
    """What each call of `events` carries, in order: the log events as sent, each with its call's stream."""
    return [
        {**log, "stream": request.meta["stream"]}
        for request in sink.encode(events)
        for log in orjson.loads(request.body)["logEvents"]
    ]


def driver(sink: CloudWatchSink) -> SinkDriver:
    return SinkDriver(sink, Channel(sink.name, 64 << 20, "block"))


def metric(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def assert_within_limits(front: CloudWatchFront) -> None:
    """Every PutLogEvents call the front saw was one CloudWatch accepts (it checks each: WIRE.md)."""
    assert front.calls, "no PutLogEvents call was made"
    assert front.violations == []


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"log_group": "bad group"}, "sinks.cw.log_group"),
        ({"log_group": "aws/lambda/x"}, "sinks.cw.log_group"),
        ({"log_group": "x" * 513}, "sinks.cw.log_group"),
        ({"log_stream": "a:b"}, "sinks.cw.log_stream"),
        ({"log_stream": "{host"}, "sinks.cw.log_stream"),
        ({"log_stream": ""}, "sinks.cw.log_stream"),
        ({"retention_days": 10}, "sinks.cw.retention_days"),
        ({"region": "mars-north"}, "sinks.cw.region"),
        ({"endpoint_url": "ftp://x"}, "sinks.cw.endpoint_url"),
        ({"compression": "gzip"}, "sinks.cw.compression"),
        ({"message": "xml"}, "sinks.cw.message"),
        ({"max_event_bytes": "2MiB"}, "sinks.cw.max_event_bytes"),
        ({"access_key_id": "${KEY}"}, "sinks.cw"),
        ({"access_key_id": "${KEY}", "secret_access_key": "${SECRET}", "profile": "p"}, "sinks.cw"),
        ({"access_key_id": "AKIDWRITTENOUT", "secret_access_key": "${SECRET}"}, "sinks.cw.access_key_id"),
        ({"ca_bundle": "/etc/ssl/certs/ca.pem", "tls_verify": False}, "sinks.cw"),
        ({"batch": {"max_events": 10_001}}, "sinks.cw.batch.max_events"),
    ],
)
def test_invalid_options_name_their_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        sink = make_sink({"KEY": "AKIDFROMENV", "SECRET": "from-env"}, "cw", **options)
        SinkDriver(sink, Channel(sink.name, 1 << 20, "block"))  # batch limits are checked by the driver
    assert error.value.key == key
    assert "from-env" not in str(error.value)


def test_explicit_keys_come_by_reference_and_never_show(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    sink = make_sink(
        {"KEY": KEY_ID}, access_key_id="${KEY}", secret_access_key=f"${{file:{secret_file}}}", region=REGION
    )
    config = sink.config
    assert isinstance(config, CloudWatchConfig) and config.secret_access_key is not None
    assert config.secret_access_key.get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(config.model_dump()), repr(sink)):
        assert SECRET not in text and KEY_ID not in text


def test_preflight_needs_a_region_and_an_existing_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ConfigError) as error:
        make_sink().config.preflight("sinks.cw")
    assert error.value.key == "sinks.cw.region" and "AWS_REGION" in error.value.message
    make_sink(region="eu-west-1").config.preflight("sinks.cw")
    (tmp_path / "no-aws-config").write_text("[profile shipping]\nregion = ap-south-1\n")
    make_sink(profile="shipping").config.preflight("sinks.cw")  # the profile's region counts
    with pytest.raises(ConfigError) as error:
        make_sink(profile="nope").config.preflight("sinks.cw")
    assert error.value.key == "sinks.cw.profile"


# ---------------------------------------------------------------------------------- per event


def test_each_event_is_one_log_event_with_its_fields_as_compact_json() -> None:
    sink = make_sink()
    moment = now_ms() - 5_000
    ev = event(1, moment, message="line one\nline two", req={"method": "GET"}, note="naïve \u2028")
    lines, stamps = prepare(sink, [ev])
    assert lines.count(b"\n") == 1 and lines.endswith(b"\n")  # one line: no raw newline in an event
    (log,) = [orjson.loads(line) for line in lines.splitlines()]
    assert log == {"timestamp": moment, "message": orjson.dumps(ev.fields).decode()}
    assert orjson.loads(log["message"]) == ev.fields
    assert stamps == [(moment, "web-1/app")]


def test_a_chunk_of_log_events_is_what_each_event_alone_would_be() -> None:
    """A chunk is encoded in one pass (its messages escaped all at once, its times read in bulk):
    each log event must still be exactly its fields' compact JSON as a string, at its own time,
    whatever its strings hold, next to events that take the careful path (too big, not encodable,
    a time in another form)."""
    sink = make_sink(log_stream="{host}/{source}", max_event_bytes="8KiB")
    moment = now_ms() - 5_000
    tricky = ['say "hi"', "back\\slash \\n not a newline", "line\nbreak\ttab\x01\x1f\x7f", "naïve \u2028 日本", '\\"']
    events = [event(i, moment + 1_000 * i, text=text, nested={"k": [text, 1.5, None]}) for i, text in enumerate(tricky)]
    events += [
        event(10, moment, message="x" * 20_000),  # cut down
        event(11, moment, bad="\ud800"),  # sanitized
        event(12, moment, host="web-2"),
        Event({**event(13).fields, "timestamp": datetime.fromtimestamp(moment / 1000, PLUS_2H).isoformat()}, b"{}"),
        Event({k: v for k, v in event(14).fields.items() if k != "timestamp"}, b"{}"),
    ]
    lines, stamps = prepare(sink, events)
    assert stamps is not None and len(stamps) == len(events) == lines.count(b"\n")
    encoded = lines.splitlines()
    logs = [orjson.loads(line) for line in encoded]
    for index in [0, 1, 2, 3, 4, 7, 8]:  # byte for byte what PutLogEvents takes, as one event alone gets
        fields = events[index].fields
        expected = {"timestamp": epoch_ms(fields["timestamp"]), "message": msgspec.json.encode(fields).decode()}
        assert encoded[index] == orjson.dumps(expected) == prepare(sink, [events[index]])[0].rstrip(b"\n")
    assert orjson.loads(logs[5]["message"])["shipper.truncated"] is True
    assert orjson.loads(logs[6]["message"])["shipper.sanitized"] is True
    assert abs(logs[9]["timestamp"] - now_ms()) < 60_000  # no time: now
    assert [stream for _, stream in stamps] == ["web-1/app"] * 7 + ["web-2/app"] + ["web-1/app"] * 2
    assert [ms for ms, _ in stamps] == [log["timestamp"] for log in logs]


def test_raw_messages_ship_the_line_as_read() -> None:
    sink = make_sink(message="raw")
    line = b'{"level":30,"time":1,"msg":"hello \xc3\xa9"}'
    moment = now_ms() - 1000
    blank = Event(event(2, moment).fields, b"   ")
    logs = log_events(sink, [Event(event(1, moment).fields, line), blank])
    assert logs[0]["message"] == line.decode()
    assert orjson.loads(logs[1]["message"]) == blank.fields  # a blank line: never an empty message


def test_stream_names_come_from_the_template_and_are_valid() -> None:
    sink = make_sink(log_stream="{service}/{host}/{req.method}")
    events = [
        event(0, host="web:1*", req={"method": "GET"}),
        event(1, host="web-2"),
        event(2, host="web:1*", req={"method": "GET"}),
        event(3, host="h" * 600, req={"method": "PUT"}),
        event(4, host="web-1", req={"method": {"not": "a name"}}),
    ]
    streams = [log["stream"] for log in log_events(sink, events)]
    assert Counter(streams) == Counter({"api/web_1_/GET": 2, "unknown": 2, ("api/" + "h" * 600)[:512]: 1})
    fixed = make_sink(log_stream="fixed-name")
    one = event()  # one clock reading: two calls can fall in different milliseconds
    assert prepare(fixed, [one])[1] == [(epoch_ms(one.fields["timestamp"]), "fixed-name")]


def test_timestamps_outside_cloudwatchs_window_are_restamped_or_dropped_and_counted() -> None:
    sink = make_sink(retention_days=3)
    old, ahead, fine = now_ms() - 5 * 86_400_000, now_ms() + 3 * 3_600_000, now_ms() - 3_600_000
    events = [event(0, old), event(1, ahead), event(2, fine)]
    before = metric("shipper_events_restamped_total", sink=sink.name)
    logs = sorted(log_events(sink, events), key=lambda log: orjson.loads(log["message"])["message"])
    messages = [orjson.loads(log["message"]) for log in logs]
    assert messages[0]["shipper.original_timestamp"] == format_ms(old)  # older than the group's retention
    assert messages[1]["shipper.original_timestamp"] == format_ms(ahead)
    assert abs(logs[0]["timestamp"] - now_ms()) < 60_000 and abs(logs[1]["timestamp"] - now_ms()) < 60_000
    assert logs[2]["timestamp"] == fine and "shipper.original_timestamp" not in messages[2]
    assert metric("shipper_events_restamped_total", sink=sink.name) - before == 2
    assert events[0].fields["timestamp"] == format_ms(old)  # the shared events are not changed

    dropping = make_sink(out_of_range="drop")
    assert len(log_events(dropping, [event(0, now_ms() - 20 * 86_400_000), event(1, fine)])) == 1
    assert metric("shipper_events_dropped_total", sink=dropping.name, reason="out_of_range") == 1


def test_an_event_over_the_size_limit_is_cut_down_flagged_and_counted() -> None:
    sink = make_sink(max_event_bytes="100KiB")
    big = event(0, message="x" * 300_000, stack="y" * 200_000)
    (log,) = log_events(sink, [big])
    assert len(log["message"].encode()) + 26 <= 100 * 1024
    assert orjson.loads(log["message"])["shipper.truncated"] is True
    assert metric("shipper_events_truncated_total", sink=sink.name) == 1
    raw = make_sink(message="raw", max_event_bytes="100KiB")
    (log,) = log_events(raw, [Event(big.fields, b"z" * 200_000)])  # a line too long to ship as read
    assert orjson.loads(log["message"])["shipper.truncated"] is True


def test_values_json_cannot_carry_are_replaced_not_lost() -> None:
    (log,) = log_events(make_sink(), [event(0, bad="\ud800", huge=2**70)])
    message = orjson.loads(log["message"])
    assert message["shipper.sanitized"] is True and message["huge"] == str(2**70)


def test_prepared_in_a_worker_is_prepared_in_the_agent() -> None:
    sink = make_sink(log_stream="{host}/{level}")
    events = [event(i, now_ms() - random.randint(0, 10**7), level=random.choice(["info", "error"])) for i in range(300)]
    spec = pickle.loads(pickle.dumps(sink.preparer()))  # as it crosses the pipe to a worker
    in_worker = encoded_events(routing.build_preparer("cw", spec).prepare(events), {"source": "app"})
    assert [r.body for r in sink.encode(in_worker)] == [
        r.body for r in make_sink(log_stream="{host}/{level}").encode(events)
    ]


def test_the_preparer_loads_no_pydantic_http_client_or_aws_sdk() -> None:
    """A parse worker runs the preparer: it must stay as lean as the Datadog one."""
    heavy = ("pydantic", "prometheus_client", "asyncio", "ssl", "aiohttp", "boto3", "botocore")
    spec = make_sink().preparer()
    code = (
        "import sys, time, shipper.parse_worker, shipper.pipeline.routing as r\n"
        "from shipper.event import Event\n"
        f"p = r.build_preparer('cw', {spec!r})\n"
        "p.prepare([Event({'message': 'm', 'timestamp': time.time()}, b'm')])\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == ""


# ---------------------------------------------------------------------------------- framing


def test_calls_are_per_stream_in_time_order_and_within_every_limit() -> None:
    """Mixed streams, times over three days, sizes from one byte to near the event limit: each call
    holds one stream's events in time order (stable), at most 10,000 of them, 1,048,576 bytes (UTF-8
    + 26 each) and a 24 h span; every event is in exactly one call."""
    rng = random.Random(13)
    sink = make_sink(log_stream="{host}")
    start = now_ms() - 3 * 86_400_000
    events = [
        event(i, start + rng.randint(0, 3 * 86_400_000), host=rng.choice(["a", "b", "c"]),
              pad="p" * (300_000 if i % 1500 == 0 else rng.choice([0, 0, 10, 2000])))
        for i in range(30_000)
    ]  # fmt: skip
    requests = sink.encode(events)
    seen: list[str] = []
    for request in requests:
        body = orjson.loads(request.body)
        logs = body["logEvents"]
        times = [log["timestamp"] for log in logs]
        assert body["logGroupName"] == "/test/app" and body["logStreamName"] == request.meta["stream"]
        assert 1 <= len(logs) <= 10_000
        assert sum(len(log["message"].encode()) + 26 for log in logs) <= MAX_CALL_BYTES
        assert times == sorted(times) and times[-1] - times[0] <= 86_400_000
        assert {orjson.loads(log["message"])["host"] for log in logs} == {body["logStreamName"]}
        assert [len(log["message"]) for log in logs] and all(log["message"] for log in logs)
        seen += [orjson.loads(log["message"])["reqId"] for log in logs]
        ids = [int(orjson.loads(log["message"])["reqId"][4:]) for log in logs]
        same_time = [a < b for (ta, a), (tb, b) in itertools.pairwise(zip(times, ids, strict=True)) if ta == tb]
        assert all(same_time)  # stable: events of one millisecond keep their order
    assert Counter(seen) == Counter(f"req-{i}" for i in range(30_000))
    assert len(requests) >= 3 * 4  # each stream's three days need at least four calls


def test_many_small_events_fill_calls_of_ten_thousand() -> None:
    moment = now_ms() - 1000
    events = [Event(event(i, moment).fields, b"m") for i in range(25_000)]
    sink = make_sink(log_stream="s", message="raw")
    assert [len(request.events) for request in sink.encode(events)] == [10_000, 10_000, 5_000]


def test_framing_a_prepared_event_over_the_byte_limit_sends_it_alone() -> None:
    quotes = '"' * 600_000  # escaped on the wire: 1.2 MB of JSON for a 0.6 MB message
    stamp = (now_ms(), "s")
    big = Encoded({}, orjson.dumps({"timestamp": stamp[0], "message": quotes}), stamp)
    small = Encoded({}, orjson.dumps({"timestamp": stamp[0], "message": "x"}), stamp)
    assert [len(r.events) for r in calls([small, big, small], "g")] == [1, 1, 1]


# ---------------------------------------------------------------------------------- answers


def answer(sink: CloudWatchSink, status: int, body: dict[str, Any], events: int = 10) -> Any:
    request = Request(b"", [event(i) for i in range(events)], {"stream": "s"})
    return sink.classify(status, {}, orjson.dumps(body), request)


def test_rejected_log_events_are_named_by_reason_and_the_rest_delivered() -> None:
    sink = make_sink()
    info = {"tooOldLogEventEndIndex": 2, "expiredLogEventEndIndex": 4, "tooNewLogEventStartIndex": 8}
    outcome = answer(sink, 200, {"nextSequenceToken": "1", "rejectedLogEventsInfo": info})
    assert outcome.kind == "delivered" and outcome.resend == ()
    assert [(r.index, r.reason) for r in outcome.rejected] == [
        (0, "too_old"), (1, "too_old"), (2, "expired"), (3, "expired"), (8, "too_new"), (9, "too_new"),
    ]  # fmt: skip
    assert answer(sink, 200, {}).rejected == ()


@pytest.mark.parametrize(
    ("status", "kind", "events", "expected"),
    [
        (400, "ThrottlingException", 10, ("retry", "throttled")),
        (503, "ServiceUnavailableException", 10, ("retry", "service_unavailable")),
        (500, "InternalFailure", 10, ("retry", "service_unavailable")),
        (400, "ResourceNotFoundException", 10, ("retry", "resource_not_found")),
        (400, "InvalidParameterException", 10, ("split", "invalid_parameter")),
        (400, "InvalidParameterException", 1, ("reject", "invalid_parameter")),
        (400, "UnrecognizedClientException", 10, ("unhealthy", "credentials")),
        (400, "ExpiredTokenException", 10, ("unhealthy", "credentials")),
        (400, "AccessDeniedException", 10, ("unhealthy", "credentials")),
        (404, "", 1, ("unhealthy", "http_404")),  # not CloudWatch answering: nothing judged, data kept
        (502, "", 10, ("retry", "http_502")),
    ],
)
def test_errors_are_classified_by_the_type_cloudwatch_names(
    status: int, kind: str, events: int, expected: tuple[str, str]
) -> None:
    body = {"__type": f"com.amazonaws.logs#{kind}", "message": "m"} if kind else {"oops": 1}
    outcome = answer(make_sink(), status, body, events)
    assert (outcome.kind, outcome.reason) == expected


# ---------------------------------------------------------------------------------- against moto


async def test_events_arrive_once_in_their_streams_and_the_group_is_created_with_its_retention(
    front: CloudWatchFront,
) -> None:
    group = group_name()
    sink = make_sink(log_group=group, endpoint_url=front.url, retention_days=30, log_stream="{host}/{source}")
    chunks = [
        [event(i, now_ms() - 60_000 + i, host=f"web-{i % 3}") for i in range(c * 400, c * 400 + 400)] for c in range(5)
    ]
    assert await deliver(driver(sink), chunks) == [1, 2, 3, 4, 5]
    assert_within_limits(front)
    logs = front.messages(group)
    assert Counter(log["reqId"] for log in logs) == Counter(f"req-{i}" for i in range(2000))
    assert {log["@stream"] for log in logs} == {"web-0/app", "web-1/app", "web-2/app"}
    assert all(log["@stream"] == f"{log['host']}/app" for log in logs)
    assert all(log["@timestamp"] == epoch_ms(log["timestamp"]) for log in logs)
    described = boto3.client("logs", endpoint_url=front.moto, region_name=REGION).describe_log_groups(
        logGroupNamePrefix=group
    )["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in described] == [(group, 30)]
    assert front.targets["CreateLogGroup"] == 1 and front.targets["PutRetentionPolicy"] == 1


async def test_throttling_unavailability_and_dropped_connections_lose_nothing_and_lower_concurrency(
    front: CloudWatchFront,
) -> None:
    group = group_name()
    sink = make_sink(
        log_group=group, endpoint_url=front.url, concurrency=4, log_stream="s",
        batch={"max_events": 100, "timeout": "50ms"}, retry={"initial_backoff": "10ms", "max_backoff": "100ms"},
    )  # fmt: skip
    front.throttle_next(6)
    front.unavailable_next(3)
    front.drop_next(2)
    limits: list[float] = []
    driving = driver(sink)
    chunks = [[event(i, now_ms() - 1000) for i in range(c * 100, c * 100 + 100)] for c in range(20)]

    async def watch() -> None:
        while True:
            limits.append(metric("shipper_sink_concurrency_limit", sink=sink.name))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        await deliver(driving, chunks)
    finally:
        watcher.cancel()
    assert {"ThrottlingException", "ServiceUnavailableException", "dropped"} <= set(front.answers)
    logs = front.messages(group)
    assert Counter(log["reqId"] for log in logs) == Counter(f"req-{i}" for i in range(2000))  # none lost, none twice
    assert_within_limits(front)
    assert min(limit for limit in limits if limit) < 4  # throttling halved the requests in flight
    for reason in ("throttled", "service_unavailable", "connection"):
        assert metric("shipper_retries_total", sink=sink.name, reason=reason) >= 1


async def test_partial_rejections_are_counted_by_reason_and_dead_lettered_never_retried(
    front: CloudWatchFront, tmp_path: Path
) -> None:
    group = group_name()
    letters = tmp_path / "dead.ndjson"
    table: dict[str, Any] = {
        "type": "cloudwatch", "inputs": ["app"], "log_group": group, "endpoint_url": front.url, "log_stream": "s",
        "dead_letter": {"path": str(letters)},
    }  # fmt: skip
    config = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": {"cw": table}}, environ={})
    from shipper.config import dead_letter_config
    from shipper.pipeline.deadletter import DeadLetters

    settings = dead_letter_config(config, "cw")
    assert settings is not None
    sink = build_sink(f"cw{next(_names)}", config.sinks["cw"])
    assert isinstance(sink, CloudWatchSink)
    cut = now_ms() - 3_600_000
    front.expired_before_ms = cut  # the group keeps less than this: older events are expired
    events = [event(i, cut - 60_000 + i * 1000) for i in range(120)]  # the first 60 are before the cut
    await deliver(
        SinkDriver(sink, Channel(sink.name, 1 << 24, "block"), dead_letters=DeadLetters(sink.name, settings)), [events]
    )
    landed = {log["reqId"] for log in front.messages(group)}
    assert landed == {f"req-{i}" for i in range(60, 120)}
    assert metric("shipper_events_dropped_total", sink=sink.name, reason="expired") == 60
    assert metric("shipper_events_sent_total", sink=sink.name) == 60
    parked = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
    assert len(parked) == 60 and {p["shipper.dead_letter"]["reason"] for p in parked} == {"expired"}
    assert sum(len(c.events) for c in front.calls if c.answer == "200") == 120  # the rejected were not sent again
    assert_within_limits(front)


async def test_an_invalid_event_is_isolated_by_splitting_and_rejected_alone(front: CloudWatchFront) -> None:
    group = group_name()
    sink = make_sink(log_group=group, endpoint_url=front.url, log_stream="s")
    front.faults.poison = "POISON"
    events = [event(i, now_ms() - 1000, message="POISON" if i == 37 else f"m{i}") for i in range(100)]
    await deliver(driver(sink), [events])
    assert {log["reqId"] for log in front.messages(group)} == {f"req-{i}" for i in range(100)} - {"req-37"}
    assert metric("shipper_events_dropped_total", sink=sink.name, reason="invalid_parameter") == 1
    assert front.answers["InvalidParameterException"] >= 2 and front.violations == []


async def test_refused_credentials_keep_the_data_until_a_refreshed_credential_is_picked_up(
    front: CloudWatchFront, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials from a shared credentials file, rejected (expired); the file gets new keys (as
    a credential process or an operator would): the sink looks the chain up again and delivers."""
    group = group_name()
    credentials = tmp_path / "no-aws-credentials"  # the file the chain reads (aws_env)
    credentials.write_text("[default]\naws_access_key_id = AKIDOLDKEY0000000001\naws_secret_access_key = old\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    front.keys["AKIDOLDKEY0000000001"] = "old"
    front.expire("AKIDOLDKEY0000000001")
    sink = make_sink(
        log_group=group,
        endpoint_url=front.url,
        log_stream="s",
        retry={"initial_backoff": "10ms", "max_backoff": "100ms"},
    )
    driving = driver(sink)
    delivery = asyncio.create_task(deliver(driving, [[event(i, now_ms() - 1000) for i in range(50)]]))
    deadline = time.monotonic() + 10
    while front.answers["ExpiredTokenException"] < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert front.answers["ExpiredTokenException"] >= 3 and not delivery.done()
    assert not driving.healthy and "credentials from shared-credentials-file" in (driving.health.last_error.detail)
    credentials.write_text(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    await asyncio.wait_for(delivery, 20)
    assert len(front.messages(group)) == 50 and driving.healthy
    assert SECRET not in driving.health.last_error.detail


async def test_a_missing_group_that_may_not_be_created_keeps_the_data(front: CloudWatchFront) -> None:
    group = group_name()
    sink = make_sink(
        log_group=group, endpoint_url=front.url, log_stream="s", create_group=False,
        retry={"initial_backoff": "10ms", "max_backoff": "50ms"},
    )  # fmt: skip
    driving = driver(sink)
    delivery = asyncio.create_task(deliver(driving, [[event(i, now_ms() - 1000) for i in range(10)]]))
    deadline = time.monotonic() + 10
    while front.answers["ResourceNotFoundException"] < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not delivery.done() and "create_group = false" in driving.health.last_error.detail
    boto3.client("logs", endpoint_url=front.moto, region_name=REGION).create_log_group(logGroupName=group)
    await asyncio.wait_for(delivery, 20)  # the stream may be created: only the group could not
    assert len(front.messages(group)) == 10 and front.targets["CreateLogGroup"] == 0


async def test_check_names_the_identity_and_the_group_without_writing(
    front: CloudWatchFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", front.url)
    group = group_name()
    result = await make_sink(log_group=group, endpoint_url=front.url).check()
    assert result.ok and "credentials from env" in result.detail and "arn:aws:" in result.detail
    assert "created on the first send" in result.detail
    refused = await make_sink(log_group=group, endpoint_url=front.url, create_group=False).check()
    assert not refused.ok and "create_group = false" in refused.detail
    boto3.client("logs", endpoint_url=front.moto, region_name=REGION).create_log_group(logGroupName=group)
    boto3.client("logs", endpoint_url=front.moto, region_name=REGION).put_retention_policy(
        logGroupName=group, retentionInDays=14
    )
    found = await make_sink(log_group=group, endpoint_url=front.url).check()
    assert found.ok and "reachable (retention 14 days)" in found.detail
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    wrong = await make_sink(log_group=group, endpoint_url=front.url).check()
    assert not wrong.ok and "refused by STS" in wrong.detail and "wrong" not in wrong.detail
    written = {"PutLogEvents", "CreateLogGroup", "CreateLogStream", "PutRetentionPolicy"} & set(front.targets)
    assert written == set()
