"""Redaction: every secret shape is gone from fields and raw, counted per rule, and nothing else changes."""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper import redact as redact_module
from shipper.config import RedactConfig, RedactPattern, SourceConfig
from shipper.event import Event
from shipper.metrics import registry
from shipper.parsing import build_processor
from shipper.redact import REDACTED, Redactor
from shipper.speedups import SPEEDUPS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parsing"
RECEIVED = 1_795_394_900.0
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ"
    ".9Xk2n4JqD0sA1fR6tYbW3cE8vL5mP7oQ2uI0hG9jK1Z"
)
SECRETS = [
    JWT,
    "hunter2",
    "tok_9f8e7d6c5b4a",
    "abc123def456",
    "zz99",
    "abcdef0123456789abcdef",
    "s3cretPw",
    "sk_live_51H8xYzAbCdEfGhIjKlMnOp",
    "rk_live_51H8xYzAbCdEfGhIjKlMnOq",
    "AKIAIOSFODNN7EXAMPLE",
    "sbp_0123456789abcdef0123456789abcdef01234567",
    "sb_secret_AbCdEf0123456789xyz",
    "0123456789abcdef0123456789abcdef",
]


def parse(lines: list[bytes], redact: RedactConfig | None = None, **options: Any) -> list[Event]:
    config = SourceConfig(type="file", timezone="UTC", **options)
    processor = build_processor("api", config, host="agent", redact=redact or RedactConfig())
    return processor.parse(lines, "stdout", RECEIVED) + processor.flush(force=True)


def count(rule: str) -> float:
    return registry.get_sample_value("shipper_redactions_total", {"rule": rule}) or 0.0


def counts(rules: list[str]) -> dict[str, float]:
    return {rule: count(rule) for rule in rules}


def texts(value: Any) -> str:
    return orjson.dumps(value).decode()


def test_header_logging_serializer_capture() -> None:
    """pino `redact: ['req.headers.authorization']` plus a headers serializer, level trace."""
    lines = (FIXTURES / "pino-redact.ndjson").read_bytes().splitlines()
    rules = ["header", "bearer", "jwt", "stripe", "aws", "url_password", "query_secret", "secret_field"]
    before = counts(rules)
    events = parse(lines)
    assert len(events) == len(lines)
    for event in events:
        dumped = texts(event.fields)
        for secret in SECRETS:
            assert secret not in dumped, (secret, dumped)
            assert secret.encode() not in event.raw, (secret, event.raw)
    after = counts(rules)
    assert {rule: after[rule] - before[rule] for rule in rules} == {
        "header": 3,  # cookie, two Set-Cookie values (pino's own [Redacted] is not counted)
        "bearer": 1,
        "jwt": 1,
        "stripe": 2,
        "aws": 1,
        "url_password": 3,  # err.message, err.stack, msg
        "query_secret": 2,
        "secret_field": 3,  # adminToken, secret, datadog.apiKey
    }
    # pino's own marker stays as it was; untouched lines keep their raw bytes.
    assert events[2].fields["req"]["headers"]["authorization"] == "[Redacted]"
    assert events[2].raw == lines[2] and events[1].raw == lines[1]
    assert [e.fields["level"] for e in events[5:7]] == ["trace", "debug"]
    # A changed record's raw is its redacted JSON in the original (pino) shape.
    changed = orjson.loads(events[3].raw)
    assert changed["req"]["headers"]["cookie"] == REDACTED and changed["msg"] == "incoming request"
    assert events[4].fields["http"]["url"] == "/orders?password=[REDACTED]&token=[REDACTED]&page=2"
    assert events[7].fields["message"] == "retrying with Bearer [REDACTED] after 401"
    # Emails and phone numbers are kept unless asked for.
    assert events[11].fields["message"] == "sms queued to +4915112345678 for ops@example.com"


def test_emails_and_phones_when_enabled() -> None:
    line = orjson.dumps({"level": 30, "time": 1, "msg": "sms to +4915112345678 and +1 (415) 555-0101 for a.b@ex.co"})
    before = counts(["email", "phone"])
    (event,) = parse([line], RedactConfig(emails=True, phones=True))
    assert event.fields["message"] == "sms to [REDACTED] and [REDACTED] for [REDACTED]"
    assert b"4915112345678" not in event.raw and b"a.b@ex.co" not in event.raw
    assert counts(["email", "phone"]) == {"email": before["email"] + 1, "phone": before["phone"] + 2}


