"""The direct lane (shipper/parsing/direct.py) writes exactly what the normal path writes.

For sinks that send the normalized fields as JSON, a chunk of lines goes either through the normal
path (parse, normalize, redact, `fill_in`, `FieldsJson`) or through the lane (plain pino lines
copied to their wire form in C; the others the normal way, in their place). Both must give the
same bytes, count the same events and leave the stream's clock where the other leaves it, on any
input: plain lines, lines written in forms msgspec would not write (spaces, other escapes,
duplicate keys, other numbers), secrets, text.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.config import RedactConfig, SourceConfig, WhenConfig, config_from_dict
from shipper.encoding import FIELDS_JSON
from shipper.event import fill_in
from shipper.parsing import Processor, build_processor
from shipper.parsing.direct import FIELDS_FORM, Lane, direct_lines
from shipper.pipeline.routing import Routing
from sinks import build_sink
from tests.conftest import CORPUS, needs_corpus

NOW_MS = int(time.time() * 1000)
needs_lane = pytest.mark.skipif(direct_lines is None, reason="shipper._speedups was not built")

EXTRA = {"file": "/var/log/api.log"}


# The sinks a feed routes to: two that send the normalized fields, or one Datadog sink (tags from
# the level, a service of its own or not).
SINKS: dict[str, dict[str, Any]] = {
    "fields": {"out": {"type": "http", "url": "http://127.0.0.1:9/"}, "copy": {"type": "file", "path": "/tmp/x"}},
    "datadog": {"dd": {"type": "datadog", "api_key": "k", "tags": ["env:prod", "level:{level}"]}},
    "datadog-service": {"dd": {"type": "datadog", "api_key": "k", "service": "billing"}},
    "loki": {"lk": {"type": "loki", "endpoint": "http://127.0.0.1:9"}},
    "loki-labels": {
        "lk": {"type": "loki", "endpoint": "http://127.0.0.1:9", "labels": {"app": "{source}", "env": "prod"}}
    },
    "cloudwatch": {"cw": {"type": "cloudwatch", "region": "us-east-1", "log_group": "/api", "log_stream": "api"}},
}


def fresh(fmt: str = "auto", sinks: str = "fields") -> tuple[Processor, Routing]:
    config = SourceConfig(type="stdin", format=fmt)
    processor = build_processor("api", config, host="agent", redact=RedactConfig())
    tables = {name: {**table, "inputs": ["app"]} for name, table in SINKS[sinks].items()}
    shipper = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": tables}, environ={})
    routes = [(None, name, build_sink(name, sink).preparer()) for name, sink in shipper.sinks.items()]
    return processor, Routing.build(routes)


def normal_way(processor: Processor, routing: Routing, lines: list[bytes], stream: str | None) -> tuple[Any, ...]:
    events = processor.parse(list(lines), stream, NOW_MS / 1000)
    fill_in(events, EXTRA)
    shares = routing.split(events, NOW_MS / 1000)
    return (len(events), *shares[0][1]) if shares else (0, b"", None)  # type: ignore[misc]


def clock_after(processor: Processor, stream: str | None) -> Any:
    """The timestamp the stream's clock gives a following line that shows no time."""
    events = processor.parse([b"text without a time"], stream, NOW_MS / 1000 + 1) + processor.flush(force=True)
    return [event.fields["timestamp"] for event in events]


def compare(chunks: list[list[bytes]], stream: str | None = None, fmt: str = "auto", sinks: str = "fields") -> int:
    """Both ways over the same chunks: the same count, bytes, timestamps as sent and clock. The
    lines the lane took."""
    normal_processor, normal_routing = fresh(fmt, sinks)
    lane_processor, lane_routing = fresh(fmt, sinks)
    taken = 0
    for lines in chunks:
        expected = normal_way(normal_processor, normal_routing, lines, stream)
        direct = lane_routing.direct(lane_processor, b"\n".join(lines), stream, NOW_MS / 1000, EXTRA)
        if direct is None:
            got = normal_way(lane_processor, lane_routing, lines, stream)
        else:
            count, shares = direct
            assert [index for index, _ in shares] == list(range(len(lane_routing.routes)))
            assert all(share == shares[0][1] for _, share in shares)  # every route gets the same logs
            got = (count, *shares[0][1])  # type: ignore[misc]
            taken += len(lines)
        assert got == expected
    assert clock_after(lane_processor, stream) == clock_after(normal_processor, stream)
    return taken


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Datadog's window is judged against now: both ways must see the same now."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)


