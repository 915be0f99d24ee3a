"""Every corpus capture through the real parser: counts, levels, grouping, timestamps, fidelity.

The corpus (real Fastify 5 / pino 10 and NestJS 12 output, described in FORMATS.md) lives in
`shared/corpus` beside the repository.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.config import RedactConfig, SourceConfig
from shipper.event import Event
from shipper.parsing import build_processor
from tests.conftest import CORPUS, needs_corpus

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parsing"
RECEIVED = datetime(2026, 11, 23, 0, 48, 30, tzinfo=UTC).timestamp()  # just after every capture
WINDOW = (datetime(2026, 11, 23, 0, 47, tzinfo=UTC), datetime(2026, 11, 23, 0, 49, tzinfo=UTC))
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ANSI = re.compile(r"\x1b\[")
CONTINUATION = re.compile(rb"(\s|at |\}|\]|\.\.\. |\[cause\]|caused by)")

pytestmark = needs_corpus


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def parse(lines: list[bytes], timezone: str = "UTC", fmt: str = "auto", stream: str | None = "stdout") -> list[Event]:
    config = SourceConfig(type="file", timezone=timezone, format=fmt)  # type: ignore[arg-type]
    processor = build_processor("api", config, host="agent-host", redact=RedactConfig())
    events = processor.parse(lines, stream, RECEIVED) + processor.flush(force=True)
    assert processor.held_bytes == 0
    return events


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)] + [k for k in value if isinstance(k, str)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def check_common(events: list[Event], lines: list[bytes]) -> None:
    """Invariants every capture must satisfy."""
    # Lossless: the raws, joined, are the file (no secret in the corpus, so raw is untouched).
    assert b"\n".join(event.raw for event in events) == b"\n".join(lines)
    for event in events:
        fields = event.fields
        assert RFC3339.fullmatch(fields["timestamp"]), fields["timestamp"]
        stamp = datetime.fromisoformat(fields["timestamp"])
        assert WINDOW[0] <= stamp <= WINDOW[1], fields["timestamp"]
        assert fields["level"] in ("trace", "debug", "info", "warn", "error", "fatal")
        assert isinstance(fields["message"], str)
        assert fields["service"] == "api" and fields["source"] == "api" and fields["stream"] == "stdout"
        assert isinstance(fields["host"], str)
        assert not any(ANSI.search(text) for text in strings(fields)), fields
        # No event starts with a stack frame or another bare continuation line.
        first = re.sub(rb"\x1b\[[0-9;]*m", b"", event.raw.split(b"\n", 1)[0])
        assert not CONTINUATION.match(first), first
        if "err" in fields:
            assert {"type", "message", "stack"} <= fields["err"].keys()


def levels(events: list[Event]) -> Counter[str]:
    return Counter(event.fields["level"] for event in events)


def test_fastify_pino() -> None:
    lines = lines_of(CORPUS / "fastify-pino.ndjson")
    events = parse(lines)
    assert len(events) == 2859
    assert Counter(event.fields["level_num"] for event in events) == {30: 2680, 40: 88, 50: 90, 60: 1}
    assert levels(events) == {"info": 2680, "warn": 88, "error": 90, "fatal": 1}
    check_common(events, lines)
    for line, event in zip(lines, events, strict=True):
        original = orjson.loads(line)
        fields = event.fields
        assert event.raw == line
        # pino fields survive: level -> level_num, msg -> message, hostname -> host, the rest unchanged.
        for key, value in original.items():
            renamed = {"level": "level_num", "msg": "message", "hostname": "host"}.get(key, key)
            assert fields[renamed] == value, key
        assert fields["timestamp"] == datetime.fromtimestamp(original["time"] / 1000, UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
        if "req" in original:
            assert fields["http"]["method"] == original["req"]["method"]
            assert fields["http"]["url"] == original["req"]["url"]
        if "res" in original:
            assert fields["http"]["status_code"] == original["res"]["statusCode"]
        if "responseTime" in original:
            assert fields["http"]["duration_ms"] == original["responseTime"]
    # 4xx errors are logged at level 30 with a full err: the level stays, the err stays.
    validation = [e for e in events if e.fields.get("err", {}).get("code") == "FST_ERR_VALIDATION"]
    assert validation and all(e.fields["level"] == "info" for e in validation)
    assert all("\n    at " in e.fields["err"]["stack"] for e in validation)
    assert any("\n" in e.fields["message"] and "\t" in e.fields["message"] for e in events)


def test_fastify_pretty() -> None:
    lines = lines_of(CORPUS / "fastify-pretty.log")
    events = parse(lines)
    assert len(events) == 747
    assert levels(events) == {"info": 696, "warn": 24, "error": 26, "fatal": 1}
    check_common(events, lines)
    assert all(e.raw.startswith(b"[00:47:") for e in events)
    first = events[0].fields
    assert first["timestamp"] == "2026-11-23T00:47:26.845Z"
    assert first["message"] == "Server listening at http://127.0.0.1:3103"
    assert first["pid"] == 30917
    # The `msg` with a newline continues at column 0 and stays in the message.
    multi = [e for e in events if e.fields["message"].startswith("multi-line")]
    assert multi[0].fields["message"] == 'multi-line\nmessage with\ttab and "quotes"'
    assert multi[0].fields["reqId"] == "req-k"
    # Continuation fields are parsed back into structure, expanded stacks into one string.
    errors = [e.fields for e in events if e.fields["level"] == "error" and "err" in e.fields]
    assert errors and all(f["err"]["stack"].startswith(f["err"]["type"]) for f in errors)
    assert all("\n    at " in f["err"]["stack"] for f in errors)
    caused = [f for f in errors if "caused by" in f["err"]["stack"]]
    assert caused and caused[0]["err"]["code"] == "E_BALANCE"
    completed = [e.fields for e in events if e.fields["message"] == "request completed"]
    assert all(isinstance(f["http"]["status_code"], int) for f in completed)
    assert all(isinstance(f["responseTime"], float) for f in completed)


@pytest.mark.parametrize("name", ["nest-text-plain.log", "nest-text-color.log"])
def test_nest_text(name: str) -> None:
    lines = lines_of(CORPUS / name)
    events = parse(lines)
    assert len(events) == 72  # 71 header lines plus Node's crash printout
    assert levels(events) == {"info": 38, "trace": 5, "debug": 8, "warn": 8, "error": 10, "fatal": 3}
    check_common(events, lines)
    headers = [e for e in events[:-1]]
    assert all(re.sub(rb"\x1b\[[0-9;]*m", b"", e.raw).startswith(b"[Nest] ") for e in headers)
    stamps = [e.fields["timestamp"] for e in headers]
    assert stamps == sorted(stamps)  # one-second timestamps keep arrival order
    assert all(e.fields["pid"] in (31709, 31830) for e in headers)
    by_message = {e.fields["message"]: e.fields for e in headers}
    assert by_message["AppModule dependencies initialized"]["elapsed_ms"] == 7
    assert by_message["AppModule dependencies initialized"]["context"] == "InstanceLoader"
    assert by_message["Error: database connection lost"]["context"] == "ExceptionsHandler"
    assert "multi-line\nmessage with\ttab" in by_message
    obj = [f for f in by_message.values() if f["message"].startswith("Object(5) {")]
    assert obj and obj[0]["message"].endswith("\n}")
    # logger.error(msg, stack): the message is the first line, the stack an err.
    charge = by_message["charge failed: payment gateway rejected charge for user 7"]
    assert charge["err"]["type"] == "Error" and len(charge["err"]["stack"].split("\n")) == 11
    # An error with a cause: the whole util.inspect block is the stack.
    cause = by_message["Error: payment gateway rejected charge for user 42"]
    assert "[cause]: TypeError" in cause["err"]["stack"] and cause["err"]["stack"].endswith("}")
    crash = events[-1].fields
    assert events[-1].raw.startswith(b"file:///srv/app/nest-app/dist/app.controller.js:82")
    assert events[-1].raw.endswith(b"Node.js v20.20.2")
    assert crash["level"] == "fatal"
    assert crash["err"]["message"] == "unhandled failure in background job"
    assert crash["timestamp"] == events[-2].fields["timestamp"]  # no time printed: the event before's
    assert crash["shipper.time_estimated"] is True


def test_nest_json() -> None:
    lines = lines_of(CORPUS / "nest-json.ndjson")
    events = parse(lines)
    assert len(events) == 72  # 71 records plus the crash printout (10 lines, 2 blank)
    assert levels(events) == {"info": 38, "trace": 5, "debug": 8, "warn": 8, "error": 10, "fatal": 3}
    check_common(events, lines)
    records = [orjson.loads(line) for line in lines[:71]]
    for record, event in zip(records, events, strict=False):
        fields = event.fields
        assert fields["context"] == record["context"] and fields["pid"] == record["pid"]
        assert fields["timestamp"] == datetime.fromtimestamp(record["timestamp"] / 1000, UTC).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
        if isinstance(record["message"], dict):
            assert orjson.loads(fields["message"]) == record["message"]
        if "params" in record:
            assert fields["params"] == record["params"]
        if "error" in record:
            assert fields["err"]["type"] == record["error"]["name"]
            assert fields["err"]["stack"] == record["error"]["stack"]
            if "cause" in record["error"]:
                assert fields["err"]["cause"]["type"] == record["error"]["cause"]["name"]
        if "stack" in record:
            assert fields["err"]["stack"] == record["stack"]
            assert fields["err"]["message"] == record["stack"].split("\n")[0].split(": ", 1)[1]
    assert events[-1].fields["level"] == "fatal" and events[-1].raw.count(b"\n") == 9


def test_nest_text_de_de_in_berlin() -> None:
    """`LANG=de_DE TZ=Europe/Berlin`: `23.11.2026, 01:47:56` is 00:47:56Z."""
    lines = lines_of(FIXTURES / "nest-text-plain-de_DE.log")
    events = parse(lines, timezone="Europe/Berlin")
    assert len(events) == 46
    check_common(events, lines)
    assert all(e.fields["timestamp"].startswith("2026-11-23T00:47:50.") for e in events[:-1])
    assert "original_timestamp" not in events[0].fields


def interleaved_mixed_stream() -> tuple[list[bytes], int, int]:
    """Nest on the Fastify adapter: coloured Nest blocks and pino lines sharing one stream."""
    nest = lines_of(CORPUS / "nest-text-color.log")
    pino = lines_of(CORPUS / "fastify-pino.ndjson")[:400]
    blocks: list[list[bytes]] = []
    for line in nest:
        if (line.startswith(b"\x1b[") and b"[Nest] " in line[:20]) or line.startswith(b"file:///") or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    mixed: list[bytes] = []
    for index, block in enumerate(blocks):
        mixed.extend(block)
        mixed.extend(pino[index * 5 : index * 5 + (index % 6)])
    pino_count = sum(1 for line in mixed if line.startswith(b'{"level":'))
    return mixed, len(blocks), pino_count


def test_mixed_pino_and_coloured_nest() -> None:
    lines, nest_events, pino_events = interleaved_mixed_stream()
    events = parse(lines)
    assert len(events) == nest_events + pino_events
    check_common(events, lines)
    pino = [e for e in events if "level_num" in e.fields]
    nest = [e for e in events if "level_num" not in e.fields]
    assert len(pino) == pino_events and len(nest) == nest_events
    assert levels(nest) == {"info": 38, "trace": 5, "debug": 8, "warn": 8, "error": 10, "fatal": 3}
    assert all(e.raw.startswith(b'{"level":') and b"\n" not in e.raw for e in pino)
    assert all(b"{" not in e.raw[:1] for e in nest)
    alone = parse(lines_of(CORPUS / "nest-text-color.log"))
    assert [e.fields["message"] for e in nest] == [e.fields["message"] for e in alone]
    assert [e.fields.get("err") for e in nest] == [e.fields.get("err") for e in alone]


def test_explicit_format_narrows_recognition() -> None:
    """format = "pino": Nest lines are not recognised, so they and their stacks become text events."""
    lines = lines_of(CORPUS / "nest-text-plain.log")
    events = parse(lines, fmt="pino")
    check_common(events, lines)
    assert 72 < len(events) < 211  # frames stay with their line, header lines do not merge
    assert all(e.fields["timestamp"] == "2026-11-23T00:48:30.000Z" for e in events)


# ------------------------------------------------------------------------- no line is lost

NEST_HEADER = re.compile(
    r"\[Nest\] \d+  - .+? +(?:LOG|ERROR|WARN|DEBUG|VERBOSE|FATAL) (?:\[[^\]]*\] ?)?(.*?)(?: \+\d+ms)?"
)
PRETTY_HEADER = re.compile(r"\[\d\d:\d\d:\d\d\.\d{3}\] (?:TRACE|DEBUG|INFO|WARN|ERROR|FATAL) \(\d+\):(?: (.*))?")
# A pino-pretty body line that became a field: `    key: value` (or `"key": value` inside an object block).
PRETTY_FIELD = re.compile(r'\s+"?([^\s":][^":]*?)"?: ?.*')
NODE_LINE = re.compile(r"Node\.js (v\d\S*)")  # the last line of Node's crash printout
PUNCTUATION = re.compile(r"[\[\]{},]+")
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


def field_strings(value: Any) -> list[str]:
    """Every string an event ships: keys and values, recursively, numbers as text."""
    if isinstance(value, dict):
        return [*value.keys(), *(s for item in value.values() for s in field_strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in field_strings(item)]
    if isinstance(value, str):
        return [value]
    return [] if value is None else [str(value)]


def is_json(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def json_scalar(text: str) -> str | None:
    """A JSON number or string as the text a field holds, else None."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return str(value) if isinstance(value, str | int | float) else None


