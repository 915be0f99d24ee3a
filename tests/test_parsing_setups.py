"""Popular Node logging setups beyond the corpus's defaults, captured from the real npm packages.

`tests/fixtures/formats/capture.js` (versions pinned in its package.json) wrote every capture
here: nest-winston's nestLike, pino with epoch seconds, Google's and Elastic's pino formats,
winston's printf and json formats, Nest ConsoleLogger options, pino-pretty `--singleLine`.
Expected values are read from the captured lines themselves (the time a line prints, the JSON a
record holds), never from the parser.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import parse_worker, workers
from shipper.config import RedactConfig, SourceConfig, config_from_dict
from shipper.event import Event
from shipper.parsing import build_processor
from shipper.parsing.records import LEVEL_BY_WORD
from sinks import build_sink
from tests.test_parsing_corpus import lines_of

CAPTURES = Path(__file__).resolve().parent / "fixtures" / "formats"
RECEIVED = datetime(2026, 12, 3, 18, 45, tzinfo=UTC).timestamp()  # just after every capture
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What a header says in other words (a level, the Nest/nestLike app name, a 12-hour clock).
HEADER_WORDS = {word.upper() for word in LEVEL_BY_WORD} | {"MYAPP", "NEST"}
STACK_HEAD = "Error: database connection lost\n    at boom ("


def parse(lines: list[bytes], **options: Any) -> list[Event]:
    config = SourceConfig(type="file", timezone="UTC", **options)
    processor = build_processor("api", config, host="agent-host", redact=RedactConfig())
    events = processor.parse(lines, "stdout", RECEIVED) + processor.flush(force=True)
    assert processor.held_bytes == 0
    return events


def capture(name: str) -> tuple[list[bytes], list[Event]]:
    """A capture's lines and its events, checked to lose nothing: the raws are the file, and every
    line's text is in its event's fields (a level stated by a line is never guessed)."""
    lines = lines_of(CAPTURES / name)
    events = parse(lines)
    assert b"\n".join(event.raw for event in events) == b"\n".join(lines)
    for event in events:
        texts = orjson.dumps(event.fields).decode()
        for line in event.raw.split(b"\n"):
            plain = ANSI.sub("", line.decode())
            if not plain.startswith("{"):
                for word in re.findall(r"[\w.]{4,}", plain):
                    if word.upper() not in HEADER_WORDS and not re.fullmatch(r"[\d.]+(?:ms)?", word):
                        assert word in texts, (word, event.fields)
    return lines, events


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return match.group(1)


def field(events: list[Event], key: str) -> list[Any]:
    return [event.fields.get(key) for event in events]


def assert_db_error(err: dict[str, Any], **extra: Any) -> None:
    assert err["type"] == "Error" and err["message"] == "database connection lost"
    assert err["stack"].startswith(STACK_HEAD) and err["stack"].rstrip("}").rstrip().endswith(":28:49")
    for key, value in extra.items():
        assert err[key] == value


@pytest.mark.parametrize("name", ["nest-winston-nestlike.log", "nest-winston-nestlike-plain.log"])
def test_nest_winston_nestlike_reads_level_time_context_and_meta(name: str) -> None:
    lines, events = capture(name)
    heads = [ANSI.sub("", line.decode()) for line in lines if "[MyApp]" in ANSI.sub("", line.decode())]
    assert len(events) == len(heads) == 7
    # winston's levels: `info` prints LOG, and its `verbose` ranks above `debug`.
    assert field(events, "level") == ["info", "info", "warn", "debug", "debug", "error", "error"]
    assert field(events, "context") == [found(r"(?:AM|PM) +\w+ \[(\w+)\] ", head) for head in heads]
    for head, event in zip(heads, events, strict=True):
        stamp = found(r"\[MyApp\] \d+ +(.+?(?:AM|PM))", head)
        second = datetime.strptime(stamp, "%m/%d/%Y, %I:%M:%S %p").replace(tzinfo=UTC)
        assert event.fields["timestamp"].startswith(second.isoformat()[:19])
        assert event.fields["pid"] == int(found(r"\[MyApp\] (\d+)", head))
        last = ANSI.sub("", event.raw.decode())  # the `+Nms` comes after the meta, if any
        assert event.fields["elapsed_ms"] == int(found(r" \+(\d+)ms$", last))
    assert field(events, "message") == [
        "Starting Nest application...",
        "sms queued",
        "queue is backing up",
        "debug detail",
        "verbose detail",
        "database connection lost",
        "request failed",
    ]
    assert events[1].fields["smsId"] == "sms_124" and events[1].fields["retry"] is False
    assert_db_error(events[5].fields["err"], code="E_DB")  # nest-winston's `error: {...own props}`
    assert_db_error(events[6].fields["err"])
    assert "err" not in events[4].fields


def test_pino_epoch_seconds_are_dated_by_magnitude() -> None:
    lines, events = capture("pino-unixtime.ndjson")
    records = [orjson.loads(line) for line in lines]
    assert [e.fields["timestamp"] for e in events] == [utc(r["time"] * 1000) for r in records]
    assert field(events, "level") == ["info", "warn", "error"] and field(events, "level_num") == [30, 40, 50]
    assert field(events, "message") == [r["msg"] for r in records] and events[1].fields["depth"] == 812
    assert_db_error(events[2].fields["err"], code="E_DB")


@pytest.mark.parametrize("scale", [1, 1000, 1_000_000, 1_000_000_000])
def test_every_numeric_epoch_is_read_the_same_way(scale: int) -> None:
    """Seconds, ms, µs or ns: pino's `time` (the fast path and the careful one) and JSON `timestamp`."""
    now_ms = int(datetime.now(UTC).timestamp()) * 1000 + 250
    number = now_ms * scale // 1000
    lines = [
        orjson.dumps({"level": 30, "time": number, "pid": 1, "hostname": "h", "msg": "fast path"}),
        orjson.dumps({"level": 30, "time": number, "msg": "no hostname"}),
        orjson.dumps({"level": "log", "pid": 1, "timestamp": number, "message": "nest json"}),
        orjson.dumps({"severity": "INFO", "timestamp": number, "message": "gcp"}),
    ]
    expected = utc(now_ms if scale > 1 else now_ms - 250)
    assert [e.fields["timestamp"] for e in parse(lines)] == [expected] * 4


