"""A source's transforms (drop, sample, set, remove, rename): in order, counted, in the agent and in
a parse worker alike, and never a way around redaction."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper import tally
from shipper.config import config_from_dict, parse_config
from shipper.errors import ConfigError
from shipper.event import Event
from shipper.parsing import build_processor
from shipper.pipeline.channel import Channel, Part
from shipper.pipeline.transforms import build_transforms
from shipper.source import SourceContext
from shipper.workers import SinkRoute, WorkerPool
from sinks import build_sink
from tests.driving import parse_worker

TIME = 1_795_394_836_366  # 2026-11-23: a fixed time, so nothing depends on today's date
PINO_LEVELS = {"debug": 20, "info": 30, "warn": 40, "error": 50}


def pino(level: str = "info", msg: str = "hello", **fields: Any) -> bytes:
    record = {"level": PINO_LEVELS[level], "time": TIME, "pid": 7, "hostname": "vm", "msg": msg, **fields}
    return orjson.dumps(record)


def config_for(transforms: list[dict[str, Any]], redact: dict[str, Any] | None = None) -> Any:
    table = {
        "redact": redact or {},
        "sources": {"api": {"type": "stdin", "transforms": transforms}},
        "sinks": {"out": {"type": "file", "inputs": ["api"], "path": "/nonexistent/unused"}},
    }
    return config_from_dict(table, environ={})


def transformed(
    transforms: list[dict[str, Any]], lines: list[bytes], redact: dict[str, Any] | None = None
) -> list[Event]:
    """`lines` parsed and transformed as one chunk, as a feed does."""
    config = config_for(transforms, redact)
    source = config.sources["api"]
    events = build_processor("api", source, host="h", redact=config.redact).parse(lines, "stdout", TIME / 1000)
    chain = build_transforms("api", source.transforms, config.redact)
    assert chain is not None
    return chain(events)


def filtered(position: str, reason: str) -> float:
    return tally.events_filtered.labels("api", position, reason).value


# ------------------------------------------------------------------------------- each built-in


def test_drop_leaves_out_what_its_when_matches_and_counts_it() -> None:
    before = filtered("0", "drop")
    lines = [pino("debug", "noise"), pino("info", "health", route="/health"), pino("info", "kept", route="/users")]
    events = transformed([{"type": "drop", "when": {"equals": {"route": "/health"}}}], lines)
    assert [event.fields["message"] for event in events] == ["noise", "kept"]
    assert filtered("0", "drop") - before == 1


def test_set_writes_a_nested_field_and_keeps_an_existing_one_without_overwrite() -> None:
    lines = [pino(msg="one", deploy={"region": "eu"}), pino(msg="two", env="staging")]
    events = transformed(
        [
            {"type": "set", "field": "deploy.version", "value": {"tag": "v2", "canary": False}},
            {"type": "set", "field": "env", "value": "prod", "overwrite": False},
        ],
        lines,
    )
    one, two = (event.fields for event in events)
    assert one["deploy"] == {"region": "eu", "version": {"tag": "v2", "canary": False}}
    assert two["deploy"] == {"version": {"tag": "v2", "canary": False}}
    assert one["deploy"]["version"] is not two["deploy"]["version"]  # a table is each event's own
    assert (one["env"], two["env"]) == ("prod", "staging")


def test_a_value_that_is_not_a_table_on_the_way_is_never_replaced() -> None:
    (event,) = transformed([{"type": "set", "field": "req.id", "value": 1}], [pino(req="GET /")])
    assert event.fields["req"] == "GET /"


def test_remove_takes_out_nested_fields_and_a_top_level_key_with_dots_first() -> None:
    fields: dict[str, Any] = {"user": {"id": 1, "email": "a@b.c"}, "shipper.fragment": 2, "shipper": {"fragment": 3}}
    (event,) = transformed(
        [{"type": "remove", "fields": ["user.email", "shipper.fragment", "absent.path"]}], [pino(**fields)]
    )
    assert event.fields["user"] == {"id": 1}
    assert "shipper.fragment" not in event.fields and event.fields["shipper"] == {"fragment": 3}


def test_rename_moves_a_value_between_nested_paths() -> None:
    (event,) = transformed([{"type": "rename", "from": "ctx.user", "to": "user.name"}], [pino(ctx={"user": "ann"})])
    assert event.fields["ctx"] == {} and event.fields["user"] == {"name": "ann"}


def test_sample_keeps_errors_and_one_in_rate_of_the_rest_by_arrival() -> None:
    before = filtered("0", "sample")
    lines = [pino("error" if index % 100 == 0 else "info", f"m{index}") for index in range(1000)]
    events = transformed([{"type": "sample", "rate": 10}], lines)
    errors = [event for event in events if event.fields["level"] == "error"]
    assert len(errors) == 10  # every one of them
    assert len(events) - len(errors) == 99  # the first of every 10 of the 990 others
    assert filtered("0", "sample") - before == 1000 - len(events)


def test_sample_by_key_keeps_or_leaves_every_event_of_a_request_together() -> None:
    lines = [pino(msg=step, reqId=f"req-{index}") for index in range(2000) for step in ("in", "out")]
    events = transformed([{"type": "sample", "rate": 10, "key": "reqId", "keep_level": "none"}], lines)
    kept = [event.fields["reqId"] for event in events]
    assert all(kept.count(request) == 2 for request in kept)  # both lines of a kept request
    assert 120 <= len(kept) / 2 <= 280  # about 1 in 10 of 2000 requests


def test_sample_keep_level_none_samples_errors_too() -> None:
    events = transformed([{"type": "sample", "rate": 4, "keep_level": "none"}], [pino("error")] * 8)
    assert len(events) == 2


# ----------------------------------------------------------------------------------- the order


@pytest.mark.parametrize(
    ("order", "messages"),
    [(["rename", "drop"], ["human"]), (["drop", "rename"], ["human", "bot"])],
)
def test_transforms_run_in_the_order_given(order: list[str], messages: list[str]) -> None:
    steps: dict[str, dict[str, Any]] = {
        "rename": {"type": "rename", "from": "ctx.actor", "to": "actor"},
        "drop": {"type": "drop", "when": {"equals": {"actor": "crawler"}}},
    }
    lines = [pino(msg="human", ctx={"actor": "ann"}), pino(msg="bot", ctx={"actor": "crawler"})]
    events = transformed([steps[name] for name in order], lines)
    assert [event.fields["message"] for event in events] == messages


# ------------------------------------------------------------------------- raw and redaction


def test_changed_events_carry_their_new_fields_as_raw_and_others_their_line() -> None:
    lines = [pino(msg="private", user={"email": "ann@example.com"}), pino(msg="plain")]
    private, plain = transformed([{"type": "remove", "fields": ["user.email"]}], lines)
    assert b"ann@example.com" not in private.raw and orjson.loads(private.raw) == private.fields
    assert plain.raw == lines[1]  # unchanged: still the original line


SECRET_SETTING: list[dict[str, Any]] = [
    {"type": "set", "field": "upstream.auth", "value": "Bearer abcdefghijklmnop0123"},
    {"type": "rename", "from": "pin", "to": "password"},
]


def test_a_set_or_rename_cannot_bring_a_secret_past_redaction() -> None:
    before = tally.redactions.labels("secret_field").value
    (event,) = transformed(SECRET_SETTING, [pino(pin="4711")])
    assert event.fields["upstream"] == {"auth": "Bearer [REDACTED]"}
    assert event.fields["password"] == "[REDACTED]"
    assert b"abcdefghijklmnop" not in event.raw and b"4711" not in event.raw
    assert tally.redactions.labels("secret_field").value - before == 1


def test_with_redaction_off_a_set_value_is_shipped_as_set() -> None:
    (event,) = transformed(SECRET_SETTING, [pino(pin="4711")], redact={"enabled": False})
    assert event.fields["password"] == "4711" and b"Bearer abcdefghijklmnop0123" in event.raw


# ----------------------------------------------------------- agent and parse worker, end to end

PIPELINE: list[dict[str, Any]] = [
    {"type": "drop", "when": {"level": "warn", "equals": {"ctx.expected": True}}},
    {"type": "rename", "from": "ctx.actor", "to": "actor"},
    {"type": "sample", "rate": 3, "key": "reqId"},
    {"type": "remove", "fields": ["user.email"]},
    *SECRET_SETTING,
]


def pipeline_lines() -> bytes:
    lines = []
    for index in range(60):
        level = "warn" if index % 5 == 0 else "error" if index % 7 == 0 else "info"
        ctx = {"actor": f"a{index % 4}", "expected": index % 2 == 0}
        lines.append(pino(level, f"m{index}", reqId=f"req-{index // 2}", ctx=ctx, user={"email": "ann@example.com"}))
    lines.append(pino(msg="secret", pin="4711"))
    return b"\n".join(lines) + b"\n"


async def delivered(tmp_path: Path, workers: WorkerPool | None) -> list[dict[str, Any]]:
    """What a file sink's channel gets of `pipeline_lines()` pushed to a feed of a source with PIPELINE."""
    config = config_for(PIPELINE)
    channel = Channel("out", 1 << 30, "block")
    sink = build_sink("out", config.sinks["out"])
    context = SourceContext(
        "api", config.sources["api"], routes=[SinkRoute("out", None, sink.preparer(), channel)], host="h",
        redact=config.redact, state_dir=tmp_path, stopping=asyncio.Event(), workers=workers,
    )  # fmt: skip
    feed = context.open_feed()
    await feed.push(pipeline_lines())
    await feed.flush(force=True)
    parts: list[Part] = []
    while channel.nevents:
        part = await channel.get(0)
        assert part is not None
        parts.append(part)
    return [orjson.loads(event.raw) for part in parts for event in part.events]