def lost_lines(events: list[Event]) -> list[str]:
    """Lines of each event's raw that its fields do not carry (see `carries`)."""
    lost: list[str] = []
    for event in events:
        strings = field_strings(event.fields)
        pretty = PRETTY_HEADER.fullmatch(ANSI_CODES.sub("", event.raw.decode().split("\n", 1)[0])) is not None
        for raw in event.raw.split(b"\n"):
            line = ANSI_CODES.sub("", raw.decode())
            if line.strip() and not is_json(raw) and not carries(event.fields, strings, line, pretty):
                lost.append(line)
    return lost


def carries(fields: dict[str, Any], strings: list[str], line: str, pretty: bool) -> bool:
    """Whether an event's fields carry one of its lines. A line the parser read into structure is
    checked for what it carries: a Nest or pino-pretty header's message, the `Node.js vX` line's
    `node.version`, a pretty body line's key or array item; every other line (frames, the crash
    printout, continuation and plain text) must appear as written (colours removed, trimmed)."""
    text = line.strip()
    node = NODE_LINE.fullmatch(text)
    if node is not None:
        return fields.get("node") == {"version": node.group(1)}
    header = NEST_HEADER.fullmatch(line) or PRETTY_HEADER.fullmatch(line)
    if header is not None:
        text = (header.group(1) or "").strip()
    elif pretty:
        field = PRETTY_FIELD.fullmatch(line)
        if (field is not None and field.group(1) in strings) or PUNCTUATION.fullmatch(text):
            return True
        value = json_scalar(text.removesuffix(","))  # an item of an object block's array
        text = text if value is None else value
    return any(text in s for s in strings)


@pytest.mark.parametrize(
    "name",
    ["fastify-pino.ndjson", "fastify-pretty.log", "nest-json.ndjson", "nest-text-color.log", "nest-text-plain.log"],
)
def test_every_line_is_in_the_shipped_fields(name: str) -> None:
    """Sinks ship fields, not raw lines: a line only in `raw` is a line lost (issue #10 §2)."""
    lines = lines_of(CORPUS / name)
    events = parse(lines)
    assert b"\n".join(event.raw for event in events) == b"\n".join(lines)
    assert lost_lines(events) == []