@pytest.mark.parametrize("name", ["pino-gcp.ndjson", "pino-severity.ndjson"])
def test_cloud_logging_severity_and_timestamp(name: str) -> None:
    lines, events = capture(name)
    records = [orjson.loads(line) for line in lines if line.startswith(b"{")]
    by_severity = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "fatal"}
    json_events = [e for e in events if "severity" in e.fields]
    assert [e.fields["severity"] for e in json_events] == [r["severity"] for r in records]
    levels = [e.fields["level"] for e in json_events]
    if "level" in records[0]:  # Google's package also writes pino's number, which is finer (trace)
        assert levels[:6] == ["trace", "debug", "info", "warn", "error", "fatal"]
    else:
        assert levels == [by_severity[r["severity"]] for r in records]
    for record, event in zip(records, json_events, strict=True):
        stamp = record.get("time") or record["timestamp"]
        ms = stamp["seconds"] * 1000 + stamp["nanos"] // 1_000_000 if isinstance(stamp, dict) else None
        expected = utc(ms) if ms is not None else stamp
        assert event.fields["timestamp"] == expected and "original_timestamp" not in event.fields
        assert event.fields["message"] == record.get("message", "")
    assert_db_error(json_events[4].fields["err"], code="E_DB")


@pytest.mark.parametrize(
    ("key", "word", "level"),
    [
        *[
            ("severity", word, level)
            for word, level in [
                ("DEFAULT", "info"),
                ("DEBUG", "debug"),
                ("INFO", "info"),
                ("NOTICE", "info"),
                ("WARNING", "warn"),
                ("ERROR", "error"),
                ("CRITICAL", "fatal"),
                ("ALERT", "fatal"),
                ("EMERGENCY", "fatal"),
            ]
        ],
        ("log.level", "warn", "warn"),
        ("lvl", "eror", "info"),
        ("lvl", "error", "error"),
        ("levelname", "WARNING", "warn"),
        ("levelname", "CRITICAL", "fatal"),
    ],
)
def test_level_fields_other_tools_write(key: str, word: str, level: str) -> None:
    (event,) = parse([orjson.dumps({key: word, "message": "m"})])
    assert event.fields["level"] == level and event.fields[key] == word