def pino(**extra: Any) -> dict[str, Any]:
    record = {"level": 30, "time": NOW_MS, "pid": 7, "hostname": "api-1", "reqId": "req-1"}
    record.update(extra)
    record.setdefault("msg", "hello")
    return record


@needs_lane
@pytest.mark.parametrize("sinks", list(SINKS))
def test_plain_pino_lines_are_taken_by_the_lane_and_written_as_the_normal_path_writes_them(sinks: str) -> None:
    lines = [
        orjson.dumps(pino(req={"method": "GET", "url": "/v1/x", "hostname": "h"}, msg="incoming request")),
        orjson.dumps(pino(res={"statusCode": 200}, responseTime=0.5366669893264771, msg="request completed")),
        orjson.dumps(pino(level=50, err={"type": "TypeError", "message": "x", "stack": "TypeError: x\n    at a"})),
        orjson.dumps(pino(level=40, msg='é ☃ \U0001f600 \x1b[31m \\ " \t', tags=["a", 1, 2.5, None, True])),
    ]
    _, routing = fresh(sinks=sinks)
    form = routing._lane[0].lane_form(time.time())
    written = Lane({"service": "api", "source": "api"}, EXTRA, form)
    args = (b"\n".join(lines), bytes(len(lines)), written.forbidden, written.constants, written.extra, -1, "")
    settings = written.settings(form)
    lane = direct_lines(*args) if settings is None else direct_lines(*args, settings)
    assert lane[1] == []  # no line left to the normal path
    assert compare([lines], sinks=sinks) == len(lines)
    old = [orjson.dumps(pino(time=NOW_MS - 30 * 86_400_000)), orjson.dumps(pino(time=NOW_MS + 86_400_000))]
    assert compare([old, lines + old], sinks=sinks) == 2 * len(old) + len(lines)  # out of Datadog's window
    taken_line = lane[0].split(b"\n")[1]
    if sinks.startswith("loki"):  # Loki's line: the fields, escaped as a JSON string's contents
        taken_line = orjson.loads(b'"' + taken_line + b'"')
    taken = orjson.loads(taken_line)
    if sinks == "cloudwatch":  # a log event: the fields are its message
        taken = orjson.loads(taken["message"])
    assert taken["http"] == {"status_code": 200, "duration_ms": 0.5366669893264771}


@needs_lane
@pytest.mark.parametrize("sinks", list(SINKS))
def test_lines_written_otherwise_go_the_normal_way_in_their_place(sinks: str) -> None:
    plain = orjson.dumps(pino())
    odd = [
        b'{"level":30, "time":%d,"hostname":"h","msg":"space"}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"dup","msg":"last wins"}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"\\u00e9 escaped"}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"\\/ slash"}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"n","n":1.50}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"n","n":1e5}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"n","n":-0}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"n","n":123456789012345678901}' % NOW_MS,
        secret := b'{"level":30,"time":%d,"hostname":"h","msg":"password","password":"hunter22"}' % NOW_MS,
        b'{"level":35,"time":%d,"hostname":"h","msg":"custom level"}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"collides","message":"mine"}' % NOW_MS,
        b'{"level":30,"time":%d,"hostname":"h","msg":"own file","file":"mine"}' % NOW_MS,
    ]
    chunk = [plain]
    for line in odd:
        chunk += [line, plain]
    assert compare([chunk], sinks=sinks) == len(chunk)  # the lane served the chunk, leaving the odd lines
    written = Lane({"service": "api", "source": "api"}, EXTRA, FIELDS_FORM)
    flagged = bytes(index == 2 * odd.index(secret) + 1 for index in range(len(chunk)))  # as the prefilter flags it
    lane = direct_lines(b"\n".join(chunk), flagged, written.forbidden, written.constants, written.extra, -1, "")
    assert lane[1] == list(range(1, len(chunk), 2))