async def test_a_parse_worker_transforms_as_the_agent_does(tmp_path: Path) -> None:
    def counted_since(start: list[float]) -> list[float]:
        return [filtered("0", "drop") - start[0], filtered("2", "sample") - start[1]]

    start = counted_since([0, 0])
    in_agent = await delivered(tmp_path, None)
    by_agent, start = counted_since(start), counted_since([0, 0])
    async with parse_worker() as pool:
        in_worker = await delivered(tmp_path, pool)
    assert in_worker == in_agent
    # What the worker left out reaches the agent's tallies (so /metrics), as many as the agent's own.
    assert counted_since(start) == by_agent
    assert by_agent[0] == 10 and by_agent[1] > 0  # warns 0, 10, ..., 50 and errors 14, 28, 42, 56
    assert not any(log["level"] != "info" and log.get("ctx", {}).get("expected") for log in in_agent)
    assert {"actor"} <= in_agent[0].keys() and "actor" not in in_agent[0]["ctx"]
    assert all(log["user"] == {} for log in in_agent if "user" in log)
    text = orjson.dumps(in_agent)
    assert b"ann@example.com" not in text and b"abcdefghijklmnop" not in text and b"4711" not in text
    assert in_agent[-1]["message"] == "secret" and in_agent[-1]["password"] == "[REDACTED]"