def test_a_level_word_in_status_is_the_level_as_in_a_datadog_log_object() -> None:
    """A Datadog sink's dead letters hold its log objects: read back, their `status` is the level.
    An HTTP status or another word there states no level."""
    events = parse([b'{"status":"error","message":"m"}', b'{"status":500,"message":"m"}', b'{"status":"done"}'])
    assert [(event.fields["level"], event.fields["status"]) for event in events] == [
        ("error", "error"),
        ("info", 500),
        ("info", "done"),
    ]


def test_ecs_log_level_dotted_or_nested() -> None:
    lines, events = capture("pino-ecs.ndjson")
    records = [orjson.loads(line) for line in lines]
    assert field(events, "level") == [r["log.level"] for r in records]  # ECS words are ours
    assert field(events, "timestamp") == [r["@timestamp"] for r in records]
    err = events[3].fields["err"]
    assert_db_error(err)  # ECS's `error.stack_trace` is the stack
    (nested,) = parse([b'{"log":{"level":"error","logger":"app"},"message":"m"}'])
    assert nested.fields["level"] == "error" and nested.fields["log"] == {"level": "error", "logger": "app"}


# winston's info, warn, http, verbose, debug, silly, error
WINSTON_LEVELS = ["info", "warn", "info", "debug", "debug", "trace", "error"]


def test_winston_printf_text_reads_level_and_time() -> None:
    lines, events = capture("winston-printf.log")
    heads = [line.decode() for line in lines if line[:1].isdigit()]
    assert len(events) == len(heads) == 7
    assert field(events, "level") == WINSTON_LEVELS
    for head, event in zip(heads, events, strict=True):
        stamp, rest = head[:19], head[20:]
        # printed to the second: the invented milliseconds keep arrival order within it
        assert event.fields["timestamp"][:19] == stamp.replace(" ", "T")
        assert event.fields["message"] == rest.split(": ", 1)[1]
    stamps = field(events, "timestamp")
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert_db_error(events[6].fields["err"])


def test_winston_json_levels_keep_winston_order() -> None:
    lines, events = capture("winston-json.ndjson")
    records = [orjson.loads(line) for line in lines]
    assert field(events, "level") == WINSTON_LEVELS
    assert field(events, "timestamp") == [r["timestamp"] for r in records]
    assert field(events, "message") == [r["message"] for r in records] and events[0].fields["port"] == 3000
    assert_db_error(events[6].fields["err"])


NEST_LEVELS = ["info", "info", "warn", "debug", "trace", "error", "error", "info", "fatal"]  # Nest's verbose < debug


@pytest.mark.parametrize("name", ["nest-console-compact.log", "nest-console-timestamp.log"])
def test_nest_console_logger_options_as_text(name: str) -> None:
    lines, events = capture(name)
    assert field(events, "level") == NEST_LEVELS and set(field(events, "context")) == {"NestFactory", "AppController"}
    assert not [m for m in field(events, "message") if re.search(r"\+\d+ms", m)]
    error, logged = events[5].fields, events[6].fields
    assert error["message"] == "Error: database connection lost" and logged["message"] == "request failed"
    assert_db_error(error["err"])
    assert_db_error(logged["err"])
    if "timestamp" in name:
        suffixes = [re.search(rb" \+(\d+)ms", line) for line in lines]
        elapsed = [int(match.group(1)) for match in suffixes if match is not None]
        assert [e.fields["elapsed_ms"] for e in events[1:]] == elapsed  # the first line has no previous one
    else:
        assert "socket hang up" in error["err"]["stack"]  # the compact cause stays in the stack