DECIMALS = [
    *("5.0", "0.0", "-0.0", "1.5", "-12.25", "0.001", "0.0001", "0.00001", "0.000123", "1.50", "2.10", "10.0"),
    *("123456789012345.0", "1234567890123456.0", "12345678901234.5", "1234567890123456.7", "9007199254740993.0"),
    *("0.1234567890123456", "0.123456789012345", "0.30000000000000004", "0.5366669893264771", "99999999999999.99"),
]


@needs_lane
@pytest.mark.parametrize("sinks", ["fields", "datadog"])
def test_a_decimal_is_taken_as_written_only_when_it_is_pythons_repr_of_its_value(sinks: str) -> None:
    """The lane writes a decimal as it is only when msgspec would write the same: Python's shortest
    repr. Short ones it accepts on sight, the others it converts to judge."""
    lines = [b'{"level":30,"time":%d,"hostname":"h","msg":"n","n":%s}' % (NOW_MS, text.encode()) for text in DECIMALS]
    written = Lane({"service": "api", "source": "api"}, EXTRA, FIELDS_FORM)
    lane = direct_lines(
        b"\n".join(lines), bytes(len(lines)), written.forbidden, written.constants, written.extra, -1, ""
    )
    assert [DECIMALS[index] for index in lane[1]] == [text for text in DECIMALS if repr(float(text)) != text]
    assert compare([lines], sinks=sinks) == len(lines)