def test_configured_fields_and_patterns() -> None:
    redact = RedactConfig(
        fields=["user.ssn", "*.card"], patterns=[RedactPattern(name="order_id", regex=r"ord_[0-9]{6,}")]
    )
    line = orjson.dumps(
        {
            "level": 30,
            "time": 1,
            "user": {"ssn": 123456789, "name": "x"},
            "billing": {"card": {"n": 4}},
            "msg": "order ord_1795394836561 paid",
        }
    )
    before = counts(["field", "order_id"])
    (event,) = parse([line], redact)
    assert event.fields["user"] == {"ssn": REDACTED, "name": "x"}
    assert event.fields["billing"] == {"card": REDACTED}
    assert event.fields["message"] == "order [REDACTED] paid"
    assert counts(["field", "order_id"]) == {"field": before["field"] + 2, "order_id": before["order_id"] + 1}
    assert b"ord_1795394836561" not in event.raw and b"123456789" not in event.raw


def test_datadog_key_only_in_key_ish_fields() -> None:
    hexkey = "0123456789abcdef0123456789abcdef"
    line = orjson.dumps({"level": 30, "time": 1, "ddKey": hexkey, "traceHash": hexkey, "msg": "m"})
    (event,) = parse([line])
    assert event.fields["ddKey"] == REDACTED and event.fields["traceHash"] == hexkey


def test_disabled_changes_nothing() -> None:
    lines = (FIXTURES / "pino-redact.ndjson").read_bytes().splitlines()
    events = parse(lines, RedactConfig(enabled=False))
    assert [e.raw for e in events] == lines
    assert "hunter2" in events[4].fields["http"]["url"]


def test_text_events_redact_fields_and_raw() -> None:
    nest = [
        b"\x1b[32m[Nest] 1  - \x1b[39m11/23/2026, 12:47:50 AM \x1b[32m    LOG\x1b[39m \x1b[38;5;3m[Http] \x1b[39m"
        b"Object(3) {",
        b"  authorization: \x1b[32m'Bearer abcdefghijklmnopqrstuvwxyz'\x1b[39m,",
        b"  cookie: 'sid=abc123def456',",
        b"  url: '/login?password=hunter2'",
        b"}",
    ]
    pretty = [
        b"[00:47:27.125] \x1b[32mINFO\x1b[39m (1): \x1b[36mincoming request\x1b[39m",
        b"    \x1b[35mreq\x1b[39m: {",
        b'      "headers": {',
        b'        "authorization": "Basic dXNlcjpwYXNzd29yZA==",',
        b'        "x-api-key": "k-12345"',
        b"      }",
        b"    }",
        b"[00:47:27.200] \x1b[32mINFO\x1b[39m (1): \x1b[36mdone\x1b[39m",
    ]
    events = parse(nest + pretty)
    assert len(events) == 3
    for event in events:
        for secret in ("abcdefghijklmnopqrstuvwxyz", "abc123def456", "hunter2", "dXNlcjpwYXNzd29yZA==", "k-12345"):
            assert secret not in texts(event.fields) and secret.encode() not in event.raw
    assert events[1].fields["req"]["headers"] == {"authorization": REDACTED, "x-api-key": REDACTED}
    assert events[1].raw.startswith(b"[00:47:27.125] \x1b[32mINFO")  # the raw stays text, redacted
    assert events[2].raw == pretty[-1]


def test_raw_falls_back_to_fields_when_the_text_differs() -> None:
    """A secret written with JSON escapes in pino-pretty output cannot be patched in the text."""
    lines = [b"[00:47:27.125] INFO (1): m", b'    password: "p\\"w"']
    (event,) = parse(lines)
    assert event.fields["password"] == REDACTED
    assert orjson.loads(event.raw)["password"] == REDACTED


def test_prefilter_lets_clean_lines_through_untouched() -> None:
    redactor = Redactor(RedactConfig())
    clean = [
        b'{"level":30,"time":1,"pid":1,"hostname":"api-7d9f8b6c5d-x2kqz","reqId":"req-kwz","msg":"incoming request"}',
        b'{"level":40,"msg":"payment provider slow","orderId":"ord_1"}',
    ]
    assert [redactor.suspect(line) for line in clean] == [False, False]
    lines = [*clean, b'{"msg":"Bearer abcdefghijkl"}', *clean, b"x@y"]
    assert redactor.suspects(b"\n".join(lines)) == {2, 5}