# ---------------------------------------------------------------------------------- config errors

BASE = """\
[sources.api]
type = "stdin"

[[sources.api.transforms]]
type = "drop"
when = {{ level = "debug" }}

[[sources.api.transforms]]
{second}

[sinks.out]
type = "file"
inputs = ["api"]
path = "/tmp/unused"
"""


@pytest.mark.parametrize(
    ("second", "key", "line", "words"),
    [
        ('type = "sample"\nrate = 0', "sources.api.transforms[1].rate", 10, "greater than or equal to 1"),
        ('type = "sample"\nrate = 5\nkeep_level = "loud"', "sources.api.transforms[1].keep_level", 11, "'none'"),
        ('type = "rename"\nfrom = "a"\ntoo = "b"', "sources.api.transforms[1].too", 11, "did you mean to?"),
        ('type = "rename"\nto = "b"', "sources.api.transforms[1].from", 8, "required key is missing"),
        ('type = "rename"\nfrom = "a"\nto = "a.b"', "sources.api.transforms[1].to", 11, "into itself"),
        ('type = "set"\nfield = "a..b"\nvalue = 1', "sources.api.transforms[1].field", 10, "dotted path"),
        ('type = "remove"\nfields = []', "sources.api.transforms[1].fields", 10, "at least 1"),
        ('type = "drop"\nwhen = {}', "sources.api.transforms[1].when", 10, "drop every event"),
        ('type = "keep"', "sources.api.transforms[1].type", 9, "unknown type 'keep' (one of: drop, sample, set"),
        ('field = "a"', "sources.api.transforms[1].type", 8, "required key is missing (one of: drop"),
    ],
)
def test_config_errors_name_the_transform_by_its_key_path_and_line(
    second: str, key: str, line: int, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.format(second=second), Path("config.toml"), {})
    assert (info.value.key, info.value.line) == (key, line), str(info.value)
    assert words in info.value.message


def test_toml_dates_are_set_as_text() -> None:
    config = parse_config(BASE.format(second='type = "set"\nfield = "released"\nvalue = 2026-11-23'), None, {})
    assert config.sources["api"].transforms[1].value == "2026-11-23"  # type: ignore[union-attr]
