"""The compiled hot path (shipper/_speedups.c) gives exactly what its Python twin gives.

The twin (shipper/parsing/pino.py `normalize_records_py`) defines the pino fast path; the C
version must agree with it on every record, plain or odd: the same events (fields, their order,
raw), the same records left for the careful path, the same clock notes and timestamp cache.
"""

from __future__ import annotations

import copy
import gc
import os
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shipper.bulk import stamp_groups, stamp_groups_py
from shipper.config import RedactConfig, SourceConfig
from shipper.encoding import framed_py
from shipper.event import Encoded, Event, encoded_events_py, wire_ends_py, wire_size_py
from shipper.parsing import build_processor
from shipper.parsing import pino as pino_module
from shipper.parsing.pino import normalize_records_py
from shipper.speedups import SPEEDUPS
from sinks.cloudwatch_events import log_event_lines_py
from sinks.loki_entries import escaped_lines_py
from sinks.loki_push import SAME_TIME_NS, distinct_times_py, entries_py
from tests.conftest import CORPUS, needs_corpus

NOW_MS = int(time.time() * 1000)


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """CI and any machine with a C compiler and Python's headers run the compiled path: a broken
    build must not pass silently as the slower twin."""
    if os.environ.get("SHIPPER_PURE_PYTHON"):
        pytest.skip("SHIPPER_PURE_PYTHON is set: the Python twin runs on purpose")
    headers = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    if not (shutil.which("cc") or shutil.which("gcc")) or not headers:
        pytest.skip("no C compiler or Python headers here: the Python twin runs")
    assert SPEEDUPS is not None, "shipper._speedups was not built: reinstall (pip install .) and read its warning"
    assert pino_module.normalize_records is SPEEDUPS.normalize_records


def both(records: list[Any], raws: list[bytes], stream: str | None, second: int, prefix: str) -> tuple[Any, Any]:
    """The C and the Python results on copies of the same records, as plain values."""
    assert SPEEDUPS is not None
    results = []
    for run in (SPEEDUPS.normalize_records, normalize_records_py):
        mine = copy.deepcopy(records)
        events, slow, before, fresh, new_second, new_prefix = run(mine, raws, "svc", "api", stream, second, prefix)
        shown = [None if event is None else (list(event.fields.items()), event.raw) for event in events]
        results.append((shown, slow, before, fresh, new_second, new_prefix, mine))
    return results[0], results[1]


needs_speedups = pytest.mark.skipif(SPEEDUPS is None, reason="shipper._speedups was not built")

# Values that exercise every check of the fast path.
odd_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
stamp = st.one_of(
    st.integers(NOW_MS - 86_400_000, NOW_MS + 86_400_000),
    st.sampled_from([99_999_999_999, 100_000_000_000, 99_999_999_999_999, 100_000_000_000_000, -5, 0, 2**64]),
    odd_value,
)
req = st.one_of(
    st.fixed_dictionaries({"method": st.sampled_from(["GET", "POST"]), "url": st.text(max_size=8)}),
    st.fixed_dictionaries({"method": st.just("GET")}),
    odd_value,
)
res: st.SearchStrategy[Any] = st.one_of(
    st.fixed_dictionaries({"statusCode": st.sampled_from([200, 500])}), st.just({}), odd_value
)
optional_keys = st.sampled_from(
    ["req", "res", "responseTime", "level_num", "timestamp", "message", "host", "service", "source", "stream", "http"]
)


@st.composite
def records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(odd_value)  # not a dict at all
    record: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        record["level"] = draw(st.one_of(st.sampled_from([10, 20, 30, 35, 40, 50, 60, 70]), odd_value))
    if draw(st.integers(0, 9)):
        record["time"] = draw(stamp)
    if draw(st.integers(0, 9)):
        record["msg"] = draw(st.one_of(st.text(max_size=10), odd_value))
    if draw(st.integers(0, 9)):
        record["hostname"] = draw(st.one_of(st.just("api-1"), odd_value))
    for key in draw(st.lists(optional_keys, max_size=3, unique=True)):
        record[key] = draw({"req": req, "res": res}.get(key, odd_value))
    return record


@needs_speedups
@settings(max_examples=1500, deadline=None)
@given(
    batch=st.lists(records(), max_size=8),
    stream=st.sampled_from([None, "stdout"]),
    cached=st.booleans(),
)
def test_c_and_python_agree_on_any_records(batch: list[Any], stream: str | None, cached: bool) -> None:
    raws = [b"line %d" % index for index in range(len(batch))]
    second = NOW_MS // 1000 if cached else -1
    prefix = "2000-01-01T00:00:00" if cached else ""  # a stale cache entry must be kept as is
    compiled_result, python_result = both(batch, raws, stream, second, prefix)
    assert compiled_result == python_result