@pytest.mark.parametrize(
    ("message", "rule"),
    [
        ("auth header bearer abcdefghij1234 lowercase", "bearer"),
        ("AUTHORIZATION: Basic dXNlcjpwYXNz", "header"),
        ("Set-Cookie: sid=abc; HttpOnly", "header"),
        ("GET /x?PASSWORD=hunter2&page=1", "query_secret"),
        ("GET /x?api_key=abc123&page=1", "query_secret"),
        ("GET /x?secret=abc123", "query_secret"),
        ("Secret: hunter2", "secret_kv"),
        ("client_secret=hunter2", "secret_kv"),
        ("pwd=hunter2", "secret_kv"),
        ("temp key ASIAY34FZKBOKMUTVV7A", "aws"),
        ("key sb_secret_AbCdEf0123456789xyz", "supabase"),
        ("webhook with sk_test_0123456789abcdef", "stripe"),
        ("redis://:pa55@cache:6379", "url_password"),
    ],
)
def test_each_rule_passes_the_prefilter(message: str, rule: str) -> None:
    redactor = Redactor(RedactConfig())
    line = orjson.dumps({"msg": message})
    assert redactor.suspect(line)
    before = count(rule)
    (event,) = parse([line])
    assert REDACTED in event.fields["message"] and count(rule) == before + 1


WORDS = [
    "authorization",
    "Authorization",
    "AUTHORIZATION",
    "cookie",
    "Set-Cookie",
    "x-api-key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "clientSecret",
    "token",
    "accessToken",
    "apiKey",
    "api_key",
    "Bearer",
    "bearer",
    "basic",
    "sk_live_abcdefghij12",
    "rk_test_abcdefghij12",
    "sbp_0123456789abcdef0123",
    "sb_secret_abcdefgh12",
    "AKIA",
    "IOSFODNN7EXAMPLE",
    JWT,
    "eyJ",
    "user:pw@",
    "postgres://",
    "?",
    "&",
    "=",
    ":",
    " ",
    "'",
    '"',
    "@",
    "key",
    "ddKey",
    "0123456789abcdef0123456789abcdef",
    "req-k7",
    "vm",
    "msg",
    "hello",
    "+4915112345678",
    "x@y.io",
    "pass_word",
    "Pass-Wd",
    "to_ken",
    "api-k_ey",
]
SEPARATORS = [" ", "=", ": ", "/", ",", '"', "'", "&", "\n"]
glued = st.lists(st.sampled_from(WORDS), max_size=8).map("".join)
text = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=6).map(
    lambda parts: "".join(word + separator for word, separator in parts)
)
json_value = st.recursive(
    st.one_of(glued, text, st.integers(-(2**63), 2**63 - 1), st.none(), st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)


@contextlib.contextmanager
def prefilter(kind: str) -> Iterator[None]:
    """The compiled prefilter (shipper/_speedups.c) or its Python twin, for the block."""
    if kind == "compiled" and SPEEDUPS is None:
        pytest.skip("shipper._speedups was not built (no C compiler?)")
    saved = redact_module.SPEEDUPS
    redact_module.SPEEDUPS = SPEEDUPS if kind == "compiled" else None
    try:
        yield
    finally:
        redact_module.SPEEDUPS = saved


@pytest.mark.parametrize("kind", ["compiled", "python"])
@settings(max_examples=600, deadline=None)
@given(record=st.dictionaries(glued, json_value, max_size=5), emails=st.booleans(), phones=st.booleans())
def test_prefilter_never_misses_what_a_rule_would_redact(
    kind: str, record: dict[str, Any], emails: bool, phones: bool
) -> None:
    with prefilter(kind):
        redactor = Redactor(RedactConfig(emails=emails, phones=phones))
        line = orjson.dumps(record)
        walked = copy.deepcopy(record)
        if redactor.record(walked) is not None:
            assert redactor.suspect(line), line
            assert redactor.suspects(b"{}\n" + line + b"\n{}") == {1}, line


@settings(max_examples=800, deadline=None)
@given(record=st.dictionaries(glued, json_value, max_size=5), emails=st.booleans(), phones=st.booleans())
def test_the_compiled_walk_redacts_exactly_what_the_python_walk_does(
    record: dict[str, Any], emails: bool, phones: bool
) -> None:
    """shipper/_speedups.c `suspect_slots` hands the walk only the values it must judge: the same
    record comes out, with the same secrets found in the same order."""
    results = []
    for kind in ("compiled", "python"):
        with prefilter(kind):
            walked = copy.deepcopy(record)
            found = Redactor(RedactConfig(emails=emails, phones=phones)).record(walked)
        results.append((walked, found))
    assert results[0] == results[1]


@pytest.mark.parametrize("kind", ["compiled", "python"])
@settings(max_examples=600, deadline=None)
@given(value=st.one_of(glued, text), emails=st.booleans(), phones=st.booleans())
def test_a_value_the_prefilter_passes_is_one_no_rule_changes(kind: str, value: str, emails: bool, phones: bool) -> None:
    """Within a suspect record each string is prefiltered again: what it lets through untouched,
    every rule (tried on its own triggers) must leave untouched too."""
    with prefilter(kind):
        config = RedactConfig(emails=emails, phones=phones)
        filtered, unfiltered = Redactor(config), Redactor(config)
        unfiltered._untriggered = True  # every value goes through the rules' own trigger tests
        assert filtered.text(value) == unfiltered.text(value)


@pytest.mark.parametrize("kind", ["compiled", "python"])
@pytest.mark.parametrize("key", ["pass_word", "Pass-Word", "api_k-ey", "to_ken", "client-secret"])
def test_a_secret_field_spelled_with_separators_is_redacted_among_clean_lines(kind: str, key: str) -> None:
    """A key's rule is judged on its name without `-`/`_`, so the prefilter must see it that way
    too: otherwise the line is never walked and the value ships in clear."""
    with prefilter(kind):
        clean = b'{"level":30,"time":1795394836366,"msg":"incoming request","hostname":"h"}'
        secret = orjson.dumps({"level": 30, "time": 1795394836366, "msg": "login", "hostname": "h", key: "hunter22"})
        events = parse([clean, secret, clean])
    assert events[1].fields[key] == REDACTED
    assert b"hunter22" not in events[1].raw


@settings(max_examples=300, deadline=None)
@given(prefix=text, secret=st.sampled_from([*SECRETS[7:12], JWT]), suffix=text)
def test_secret_shapes_never_survive_in_any_field(prefix: str, secret: str, suffix: str) -> None:
    line = orjson.dumps({"level": 30, "time": 1, "msg": f"{prefix} {secret} {suffix}", "nested": [{"v": secret}]})
    (event,) = parse([line])
    assert secret not in texts(event.fields) and secret.encode() not in event.raw
    assert re.search(r"\[REDACTED\]", event.fields["message"])


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    *("password: hunter22", "?token=abc123", "Authorization: Basic x", "eyJhbGciOi.eyJzdWIi.sig"),
                    *("://u:p@h", "user@example.com", "bearer abcdefgh1234", "sk_live_abcdefghijkl"),
                    "AKIAABCDEFGHIJKLMNOP",
                ]
            ),
            st.text(alphabet=st.characters(codec="utf-8"), max_size=6),
        ),
        max_size=8,
    )
)
def test_a_value_without_a_rules_marks_never_matches_that_rule(words: list[str]) -> None:
    """The marks that let `_value` skip a rule's regex are characters that regex cannot match
    without: removing them from any text leaves nothing for it to find."""
    text = "".join(words)
    for name, _, pattern, marks in (*redact_module._VALUE_RULES, redact_module._EMAIL, redact_module._PHONE):
        stripped = text
        for mark in marks:
            stripped = stripped.replace(mark, " ")
        if marks:
            assert re.search(pattern, stripped) is None, (name, stripped)