@needs_lane
def test_a_string_is_judged_the_same_whatever_the_offset_of_its_odd_byte() -> None:
    """The lane reads plain string bytes eight at a time: an escape, a multi-byte character or a
    byte JSON forbids is found wherever it falls in those eight."""
    odd = [
        b'\\"',
        b"\\\\",
        b"\\n",
        "\u00e9".encode(),
        "\u2603".encode(),
        b"\\u001b",
        b"\x7f",
        b"\x01",
        b"\\u00e9",
        b"\\/",
        b"\xff",
    ]
    lines = [
        b'{"level":30,"time":%d,"hostname":"h","msg":"%s"}' % (NOW_MS, b"a" * offset + piece + b"b" * (17 - offset))
        for piece in odd
        for offset in range(18)
    ]
    written = Lane({"service": "api", "source": "api"}, EXTRA, FIELDS_FORM)
    lane = direct_lines(
        b"\n".join(lines), bytes(len(lines)), written.forbidden, written.constants, written.extra, -1, ""
    )
    left = {odd[index // 18] for index in lane[1]}
    assert left == {b"\x01", b"\\u00e9", b"\\/", b"\xff"}  # not JSON, or not as msgspec writes it
    assert len(lane[1]) == 4 * 18
    assert compare([[line for line in lines if b"\x01" not in line and b"\xff" not in line]]) > 0


@needs_lane
def test_a_secret_in_a_lane_chunk_is_redacted() -> None:
    processor, routing = fresh()
    lines = [
        orjson.dumps(pino()),
        orjson.dumps(pino(msg="login", password="hunter22", user={"pass_word": "s3cret-value"})),
    ]
    direct = routing.direct(processor, b"\n".join(lines), None, NOW_MS / 1000, EXTRA)
    assert direct is not None
    body = direct[1][0][1][0]  # type: ignore[index]
    assert b"hunter22" not in body and b"s3cret-value" not in body
    assert orjson.loads(body.split(b"\n")[1])["password"] == "[REDACTED]"


@needs_lane
@pytest.mark.parametrize(("sinks", "time_of"), [("cloudwatch", 0), ("loki", 1), ("datadog", None)])
def test_a_replayed_chunk_is_re_stamped_to_one_time_whichever_way_each_line_went(
    sinks: str, time_of: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old lines re-stamped to now stay in order: those the lane wrote and one the normal way took
    (a secret to redact) get the chunk's time, not the clock's at each step (CloudWatch and Loki
    would have to sort every batch again)."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(time, "time", lambda: NOW_MS / 1000 + next(ticks) * 0.005)  # 5 ms on at each reading
    old = NOW_MS - 30 * 86_400_000
    lines = [orjson.dumps(pino(time=old + offset, msg=f"m{offset}")) for offset in range(6)]
    lines[2] = orjson.dumps(pino(time=old + 2, msg="login", password="hunter22"))
    processor, routing = fresh(sinks=sinks)
    direct = routing.direct(processor, b"\n".join(lines), None, NOW_MS / 1000, EXTRA)
    assert direct is not None
    _, stamps = direct[1][0][1]  # type: ignore[misc]
    assert stamps is not None and len(stamps) == len(lines)
    sent = [stamp if time_of is None else stamp[time_of] for stamp in stamps]
    assert len(set(sent)) == 1, sent


@needs_lane
def test_chunks_the_lane_does_not_serve_are_parsed_the_normal_way() -> None:
    text = [orjson.dumps(pino()), b"plain text line", b"    at continuation (file.js:1:1)"]
    crlf = [orjson.dumps(pino()) + b"\r"]
    invalid = [orjson.dumps(pino()), b"{not json"]
    undecodable = [orjson.dumps(pino()), b'{"level":30,"msg":"bad utf-8 \xff"}']
    for chunk in (text, crlf, invalid, undecodable):
        processor, routing = fresh()
        assert routing.direct(processor, b"\n".join(chunk), None, NOW_MS / 1000, EXTRA) is None
    records = [orjson.dumps(pino(time=NOW_MS + 5)), orjson.dumps(pino(time=NOW_MS + 9))]
    # After a chunk with text the lane waits for a chunk of records only (parsed the normal way).
    assert compare([text, records, records, invalid, records, records], stream="stdout") == 2 * len(records)
    processor, routing = fresh("nest-json")  # Nest JSON records are never the lane's
    assert routing.direct(processor, orjson.dumps(pino()), None, NOW_MS / 1000, EXTRA) is None


def datadog_preparer(**options: Any) -> Any:
    table = {"type": "datadog", "inputs": ["app"], "api_key": "k", **options}
    config = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": {"dd": table}}, environ={})
    return build_sink("dd", config.sinks["dd"]).preparer()


def cloudwatch_preparer(**options: Any) -> Any:
    table = {"type": "cloudwatch", "inputs": ["app"], "region": "us-east-1", "log_group": "/api", **options}
    config = config_from_dict({"sources": {"app": {"type": "stdin"}}, "sinks": {"cw": table}}, environ={})
    return build_sink("cw", config.sinks["cw"]).preparer()


@needs_lane
def test_routes_the_lane_cannot_write_for_are_not_served() -> None:
    processor, _ = fresh()
    line = orjson.dumps(pino())
    not_served = [
        [(None, "out", FIELDS_JSON), (WhenConfig(level="error"), "errors", FIELDS_JSON)],  # a filter
        [(None, "dd", datadog_preparer()), (None, "out", FIELDS_JSON)],  # Datadog beside another sink
        [(None, "dd", datadog_preparer(tags=["req:{reqId}"]))],  # a tag filled from another field
        [(None, "dd", datadog_preparer(out_of_range="drop"))],  # old logs dropped (the normal way)
        [(None, "cw", cloudwatch_preparer(log_stream="{host}/{source}"))],  # a stream named from the fields
        [(None, "cw", cloudwatch_preparer(log_stream="api", message="raw"))],  # the line as read
    ]
    for routes in not_served:
        assert Routing.build(routes).direct(processor, line, None, NOW_MS / 1000, EXTRA) is None
    for extra in ({"service": "x"}, {"status": "x"}):  # extra fields the lane cannot place
        routing = Routing.build([(None, "dd", datadog_preparer())])
        assert routing.direct(processor, line, None, NOW_MS / 1000, extra) is None
    assert Routing.build([(None, "dd", datadog_preparer())]).direct(processor, line, None, NOW_MS / 1000, EXTRA)


# Values as a JSON producer may write them: every kind, escapes, Unicode, numbers of every form.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["\x00", "\x1b[0m", "\u2028", "a\\b", 'q"', "\ud7ff", "\U0010ffff", "\x7f"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
level = st.one_of(st.sampled_from([10, 20, 30, 40, 50, 60, 35]), scalars)
stamp = st.integers(NOW_MS - 40 * 86_400_000, NOW_MS + 86_400_000)  # Datadog's window inside
request = st.one_of(
    st.fixed_dictionaries({"method": st.sampled_from(["GET", "POST"]), "url": st.text(max_size=6)}),
    st.fixed_dictionaries({"method": st.just("GET")}),
    values,
)
response = st.one_of(st.fixed_dictionaries({"statusCode": st.sampled_from([200, 500])}), st.just({}), values)
special = st.sampled_from(
    [
        "req",
        "res",
        "responseTime",
        "http",
        "message",
        "host",
        "service",
        "stream",
        "file",
        "password",
        "status",
        "ddtags",
    ]
)


# What a plain pino record holds, each drawn odd now and then.
plain = {
    "level": st.sampled_from([10, 20, 30, 40, 50, 60]),
    "time": stamp,
    "pid": st.integers(1, 99999),
    "hostname": st.just("api-1"),
    "msg": st.text(max_size=8),
}
odd = {"level": level, "time": st.one_of(st.sampled_from([99_999_999_999, 0, -5]), scalars), "hostname": scalars}


@st.composite
def line(draw: st.DrawFn) -> bytes:
    record: dict[str, Any] = {}
    for key in draw(st.permutations(list(plain))):
        if draw(st.integers(0, 12)):
            record[key] = draw(odd.get(key, values) if draw(st.integers(0, 6)) == 0 else plain[key])
    for key in draw(st.lists(st.one_of(special, st.text(max_size=5)), max_size=3, unique=True)):
        record[key] = draw(
            {"req": request, "res": response, "responseTime": st.one_of(st.floats(0, 9), values)}.get(key, values)
        )
    form = draw(st.integers(0, 9))
    if form == 0:  # spaces and \u escapes: another producer's JSON
        return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if form == 1 and record:  # a duplicate key
        first = next(iter(record))
        return compact(record)[:-1] + b"," + compact(first) + b":" + compact(draw(scalars)) + b"}"
    return compact(record)


def compact(value: Any) -> bytes:
    """Compact JSON as pino writes it; big integers and lone surrogates as JSON.stringify would."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


@needs_lane
@pytest.mark.parametrize("sinks", list(SINKS))
@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.lists(line(), min_size=1, max_size=6), min_size=1, max_size=3),
    stream=st.sampled_from([None, "stdout"]),
)
def test_the_lane_writes_what_the_normal_path_writes_on_any_lines(
    chunks: list[list[bytes]], stream: str | None, sinks: str
) -> None:
    compare(chunks, stream, sinks=sinks)


@needs_lane
@needs_corpus
@pytest.mark.parametrize("sinks", list(SINKS))
def test_the_lane_writes_what_the_normal_path_writes_on_the_fastify_corpus(sinks: str) -> None:
    lines = (CORPUS / "fastify-pino.ndjson").read_bytes().splitlines()
    records = [line for line in lines if line.startswith(b"{")]
    random.Random(7).shuffle(records)
    chunks = [records[start : start + 50] for start in range(0, len(records), 50)]
    assert compare(chunks, "stdout", sinks=sinks) == len(records)


@needs_lane
def test_a_reload_that_changes_a_sink_changes_what_the_lane_writes() -> None:
    processor, _ = fresh()
    line = orjson.dumps(pino())
    for service in ("billing", "payments", "billing"):  # the same feed, its sink reloaded
        routing = Routing.build([(None, "dd", datadog_preparer(service=service))])
        direct = routing.direct(processor, line, None, NOW_MS / 1000, EXTRA)
        assert direct is not None
        assert orjson.loads(direct[1][0][1][0])["service"] == service  # type: ignore[index]