@needs_speedups
@needs_corpus
def test_c_and_python_agree_on_the_fastify_corpus() -> None:
    lines = (CORPUS / "fastify-pino.ndjson").read_bytes().splitlines()
    parsed = [orjson.loads(line) for line in lines if line.startswith(b"{")]
    compiled_result, python_result = both(parsed, [b"x"] * len(parsed), "stdout", -1, "")
    assert compiled_result == python_result
    assert sum(event is not None for event in compiled_result[0]) > len(parsed) // 2  # the fast path did run


def test_a_processor_gives_the_same_events_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole parse, fast and careful records mixed with text: the same events, in the same order."""
    lines = [
        orjson.dumps(
            {"level": 30, "time": NOW_MS, "hostname": "h", "req": {"method": "GET", "url": "/"}, "msg": "hi"}
        ),
        orjson.dumps({"level": 35, "time": NOW_MS + 1, "hostname": "h", "msg": "custom level"}),
        orjson.dumps({"level": 30, "time": NOW_MS + 2, "hostname": "h", "msg": "collides", "message": "mine"}),
        b"plain text in between",
        b"    at continuation (file.js:1:1)",
        orjson.dumps(
            {"level": 50, "time": NOW_MS + 3, "hostname": "h", "res": {"statusCode": 5}, "responseTime": 1, "msg": "x"}
        ),
        orjson.dumps({"level": "info", "timestamp": NOW_MS + 4, "message": "nest"}),
        orjson.dumps({"level": 30, "msg": "no time", "hostname": "h"}),
    ]  # fmt: skip
    config = SourceConfig(type="stdin")
    results = []
    for run in (pino_module.normalize_records, normalize_records_py):
        monkeypatch.setattr("shipper.parsing.normalize_records", run)
        processor = build_processor("api", config, host="agent", redact=RedactConfig())
        events = processor.parse(list(lines), "stdout", NOW_MS / 1000) + processor.flush(force=True)
        results.append([(event.fields, event.raw) for event in events])
    assert results[0] == results[1]
    assert [fields["message"] for fields, _ in results[0]][:3] == ["hi", "custom level", "collides"]
    assert results[0][2][0]["original_message"] == "mine"


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    logs=st.lists(st.binary(max_size=12).map(lambda raw: raw.replace(b"\n", b" ")), max_size=20),
    stamped=st.booleans(),
    received=st.booleans(),
)
def test_prepared_logs_become_the_same_events_either_way(logs: list[bytes], stamped: bool, received: bool) -> None:
    """From bytes (prepared here) or a bytearray (a worker's reply): events whose raws are bytes."""
    assert SPEEDUPS is not None
    body: bytes | bytearray = b"".join(raw + b"\n" for raw in logs)
    if received:
        body = bytearray(body)
    stamps = [f"stamp {index}" for index in range(len(logs))] if stamped else None
    fields = {"source": "app"}
    compiled = SPEEDUPS.encoded_events(Encoded, fields, body, stamps)
    gc.collect()  # the new objects are whole when a collection walks them
    twin = encoded_events_py((body, stamps), fields)
    assert [(type(e), e.fields, e.raw, e.stamp) for e in compiled] == [
        (type(e), e.fields, e.raw, e.stamp) for e in twin
    ]  # type: ignore[attr-defined]
    assert all(event.fields is fields and type(event.raw) is bytes for event in compiled)
    with pytest.raises(ValueError, match="timestamps"):
        SPEEDUPS.encoded_events(Encoded, fields, body + b"one more\n", stamps or [])


class _Upper(Event):
    """An event whose `raw` is computed, not the slot: the compiled pass must ask for it."""

    __slots__ = ()

    def __init__(self) -> None:
        self.fields = {}

    @property  # type: ignore[override]
    def raw(self) -> bytes:
        return b"UPPER"


@needs_speedups
@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(st.tuples(st.sampled_from(["event", "encoded", "upper"]), st.binary(max_size=40)), max_size=30))
def test_wire_sizes_and_bodies_are_the_same_either_way_for_every_kind_of_event(kinds: list[tuple[str, bytes]]) -> None:
    assert SPEEDUPS is not None
    make = {
        "event": lambda raw: Event({}, raw),
        "encoded": lambda raw: Encoded({}, raw, None),
        "upper": lambda raw: _Upper(),
    }
    events = [make[kind](raw) for kind, raw in kinds]
    assert SPEEDUPS.wire_ends(Event, events, True) == wire_ends_py(events)
    assert SPEEDUPS.wire_ends(Event, events, False) == wire_size_py(events)
    for frame in ((b"[", b",", b"]"), (b"", b"\n", b"\n"), (b'{"logEvents":[', b",", b"]}")):
        assert SPEEDUPS.framed(Event, events, *frame) == framed_py(events, *frame)
    with pytest.raises(TypeError, match="not bytes"):
        SPEEDUPS.wire_ends(Event, [*events, Event({}, "text")], False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not bytes"):
        SPEEDUPS.framed(Event, [*events, Event({}, "text")], b"[", b",", b"]")  # type: ignore[arg-type]


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 3_000_000), max_size=30),
    newest=st.one_of(st.just(-1), st.integers(0, 4_000_000)),
)
def test_equal_loki_times_move_apart_the_same_way_either_way(offsets: list[int], newest: int) -> None:
    assert SPEEDUPS is not None
    base = NOW_MS * 1_000_000
    times = sorted(base + offset // 1_000_000 * 1_000_000 for offset in offsets)  # whole milliseconds, in order
    last = -1 if newest < 0 else base + newest
    results = []
    for distinct in (SPEEDUPS.distinct_times, distinct_times_py):
        group: list[Any] = [Encoded({}, b"line", ("{}", ns, b"")) for ns in times]
        distinct(group, '{"app":"x"}', last, SAME_TIME_NS)
        results.append([event.stamp for event in group])
    assert results[0] == results[1]
    sent = [ns for _, ns, _ in results[0]]
    if last < 0:  # nothing sent before: every time distinct, in arrival order
        assert sent == sorted(set(sent))


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.text(max_size=30), st.integers(0, 2**63 - 1), st.sampled_from([b"", b',{"trace_id":"a\\"b"}'])),
        max_size=20,
    ),
)
def test_loki_entries_are_the_same_json_either_way(entries: list[tuple[str, int, bytes]]) -> None:
    """Quotes, backslashes, every control character and any UTF-8 in a line; times of any size."""
    # a line arrives escaped already (made where the events were parsed): copied as it is
    events: list[Event] = [
        Encoded({}, orjson.dumps(line)[1:-1], ("{}", ns, metadata)) for line, ns, metadata in entries
    ]
    assert SPEEDUPS is not None
    compiled = SPEEDUPS.loki_entries(Encoded, events)
    assert compiled == entries_py(events)
    text, ends = compiled
    if entries:  # every entry is a JSON array whose line reads back as the original
        values = orjson.loads(b"[" + text[:-1] + b"]")
        assert [(int(ns), line) for ns, line, *_ in values] == [(ns, line) for line, ns, _ in entries]
        assert ends[-1] == len(text)


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")), max_size=12
    )
)
@example(lines=['",', ""])  # a quote then a comma: `","` inside a line, not only between lines
def test_lines_are_escaped_the_same_either_way(lines: list[str]) -> None:
    """Each line escaped as orjson escapes a str (quotes, backslashes, control characters, any UTF-8
    kept), a line each, whatever the line holds but a newline."""
    body = "".join(line + "\n" for line in lines).encode()
    assert SPEEDUPS is not None
    compiled = SPEEDUPS.escape_lines(body)
    assert compiled == escaped_lines_py(body)
    assert compiled.split(b"\n")[:-1] == [orjson.dumps(line)[1:-1] for line in lines]