def test_values_seen_clean_stay_clean_and_secrets_are_redacted_and_counted_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Values the rules left unchanged are remembered (a trigger word in a repeated URL costs the
    rules once); a value with a secret never is: each line with it is redacted and counted."""
    monkeypatch.setattr(redact_module, "CLEAN_VALUES", 3)
    lines = [
        b'{"level":30,"time":1795394900000,"msg":"req","url":"/v1/auth/token","q":"/login?token=s3cretPw"}',
    ] * 4 + [b'{"level":30,"time":1795394900000,"msg":"req","url":"/v1/token/%d"}' % n for n in range(6)]
    before = count("query_secret")
    events = parse(lines)
    assert [event.fields["url"] for event in events[:4]] == ["/v1/auth/token"] * 4
    assert [event.fields["q"] for event in events[:4]] == [f"/login?token={REDACTED}"] * 4
    assert all(b"s3cretPw" not in event.raw for event in events)
    assert count("query_secret") == before + 4
    assert [event.fields["url"] for event in events[4:]] == [f"/v1/token/{n}" for n in range(6)]

    redactor = Redactor(RedactConfig())
    for n in range(10):
        assert redactor.text(f"/v1/token/{n}") == f"/v1/token/{n}"
        assert redactor.text(f"/v1/token/{n}?token=abc{n}xyz") == f"/v1/token/{n}?token={REDACTED}"
    assert len(redactor._clean) <= 3  # bounded: it starts over when full
