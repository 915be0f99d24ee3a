"""Format details the corpus does not show: locales, zones, levels, grouping bounds, streams, bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from shipper.config import MultilineConfig, RedactConfig, SourceConfig
from shipper.event import Event
from shipper.metrics import registry
from shipper.parsing import Processor, build_processor

RECEIVED = datetime(2026, 11, 23, 0, 48, 30, tzinfo=UTC).timestamp()
ERROR_BLOCK = [
    b"[Nest] 7  - 11/23/2026, 12:47:50 AM   ERROR [ExceptionsHandler] Error: database connection lost",
    b"    at AppController.boom (file:///srv/app/dist/app.controller.js:74:15)",
    b"    at next (/srv/app/node_modules/router/lib/route.js:163:13)",
]


def processor(**options: object) -> Processor:
    multiline = options.pop("multiline", None)
    config = SourceConfig(type="file", **options)  # type: ignore[arg-type]
    if multiline is not None:
        config = config.model_copy(update={"multiline": multiline})
    return build_processor("api", config, host="agent-host", redact=RedactConfig())


def run(lines: list[bytes], **options: object) -> list[Event]:
    proc = processor(**options)
    events = proc.parse(lines, None, RECEIVED) + proc.flush(force=True)
    assert proc.held_bytes == 0
    return events


def fallbacks(reason: str) -> float:
    return registry.get_sample_value("shipper_parse_fallbacks_total", {"source": "api", "reason": reason}) or 0.0


@pytest.mark.parametrize(
    ("stamp", "zone", "expected"),
    [
        ("11/23/2026, 12:47:50 AM", "UTC", "2026-11-23T00:47:50"),
        ("11/23/2026, 12:47:50\u202fPM", "UTC", "2026-11-23T12:47:50"),  # newer ICU: narrow no-break space
        ("11/23/2026, 1:05:09 PM", "America/New_York", "2026-11-23T18:05:09"),
        ("23.11.2026, 01:47:56", "Europe/Berlin", "2026-11-23T00:47:56"),
        ("23/11/2026, 01:46:17", "Europe/London", "2026-11-23T01:46:17"),
        ("2026/11/23 1:46:17", "Asia/Tokyo", "2026-11-22T16:46:17"),
        ("2026-11-23 01:46:17", "Europe/Stockholm", "2026-11-23T00:46:17"),
        ("7/4/2026, 11:59:59 PM", "Europe/Berlin", "2026-07-04T21:59:59"),  # summer time
    ],
)
def test_nest_timestamp_locales_and_zones(stamp: str, zone: str, expected: str) -> None:
    line = f"[Nest] 42  - {stamp}     LOG [Bootstrap] listening".encode()
    (event,) = run([line], timezone=zone)
    assert event.fields["timestamp"] == expected + ".000Z"
    assert event.fields["message"] == "listening" and event.fields["context"] == "Bootstrap"


def test_nest_unparseable_timestamp_falls_back_to_receive_time() -> None:
    before = fallbacks("bad_timestamp")
    arabic = "\u0662\u0663/\u0661\u0661/\u0662\u0660\u0662\u0666\u060c \u0661\u0662:\u0664\u0667:\u0665\u0660"
    (event,) = run([f"[Nest] 42  - {arabic}    WARN [Svc] careful".encode()])
    assert event.fields["timestamp"] == "2026-11-23T00:48:30.000Z"
    assert event.fields["original_timestamp"] == arabic
    assert event.fields["level"] == "warn" and event.fields["message"] == "careful"
    assert fallbacks("bad_timestamp") == before + 1


def test_nest_same_second_keeps_arrival_order() -> None:
    lines = [f"[Nest] 1  - 11/23/2026, 12:47:50 AM     LOG [A] m{i}".encode() for i in range(3)]
    lines.append(b"[Nest] 1  - 11/23/2026, 12:47:51 AM     LOG [A] next second")
    stamps = [e.fields["timestamp"] for e in run(lines, timezone="UTC")]
    assert stamps == [
        "2026-11-23T00:47:50.000Z",
        "2026-11-23T00:47:50.001Z",
        "2026-11-23T00:47:50.002Z",
        "2026-11-23T00:47:51.000Z",
    ]


def test_nest_levels_and_context_free_line() -> None:
    words = ["LOG", "ERROR", "WARN", "DEBUG", "VERBOSE", "FATAL"]
    lines = [f"[Nest] 1  - 11/23/2026, 12:47:50 AM {w:>7} plain {w}".encode() for w in words]
    events = run(lines, timezone="UTC")
    assert [e.fields["level"] for e in events] == ["info", "error", "warn", "debug", "trace", "fatal"]
    assert "context" not in events[0].fields and events[0].fields["message"] == "plain LOG"


def test_pretty_time_of_day_takes_the_receive_date_and_wraps_midnight() -> None:
    received = datetime(2026, 11, 24, 0, 0, 1, tzinfo=UTC).timestamp()
    proc = processor(timezone="UTC")
    events = proc.parse(
        [b"[23:59:59.900] INFO (12): before midnight", b"[00:00:00.250] INFO (12): after midnight"], None, received
    )
    events += proc.flush(force=True)
    assert [e.fields["timestamp"] for e in events] == ["2026-11-23T23:59:59.900Z", "2026-11-24T00:00:00.250Z"]
    (tokyo,) = run([b"[09:47:26.845] WARN (12): tokyo"], timezone="Asia/Tokyo")
    assert tokyo.fields["timestamp"] == "2026-11-23T00:47:26.845Z"


def test_pretty_header_variants() -> None:
    lines = [
        b"[2026-11-23 00:47:26.845 +0000] ERROR (api/77 on web-1): with name and host",
        b"    err: {",
        b'      "type": "Error",',
        b'      "message": "x",',
        b'      "stack":',
        b"          Error: x",
        b"              at f (/a.js:1:1)",
        b'      "code": "E1"',
        b"    }",
        b"[00:47:27.000] USERLVL (77):",
    ]
    first, second = run(lines, timezone="UTC")
    assert first.fields["timestamp"] == "2026-11-23T00:47:26.845Z"
    assert first.fields["host"] == "web-1" and first.fields["name"] == "api" and first.fields["pid"] == 77
    stack = "Error: x\n    at f (/a.js:1:1)"
    assert first.fields["err"] == {"type": "Error", "message": "x", "stack": stack, "code": "E1"}
    assert second.fields["level"] == "info" and second.fields["message"] == ""


def test_pino_levels_by_range_and_nonstandard_records() -> None:
    lines = [
        orjson.dumps({"level": level, "time": 1795394836366, "msg": f"l{level}"}) for level in (10, 20, 35, 45, 70)
    ]
    lines.append(orjson.dumps({"level": 30, "time": 1795394836, "message": "own message", "msg": "pino msg"}))
    lines.append(orjson.dumps({"level": "warning", "timestamp": "2026-11-23T00:47:16.366+01:00", "message": None}))
    lines.append(orjson.dumps({"level": 30, "time": "not a time", "msg": {"a": 1}, "service": "billing"}))
    events = run(lines)
    assert [e.fields["level"] for e in events] == ["trace", "debug", "info", "warn", "fatal", "info", "warn", "info"]
    assert [e.fields.get("level_num") for e in events[:5]] == [10, 20, 35, 45, 70]
    seconds = events[5].fields
    assert seconds["timestamp"] == "2026-11-23T00:47:16.000Z"  # pino's unixTime (seconds)
    assert seconds["message"] == "pino msg" and seconds["original_message"] == "own message"
    assert events[6].fields["timestamp"] == "2026-11-22T23:47:16.366Z" and events[6].fields["message"] == ""
    odd = events[7].fields
    assert odd["timestamp"] == events[6].fields["timestamp"] and odd["time"] == "not a time"  # the time before
    assert odd["shipper.time_estimated"] is True and "shipper.time_estimated" not in events[6].fields
    assert odd["message"] == '{"a":1}' and odd["service"] == "billing"  # the record's own service wins


def test_configured_service_and_agent_host() -> None:
    proc = build_processor(
        "api", SourceConfig(type="file", service="payments"), host="agent-host", redact=RedactConfig()
    )
    (event,) = proc.parse([b'{"level":"log","timestamp":1795394871612,"message":"m","context":"C"}'], "stderr", 0.0)
    assert event.fields["service"] == "payments" and event.fields["source"] == "api"
    assert event.fields["host"] == "agent-host" and event.fields["stream"] == "stderr"


def test_crash_printout_after_pino_lines_is_one_fatal_event() -> None:
    lines = [
        b'{"level":30,"time":1795394836366,"pid":1,"hostname":"vm","msg":"ok"}',
        b"/srv/app/server.js:12",
        b"    throw new TypeError('bad');",
        b"    ^",
        b"",
        b"TypeError: bad",
        b"    at Object.<anonymous> (/srv/app/server.js:12:11)",
        b"",
        b"Node.js v20.20.2",
        b'{"level":30,"time":1795394836367,"pid":2,"hostname":"vm","msg":"restarted"}',
    ]
    events = run(lines)
    assert [e.fields["level"] for e in events] == ["info", "fatal", "info"]
    assert events[1].raw == b"\n".join(lines[1:9])
    assert events[1].fields["err"] == {
        "location": "/srv/app/server.js:12",
        "source": "    throw new TypeError('bad');\n    ^",
        "type": "TypeError",
        "message": "bad",
        "stack": "TypeError: bad\n    at Object.<anonymous> (/srv/app/server.js:12:11)",
    }
    assert events[1].fields["node"] == {"version": "v20.20.2"}


def test_lines_after_a_stack_stay_in_the_message() -> None:
    """A Nest group takes every line up to the next header: text after its stack's blank line is
    part of what was logged, not dropped from the fields."""
    (event,) = run([*ERROR_BLOCK, b"", b"retrying in 5s", b"  (attempt 2 of 3)"])
    assert event.fields["message"] == "Error: database connection lost\nretrying in 5s\n  (attempt 2 of 3)"
    assert event.fields["err"]["stack"].endswith("route.js:163:13)")


def test_plain_text_grouping_and_levels() -> None:
    lines = [
        b"server starting",
        b"(node:12) Warning: something deprecated",
        b"ERROR something failed",
        b"RangeError: out of range",
        b"    at f (/a.js:1:1)",
        b"    at g (/a.js:2:1)",
        b"debug: details",
        b"   ",
        b"",
    ]
    events = run(lines)
    assert [e.fields["message"].split("\n")[0] for e in events] == [
        "server starting",
        "(node:12) Warning: something deprecated",
        "ERROR something failed",
        "RangeError: out of range",
        "debug: details",
    ]
    assert [e.fields["level"] for e in events] == ["info", "warn", "error", "error", "debug"]
    assert events[3].fields["err"]["type"] == "RangeError"
    assert events[4].raw == b"debug: details\n   \n"  # blank lines after an event stay with it


def test_lone_blank_lines_in_a_json_stream_are_dropped_and_counted() -> None:
    before = fallbacks("empty")
    events = run([b'{"msg":"a"}', b"", b"  ", b"\r", b'{"msg":"b"}'])
    assert [e.fields["message"] for e in events] == ["a", "b"]
    assert fallbacks("empty") == before + 3


def test_crlf_invalid_utf8_nul_and_garbage() -> None:
    lines = [
        b'{"level":30,"time":1795394836366,"msg":"crlf"}\r',
        b"\xff\xfe not utf-8 \x00 nul",
        b"{not json",
        b"[Nest] 1  - 11/23/2026, 12:47:50 AM     LOG [X] caf\xc3\xa9 \xff",
    ]
    events = run(lines, timezone="UTC")
    assert events[0].raw == lines[0][:-1] and events[0].fields["message"] == "crlf"
    assert events[1].fields["message"] == "\ufffd\ufffd not utf-8 \x00 nul"
    assert events[2].fields["message"] == "{not json"
    assert events[3].fields["message"] == "caf\u00e9 \ufffd"
    orjson.dumps([e.fields for e in events])  # every field is serializable


def test_huge_lines() -> None:
    """Lines up to `max_line_bytes` parse whole, however long (longer ones: test_source_lines.py)."""
    big = b"x" * 5_000_000
    record = orjson.dumps({"level": 30, "time": 1795394836366, "msg": "big", "blob": "y" * 5_000_000})
    lines = [big, record, b"[Nest] 1  - 11/23/2026, 12:47:50 AM     LOG [X] " + big]
    events = run(lines, max_line_bytes=8 * 1024 * 1024)
    assert [len(e.raw) for e in events] == [5_000_000, len(record), 5_000_000 + 48]
    assert events[1].fields["blob"] == "y" * 5_000_000


def test_flush_timeout_and_silence() -> None:
    proc = processor(timezone="UTC")
    assert proc.parse(ERROR_BLOCK, "stderr", 100.0) == []
    held = sum(len(line) + 1 for line in ERROR_BLOCK)
    assert proc.held_bytes == held
    assert proc.flush(100.5) == []
    (event,) = proc.flush(101.0)
    assert event.raw == b"\n".join(ERROR_BLOCK) and proc.held_bytes == 0
    # A continuation arriving after the timeout belongs to nothing: the group was closed first.
    assert proc.parse(ERROR_BLOCK[:1], "stderr", 200.0) == []
    (closed,) = proc.parse(ERROR_BLOCK[1:2], "stderr", 205.0)
    assert closed.raw == ERROR_BLOCK[0]
    (orphan,) = proc.flush(force=True)
    assert orphan.raw == ERROR_BLOCK[1] and orphan.fields["level"] == "info"


def test_multiline_caps_split_without_losing_bytes() -> None:
    frames = [f"    at frame{i} (/srv/app/a.js:{i}:1)".encode() for i in range(25)]
    lines = ERROR_BLOCK[:1] + frames
    events = run(lines, timezone="UTC", multiline=MultilineConfig(max_lines=10))
    assert [len(e.raw.split(b"\n")) for e in events] == [10, 10, 6]
    assert b"\n".join(e.raw for e in events) == b"\n".join(lines)
    assert [e.fields.get("continuation") for e in events] == [None, True, True]
    assert all(e.fields["level"] == "error" and e.fields["context"] == "ExceptionsHandler" for e in events)
    by_bytes = run(lines, timezone="UTC", multiline=MultilineConfig(max_bytes=200))
    assert all(len(e.raw) + 1 <= 200 for e in by_bytes)
    assert b"\n".join(e.raw for e in by_bytes) == b"\n".join(lines)


def test_streams_keep_separate_groups_on_one_processor() -> None:
    """Nest writes ERROR and its stack to stderr and LOG to stdout; reads may interleave."""
    proc = processor(timezone="UTC")
    out = proc.parse(ERROR_BLOCK[:2], "stderr", RECEIVED)
    out += proc.parse([b"[Nest] 7  - 11/23/2026, 12:47:50 AM     LOG [App] meanwhile"], "stdout", RECEIVED)
    out += proc.parse(ERROR_BLOCK[2:], "stderr", RECEIVED)
    assert out == []
    assert proc.held_bytes == sum(len(line) + 1 for line in ERROR_BLOCK) + 60
    out = proc.flush(force=True)
    assert {e.fields["stream"]: e.raw for e in out} == {
        "stderr": b"\n".join(ERROR_BLOCK),
        "stdout": b"[Nest] 7  - 11/23/2026, 12:47:50 AM     LOG [App] meanwhile",
    }


def test_nest_json_error_forms() -> None:
    record = {
        "level": "error",
        "pid": 1,
        "timestamp": 1795394871779,
        "message": "boom",
        "context": "ExceptionsHandler",
        "error": {
            "name": "Error",
            "message": "boom",
            "stack": "Error: boom\n    at x",
            "code": "E1",
            "cause": {"name": "TypeError", "message": "inner", "stack": "TypeError: inner"},
        },
    }
    (event,) = run([orjson.dumps(record)])
    assert event.fields["err"] == {
        "type": "Error",
        "message": "boom",
        "stack": "Error: boom\n    at x",
        "code": "E1",
        "cause": {"type": "TypeError", "message": "inner", "stack": "TypeError: inner"},
    }
    assert "error" not in event.fields and event.raw == orjson.dumps(record)