@needs_speedups
@given(data=st.binary(max_size=300).map(lambda data: data.replace(b"a", b"\n")))
def test_newlines_are_counted_as_bytes_count_counts_them(data: bytes) -> None:
    assert SPEEDUPS is not None
    assert SPEEDUPS.newlines(data) == data.count(b"\n")
    assert SPEEDUPS.newlines(memoryview(data)) == data.count(b"\n")


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(st.integers(-(2**62), 2**62), st.text(max_size=40)), max_size=20))
def test_cloudwatch_log_events_are_the_same_lines_either_way(events: list[tuple[int, str]]) -> None:
    """Any UTF-8 text in a message (quotes, backslashes, every control character), times of any sign."""
    assert SPEEDUPS is not None
    times, messages = [ms for ms, _ in events], [text.encode() for _, text in events]
    lines = SPEEDUPS.log_event_lines(times, messages)
    assert lines == log_event_lines_py(times, messages)
    assert [orjson.loads(line) for line in lines.splitlines()] == [
        {"timestamp": ms, "message": text} for ms, text in events
    ]


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    stamps=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(-3, 3)), max_size=30),
    key_at=st.sampled_from([0, 1]),
)
def test_stamp_groups_are_the_same_either_way(stamps: list[tuple[str, int]], key_at: int) -> None:
    """Events by their stamp's key in order of first arrival, each group with its times in arrival
    order and whether they never decrease; then sorted, stable, where they do (Loki's stamps have
    the key first, CloudWatch's the time first)."""
    assert SPEEDUPS is not None
    time_at = 1 - key_at
    events: list[Event] = [
        Encoded({}, b"%d" % index, (key, time) if key_at == 0 else (time, key))
        for index, (key, time) in enumerate(stamps)
    ]
    compiled = SPEEDUPS.stamp_groups(events, key_at, time_at)
    assert compiled == stamp_groups_py(events, key_at, time_at)
    sorted_groups = stamp_groups(events, key_at, time_at)
    assert [key for key, _, _ in sorted_groups] == list(dict.fromkeys(key for key, _ in stamps))
    for key, group, times in sorted_groups:
        mine = [(time, index) for index, (k, time) in enumerate(stamps) if k == key]
        assert [int(event.raw) for event in group] == [index for _, index in sorted(mine)]  # stable by time
        assert times == sorted(time for time, _ in mine)
    with pytest.raises(TypeError, match="stamp"):
        SPEEDUPS.stamp_groups([Encoded({}, b"", None)], key_at, time_at)