def test_nest_console_logger_json_with_colors() -> None:
    lines, events = capture("nest-console-json-colors.log")
    assert len(events) == len(lines) == 9
    assert field(events, "level") == NEST_LEVELS
    plain = [ANSI.sub("", line.decode()) for line in lines]
    stamps = [int(found(r"timestamp: (\d+)", line)) for line in plain]
    assert field(events, "timestamp") == [utc(ms) for ms in stamps]
    assert field(events, "pid") == [int(found(r"pid: (\d+)", line)) for line in plain]
    assert events[1].fields["params"] == {"smsId": "sms_124", "to": "+14155550101", "retry": False}
    assert events[7].fields["message"] == '{"userId":42,"roles":["admin","ops"]}'
    err = events[5].fields["err"]
    assert_db_error(err, code="E_DB")
    assert err["cause"]["type"] == "TypeError" and err["cause"]["message"] == "socket hang up"
    assert_db_error(events[6].fields["err"])


def test_pino_pretty_single_line_fields() -> None:
    lines, events = capture("pino-pretty-singleline.log")
    inline = [orjson.loads(line[line.index(b' {"') :]) for line in lines[:2]]
    assert field(events, "level") == ["info", "info", "warn", "error"]
    assert field(events, "message") == [
        "incoming request",
        "request completed",
        "a message with {braces} but no fields",
        "request failed",
    ]
    for record, event in zip(inline, events, strict=False):
        assert {key: event.fields[key] for key in record} == record
    assert events[0].fields["http"] == {"method": "GET", "url": "/users/1"}
    assert events[1].fields["http"] == {"status_code": 200, "duration_ms": 1.25}
    assert_db_error(events[3].fields["err"], code="E_DB")


def test_a_parse_worker_reads_the_setups_as_the_agent_does() -> None:
    """The worker builds its processor from plain settings; the same captures give the same logs."""
    table = {
        "sources": {"api": {"type": "stdin", "timezone": "UTC"}},
        "sinks": {"dd": {"type": "datadog", "inputs": ["api"], "api_key": "dd-setups-key-0123456789abcdef"}},
    }
    config = config_from_dict(table, environ={})
    sink = build_sink("dd", config.sinks["dd"])
    route = workers.SinkRoute("dd", None, sink.preparer(), None)  # type: ignore[arg-type]
    lines = [line for path in sorted(CAPTURES.glob("*.[ln]*")) for line in lines_of(path)]
    feed = parse_worker.WorkerFeed(
        workers.feed_setup("api", config.sources["api"], host="h", redact=config.redact, fields=None, routes=[route])
    )
    _held, _count, [(_index, ndjson, _stamps)] = feed.parsed(
        [*feed.processor.parse(lines, "stdout", RECEIVED), *feed.processor.flush(RECEIVED, True)], time.time()
    )
    processor = build_processor("api", config.sources["api"], host="h", redact=config.redact)
    events = [*processor.parse(lines, "stdout", RECEIVED), *processor.flush(RECEIVED, True)]
    in_agent = [log for request in sink.encode(events) for log in orjson.loads(request.body)]
    in_worker = [orjson.loads(line) for line in ndjson.splitlines()]
    assert len(in_worker) == len(events) > 60

    # The captures are dated (early December 2026): once that is past Datadog's 18 h window, both sides
    # re-stamp to "now", a few milliseconds apart. Everything else must be the same, on any date.
    def stable(log: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in log.items() if not (k == "timestamp" and "shipper.original_timestamp" in log)}

    assert [stable(log) for log in in_worker] == [stable(log) for log in in_agent]
    assert "error" in {log["status"] for log in in_worker} and "warn" in {log["status"] for log in in_worker}
