"""The fake Loki refuses what Loki refuses, stores what Loki stores, and says it with Loki's texts.

Requests are built by hand here (JSON, and protobuf with a small encoder of this file's own), never by the
Loki sink, so the fake stays an independent judge. Every timestamp comes from the clock.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import cramjam
import orjson
import pytest

from tests.conftest import REPO
from tests.fakes.loki import FakeLoki, LokiLimits, grouped, metadata_name
from tests.fakes.loki_wire import LabelSyntaxError, datasize, go_quote, go_time, parse_labels, rfc3339

TENANT = "team-a"
JSON = "application/json"
PROTOBUF = "application/x-protobuf"
HOUR = 3600 * 10**9
MINUTE = 60 * 10**9


def now_ns(offset_ns: int = 0) -> int:
    return time.time_ns() + offset_ns


def stream(labels: dict[str, str], *values: list[Any]) -> dict[str, Any]:
    return {"stream": labels, "values": list(values)}


def push_body(*streams: dict[str, Any]) -> bytes:
    return orjson.dumps({"streams": list(streams)})


# ---------------------------------------------------------------- protobuf, encoded independently


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def proto_push(streams: list[tuple[str, list[tuple[int, str, list[tuple[str, str]]]]]]) -> bytes:
    """logproto.PushRequest from push.proto's field numbers, uncompressed."""
    body = b""
    for labels, entries in streams:
        message = _bytes_field(1, labels.encode())
        for ts, line, metadata in entries:
            timestamp = _int_field(1, ts // 10**9) + _int_field(2, ts % 10**9)
            entry = _bytes_field(1, timestamp) + _bytes_field(2, line.encode())
            for name, value in metadata:
                entry += _bytes_field(3, _bytes_field(1, name.encode()) + _bytes_field(2, value.encode()))
            message += _bytes_field(2, entry)
        body += _bytes_field(1, message)
    return body


# ---------------------------------------------------------------- a client


class Client:
    def __init__(self, loki: FakeLoki, http: aiohttp.ClientSession) -> None:
        self.loki, self.http = loki, http

    async def push(
        self,
        body: bytes,
        *,
        content_type: str | None = JSON,
        encoding: str | None = None,
        tenant: str | None = TENANT,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, dict[str, str]]:
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        if encoding is not None:
            sent["Content-Encoding"] = encoding
        if tenant is not None:
            sent["X-Scope-OrgID"] = tenant
        async with self.http.post(self.loki.url + "/loki/api/v1/push", data=body, headers=sent) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        async with self.http.get(self.loki.url + path, headers=headers or {}) as resp:
            return resp.status, await resp.text()


@pytest.fixture
async def loki() -> AsyncIterator[FakeLoki]:
    async with FakeLoki() as fake:
        yield fake


@pytest.fixture
async def client(loki: FakeLoki) -> AsyncIterator[Client]:
    # The client must not add Content-Encoding or decompress on its own: what it sends is what the test built.
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Content-Type"]) as http:
        yield Client(loki, http)


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def lines(loki: FakeLoki) -> list[str]:
    return [entry.line for entry in loki.entries()]


# ---------------------------------------------------------------- the good path


async def test_a_valid_push_is_stored_as_loki_stores_it(client: Client, loki: FakeLoki) -> None:
    t = now_ns()
    body = push_body(
        stream({"service": "api", "level": "info", "empty": ""}, [str(t), "a", {"trace.id": "x1"}], [str(t), "b"]),
        stream({"level": "info"}, [str(t + 1), "c"]),
    )
    status, text, _ = await client.push(body)
    assert (status, text) == (204, "")
    first, second = loki.streams(TENANT)
    # Empty label values are dropped, service_name is added from `service` (else "unknown_service").
    assert first.labels == {"service": "api", "level": "info", "service_name": "api"}
    assert second.labels == {"level": "info", "service_name": "unknown_service"}
    # Equal timestamps keep arrival order; metadata names are normalized as Loki does (trace.id -> trace_id).
    assert [(e.ts_ns, e.line, e.metadata) for e in first.entries] == [(t, "a", {"trace_id": "x1"}), (t, "b", {})]
    stats = loki.stats()
    assert stats["accepted"] == 3 and stats["statuses"] == {"204": 1}
    assert stats["content_types"] == {JSON: 1} and stats["raw_bytes"] == len(body)
    assert stats["tenants"][TENANT][1] == {"labels": second.labels, "entries": [[t + 1, "c", {}]]}


async def test_an_exact_duplicate_is_deduplicated_silently(client: Client, loki: FakeLoki) -> None:
    t = now_ns()
    body = push_body(stream({"app": "api"}, [str(t), "same"], [str(t), "other"]))
    assert (await client.push(body))[0] == 204
    assert (await client.push(body))[0] == 204  # a retry of a push that had landed
    assert lines(loki) == ["same", "other"]
    assert loki.deduplicated == 2


async def test_a_stream_without_entries_is_a_204_and_no_stream_at_all_a_422(client: Client, loki: FakeLoki) -> None:
    assert (await client.push(push_body(stream({"app": "api"}))))[:2] == (204, "")
    status, text, _ = await client.push(b'{"streams": []}')
    assert (status, text) == (422, "error at least one valid stream is required for ingestion\n")
    assert loki.entries() == []


# ---------------------------------------------------------------- refused whole: the body does not decode


@pytest.mark.parametrize("ts", [1700000000000000000, "17e17", "0123", "", " 1"], ids=repr)
async def test_a_timestamp_that_is_not_a_decimal_string_fails_the_whole_push(
    client: Client, loki: FakeLoki, ts: Any
) -> None:
    good = stream({"app": "ok"}, [str(now_ns()), "kept?"])
    bad = stream({"app": "api"}, [ts, "line"])
    status, text, headers = await client.push(push_body(good, bad))
    assert status == 400 and "unmarshalerDecoder" in text
    assert headers["Content-Type"].startswith("text/plain") and text.endswith("\n")
    assert loki.entries() == []  # nothing stored, not even the valid stream


async def test_a_label_name_that_does_not_parse_fails_the_whole_push(client: Client, loki: FakeLoki) -> None:
    """Loki renders the JSON "stream" object as `{foo-bar="x"}` and parses it with Prometheus' parser
    before validating anything: the push is refused whole, the valid stream with it."""
    t = str(now_ns())
    status, text, _ = await client.push(push_body(stream({"app": "ok"}, [t, "a"]), stream({"foo-bar": "x"}, [t, "b"])))
    assert (status, text) == (400, "couldn't parse labels: 1:5: parse error: unexpected character inside braces: '-'\n")
    status, text, _ = await client.push(push_body(stream({"1abc": "x"}, [t, "c"])))
    assert (status, text) == (400, "couldn't parse labels: 1:2: parse error: unexpected character inside braces: '1'\n")
    assert loki.entries() == []


@pytest.mark.parametrize(
    ("encoding", "body", "answer"),
    [
        ("gzip", push_body(), "gzip: invalid header"),  # says gzip, sends plain JSON
        ("deflate", zlib.compress(push_body()), "flate: corrupt input before offset 0"),  # zlib, not raw deflate
        ("br", push_body(), 'Content-Encoding "br" not supported'),
        ("GZIP", gzip.compress(push_body()), 'Content-Encoding "GZIP" not supported'),  # Go compares exactly
    ],
    ids=["plain-as-gzip", "zlib-as-deflate", "br", "upper-case"],
)
async def test_the_content_encoding_is_checked_on_the_raw_body(
    client: Client, loki: FakeLoki, encoding: str, body: bytes, answer: str
) -> None:
    assert (await client.push(body, encoding=encoding))[:2] == (400, answer + "\n")
    assert loki.statuses == {400: 1}


async def test_gzip_and_raw_deflate_bodies_are_accepted(client: Client, loki: FakeLoki) -> None:
    t = now_ns()
    body = push_body(stream({"app": "api"}, [str(t), "zipped"]))
    zipped = gzip.compress(body)
    assert (await client.push(zipped, encoding="gzip"))[0] == 204
    deflater = zlib.compressobj(wbits=-15)
    raw_deflate = deflater.compress(push_body(stream({"app": "api"}, [str(t + 1), "deflated"]))) + deflater.flush()
    assert (await client.push(raw_deflate, encoding="deflate"))[0] == 204
    assert lines(loki) == ["zipped", "deflated"]
    assert (loki.pushes[0].raw_bytes, loki.pushes[0].decoded_bytes) == (len(zipped), len(body))
    assert loki.stats()["content_encodings"] == {"gzip": 1, "deflate": 1}


async def test_a_missing_content_type_fails_and_an_unknown_one_is_read_as_protobuf(
    client: Client, loki: FakeLoki
) -> None:
    body = push_body(stream({"app": "api"}, [str(now_ns()), "x"]))
    assert (await client.push(body, content_type=None))[:2] == (400, "mime: no media type\n")
    assert (await client.push(body, content_type="text/plain"))[:2] == (400, "snappy: corrupt input\n")
    assert (await client.push(body, content_type="application/json; charset=utf-8"))[0] == 204


# ---------------------------------------------------------------- protobuf


async def test_protobuf_in_raw_snappy_is_accepted_and_framed_snappy_refused(client: Client, loki: FakeLoki) -> None:
    t = now_ns()
    message = proto_push([
        (r'{app="api", msg="a \"quoted\"\nvalue", level=`raw\n`}', [(t, "line 1", [("trace_id", "abc")])]),
        ('{app="api"}', [(t + 5, "line 2", [])]),
    ])  # fmt: skip
    status, text, _ = await client.push(bytes(cramjam.snappy.compress_raw(message)), content_type=PROTOBUF)
    assert (status, text) == (204, "")
    assert loki.pushes[0].decoded_bytes == len(message)
    first, second = loki.streams()
    assert first.labels == {"app": "api", "level": "raw\\n", "msg": 'a "quoted"\nvalue', "service_name": "api"}
    assert first.entries[0] == (t, "line 1", {"trace_id": "abc"})
    assert second.entries[0] == (t + 5, "line 2", {})

    framed = bytes(cramjam.snappy.compress(message))
    assert (await client.push(framed, content_type=PROTOBUF))[:2] == (400, "snappy: corrupt input\n")
    assert (await client.push(message, content_type=PROTOBUF))[0] == 400  # not compressed at all
    bomb = _varint(200 * 1024 * 1024) + b"\x00"  # a snappy block that claims 200 MiB: refused before inflating
    assert (await client.push(bomb, content_type=PROTOBUF))[:2] == (
        413,
        "request body too large: decompressed message size too large than max (209715200 vs 104857600)\n",
    )
    zipped = gzip.compress(bytes(cramjam.snappy.compress_raw(proto_push([('{app="z"}', [(t, "z", [])])]))))
    assert (await client.push(zipped, content_type=PROTOBUF, encoding="gzip"))[0] == 204
    assert len(loki.entries()) == 3


def snappy_proto(streams: list[tuple[str, list[tuple[int, str, list[tuple[str, str]]]]]]) -> bytes:
    return bytes(cramjam.snappy.compress_raw(proto_push(streams)))


async def test_protobuf_label_strings_are_parsed_whole_then_validated_per_stream(
    client: Client, loki: FakeLoki
) -> None:
    t = now_ns()
    unparsable = snappy_proto([('{app="ok"}', [(t, "a", [])]), ('{app="x" y="z"}', [])])
    status, text, _ = await client.push(unparsable, content_type=PROTOBUF)
    assert (status, text) == (
        400,
        'couldn\'t parse labels: 1:10: parse error: unexpected identifier "y" in label set, expected "," or "}"\n',
    )  # even a stream without entries has its labels parsed, and the whole push fails
    duplicate = snappy_proto([('{app="a", app="b"}', [(t, "dup", [])]), ('{app="ok"}', [(t, "fine", [])])])
    status, text, _ = await client.push(duplicate, content_type=PROTOBUF)
    assert (status, text) == (
        400,
        """stream '{app="a", app="b", service_name="a"}' has duplicate label name: 'app'\n""",
    )
    assert lines(loki) == ["fine"]
    assert loki.rejected == {"duplicate_label_names": 1}


# ---------------------------------------------------------------- per stream: labels


@pytest.mark.parametrize(
    ("labels", "reason", "answer"),
    [
        (
            {f"l{i:02d}": "v" for i in range(16)},
            "max_label_names_per_series",
            "entry for stream '{labels}' has 16 label names; limit 15",
        ),
        ({"n" * 1025: "v"}, "label_name_too_long", "stream '{labels}' has label name too long: '" + "n" * 1025 + "'"),
        (
            {"app": "v" * 2049},
            "label_value_too_long",
            "stream '{labels}' has label value too long: '" + "v" * 2049 + "'",
        ),
    ],
    ids=["16-label-names", "name-too-long", "value-too-long"],
)
async def test_a_stream_with_bad_labels_loses_its_entries_and_the_others_are_stored(
    client: Client, loki: FakeLoki, labels: dict[str, str], reason: str, answer: str
) -> None:
    t = str(now_ns())
    status, text, _ = await client.push(
        push_body(stream(labels, [t, "refused 1"], [t, "refused 2"]), stream({"app": "fine"}, [t, "stored"]))
    )
    stored = {**labels, "service_name": labels.get("app", "unknown_service")}
    rendered = "{" + ", ".join(f'{name}="{value}"' for name, value in sorted(stored.items())) + "}"
    assert (status, text) == (400, answer.format(labels=rendered) + "\n")
    assert lines(loki) == ["stored"]
    assert loki.rejected == {reason: 2}


async def test_service_name_is_not_counted_among_the_15_label_names(client: Client, loki: FakeLoki) -> None:
    labels = {f"l{i:02d}": "v" for i in range(15)}
    assert (await client.push(push_body(stream(labels, [str(now_ns()), "fifteen"]))))[0] == 204
    assert loki.streams()[0].labels["service_name"] == "unknown_service"


async def test_labels_starting_with_two_underscores_are_taken_but_counted(client: Client, loki: FakeLoki) -> None:
    """Loki itself does not refuse `__x` (it uses such labels internally); WIRE.md says a client must not
    send them, so the fake counts them for tests to assert on."""
    assert (await client.push(push_body(stream({"__x": "1", "app": "a"}, [str(now_ns()), "l"]))))[0] == 204
    assert loki.reserved_labels == {"__x": 1}


# ---------------------------------------------------------------- per entry


async def test_refused_entries_get_loki_texts_and_the_rest_is_stored(client: Client, loki: FakeLoki) -> None:
    now = now_ns()
    too_old = now - 7 * 24 * HOUR - MINUTE
    too_new = now + 11 * MINUTE
    labels = '{app="api", service_name="api"}'
    status, text, _ = await client.push(
        push_body(
            stream(
                {"app": "api"},
                [str(too_old), "old"],
                [str(now), "x" * (256 * 1024 + 1)],
                [str(now), "y" * (256 * 1024)],  # exactly the limit: kept
                [str(too_new), "new"],
                [str(now + 9 * MINUTE), "inside the grace"],
                [str(too_old), "old again"],
            )
        )
    )
    assert status == 400
    old_text = (
        f"entry for stream '{labels}' has timestamp too old: {rfc3339(too_old)}, oldest acceptable timestamp is: "
    )
    parts = text.rstrip("\n").split("; ")
    assert len(parts) == 3
    assert parts[0].startswith("2 errors like: " + old_text)  # equal texts merge: Loki's GroupedErrors
    assert parts[1] == (
        f"1 errors like: max entry size '262144' bytes exceeded for stream '{labels}' "
        "while adding an entry with length '262145' bytes"
    )
    assert parts[2] == f"1 errors like: entry for stream '{labels}' has timestamp too new: {rfc3339(too_new)}"
    assert lines(loki) == ["y" * (256 * 1024), "inside the grace"]
    assert loki.rejected == {"greater_than_max_sample_age": 2, "line_too_long": 1, "too_far_in_future": 1}


async def test_one_refused_entry_is_said_alone(client: Client, loki: FakeLoki) -> None:
    too_new = now_ns() + HOUR
    status, text, _ = await client.push(push_body(stream({"app": "a"}, [str(too_new), "n"])))
    assert (status, text) == (
        400,
        f"""entry for stream '{{app="a", service_name="a"}}' has timestamp too new: {rfc3339(too_new)}\n""",
    )


async def test_structured_metadata_limits(client: Client, loki: FakeLoki) -> None:
    t = str(now_ns())
    many = {f"k{i}": "v" for i in range(129)}
    large = {"big": "v" * (64 * 1024)}
    status, text, _ = await client.push(
        push_body(stream({"app": "a"}, [t, "many", many], [t, "large", large], [t, "ok", {"k": "v"}]))
    )
    assert status == 400
    assert "has too many structured metadata labels: '129', limit: '128'" in text
    assert "has structured metadata too large: '65539' bytes, limit: '65536' bytes" in text
    assert lines(loki) == ["ok"]


async def test_structured_metadata_refused_where_loki_disallows_it() -> None:
    async with (
        FakeLoki(limits=LokiLimits(allow_structured_metadata=False)) as loki,
        aiohttp.ClientSession() as http,
    ):
        client = Client(loki, http)
        t = str(now_ns())
        status, text, _ = await client.push(push_body(stream({"app": "a"}, [t, "sm", {"k": "v"}], [t, "plain"])))
        assert status == 400 and "includes structured metadata, but this feature is disallowed" in text
        assert lines(loki) == ["plain"]


# ---------------------------------------------------------------- the ingester: 1 h behind, per stream


async def test_an_entry_an_hour_behind_the_newest_of_its_stream_is_refused(client: Client, loki: FakeLoki) -> None:
    now = now_ns()
    old = now - 2 * HOUR
    assert (await client.push(push_body(stream({"app": "a"}, [str(now), "new"]))))[0] == 204
    status, text, _ = await client.push(push_body(stream({"app": "a"}, [str(old), "late"], [str(now + 1), "next"])))
    assert (status, text) == (
        400,
        f"entry with timestamp {go_time(old)} ignored, reason: 'entry too far behind, entry timestamp is: "
        f"{rfc3339(old)}, oldest acceptable timestamp is: {rfc3339(now - HOUR)}',\n"
        f"""user '{TENANT}', total ignored: 1 out of 2 for stream: {{app="a", service_name="a"}}\n""",
    )
    # The same old entry in ANOTHER stream is fine: the rule is per stream.
    assert (await client.push(push_body(stream({"app": "b"}, [str(old), "late"]))))[0] == 204
    assert [(s.labels["app"], [e.line for e in s.entries]) for s in loki.streams()] == [
        ("a", ["new", "next"]),
        ("b", ["late"]),
    ]
    assert loki.rejected == {"too_far_behind": 1}


async def test_order_within_a_push_matters(client: Client, loki: FakeLoki) -> None:
    now = now_ns()
    old = now - 2 * HOUR
    new_first = push_body(stream({"app": "a"}, [str(now), "new"], [str(old), "old"]))
    old_first = push_body(stream({"app": "b"}, [str(old), "old"], [str(now), "new"]))
    assert (await client.push(new_first))[0] == 400
    assert (await client.push(old_first))[0] == 204
    assert [[e.line for e in s.entries] for s in loki.streams()] == [["new"], ["old", "new"]]


async def test_only_the_last_streams_ingester_error_is_said(client: Client, loki: FakeLoki) -> None:
    """Loki's ingester overwrites each stream's error with the next stream's outcome: refusals in an
    earlier stream go unsaid, and the fake counts them."""
    now = now_ns()
    old = now - 2 * HOUR
    await client.push(push_body(stream({"app": "a"}, [str(now), "a new"]), stream({"app": "b"}, [str(now), "b new"])))
    late_a = stream({"app": "a"}, [str(old), "a late"])
    late_b = stream({"app": "b"}, [str(old), "b late"])
    fine = stream({"app": "c"}, [str(now), "c"])
    assert (await client.push(push_body(late_a, fine)))[:2] == (204, "")
    assert loki.hidden_rejections == 1
    status, text, _ = await client.push(push_body(late_a, late_b))
    assert status == 400 and 'for stream: {app="b", service_name="b"}' in text and '"a"' not in text
    assert loki.hidden_rejections == 2
    # An ingester error replaces the distributor's 400 too.
    too_long = stream({"app": "d"}, [str(now), "x" * (256 * 1024 + 1)])
    status, text, _ = await client.push(push_body(too_long, late_b))
    assert status == 400 and "total ignored" in text and "max entry size" not in text
    assert loki.hidden_rejections == 3
    assert loki.rejected == {"too_far_behind": 4, "line_too_long": 1}


# ---------------------------------------------------------------- tenants and credentials


async def test_the_tenant_header_is_required_and_checked(client: Client, loki: FakeLoki) -> None:
    body = push_body(stream({"app": "a"}, [str(now_ns()), "l"]))
    assert (await client.push(body, tenant=None))[:2] == (401, "no org id\n")
    assert (await client.push(body, tenant="t" * 151))[:2] == (400, "tenant ID is too long: max 150 characters\n")
    assert (await client.push(body, tenant="a b"))[:2] == (400, "tenant ID 'a b' contains unsupported character ' '\n")
    assert (await client.push(body, tenant="a|b"))[:2] == (400, "multiple org IDs present\n")
    assert (await client.push(body, tenant="t" * 150))[0] == 204
    assert (await client.push(body, tenant="other"))[0] == 204
    assert [len(loki.entries("t" * 150)), len(loki.entries("other")), len(loki.entries())] == [1, 1, 2]


async def test_without_auth_every_push_goes_to_the_tenant_fake() -> None:
    async with FakeLoki(auth_enabled=False) as loki, aiohttp.ClientSession() as http:
        assert (await Client(loki, http).push(push_body(stream({"a": "b"}, [str(now_ns()), "l"])), tenant=None))[
            0
        ] == 204
        assert [s.tenant for s in loki.streams()] == ["fake"]


async def test_basic_auth_like_grafana_cloud() -> None:
    secret = "glc_s3cret-token"
    async with FakeLoki(basic_auth=("123456", secret)) as loki, aiohttp.ClientSession() as http:
        client = Client(loki, http)
        body = push_body(stream({"a": "b"}, [str(now_ns()), "l"]))
        status, text, _ = await client.push(body, tenant=None)
        assert status == 401 and "no credentials provided" in text
        wrong = basic_auth("123456", "wrong")
        assert (await client.push(body, tenant=None, headers={"Authorization": wrong}))[0] == 401
        right = basic_auth("123456", secret)
        assert (await client.push(body, tenant=None, headers={"Authorization": right}))[0] == 204
        assert [s.tenant for s in loki.streams()] == ["123456"]  # the user is the tenant
        everything = repr(loki) + orjson.dumps(loki.stats()).decode() + "".join(p.body for p in loki.pushes)
        assert secret not in everything


# ---------------------------------------------------------------- limits of the whole push


async def test_a_push_over_the_burst_is_a_429_that_stores_nothing(client: Client, loki: FakeLoki) -> None:
    t = now_ns()
    line = "x" * (256 * 1024)
    body = push_body(stream({"app": "a"}, *[[str(t + i), line] for i in range(25)]))  # 6.25 MiB of lines
    status, text, _ = await client.push(gzip.compress(body, 1), encoding="gzip")
    assert (status, text) == (
        429,
        f"ingestion rate limit exceeded for user {TENANT} (limit: 4194304 bytes/sec) while attempting to ingest "
        f"'25' lines totaling '{25 * len(line)}' bytes, reduce log volume or contact your Loki administrator to see "
        "if the limit can be increased\n",
    )
    assert loki.entries() == [] and loki.rejected == {"rate_limited": 25}
    assert (await client.push(push_body(stream({"app": "a"}, *[[str(t + i), line] for i in range(24)]))))[0] == 204


async def test_an_ingestion_rate_when_asked() -> None:
    limits = LokiLimits(ingestion_rate_bytes=1000, ingestion_burst_bytes=2000)
    async with FakeLoki(limits=limits) as loki, aiohttp.ClientSession() as http:
        client = Client(loki, http)
        t = now_ns()
        assert (await client.push(push_body(stream({"a": "b"}, [str(t), "x" * 1500]))))[0] == 204
        assert (await client.push(push_body(stream({"a": "b"}, [str(t + 1), "y" * 1500]))))[0] == 429
        assert lines(loki) == ["x" * 1500]


async def test_a_gateway_refuses_a_large_raw_body_before_loki() -> None:
    async with FakeLoki(gateway_max_bytes=1000) as loki, aiohttp.ClientSession() as http:
        client = Client(loki, http)
        t = str(now_ns())
        status, text, headers = await client.push(push_body(stream({"a": "b"}, [t, "x" * 2000])), tenant=None)
        assert status == 413 and "<center>nginx</center>" in text and headers["Content-Type"].startswith("text/html")
        assert (await client.push(gzip.compress(push_body(stream({"a": "b"}, [t, "x" * 2000]))), encoding="gzip"))[
            0
        ] == 204
        assert len(loki.entries()) == 1


# ---------------------------------------------------------------- faults on command


async def test_faults_on_command(client: Client, loki: FakeLoki) -> None:
    t = now_ns()

    def body(i: int) -> bytes:
        return push_body(stream({"app": "a"}, [str(t + i), f"line {i}"]))

    loki.fail_next(1, 429, retry_after="2")
    status, text, headers = await client.push(body(0))
    assert status == 429 and text.startswith(f"ingestion rate limit exceeded for user {TENANT}")
    assert headers["Retry-After"] == "2"
    loki.fail_next(2, 503)
    assert [(await client.push(body(1)))[0], (await client.push(body(2)))[0]] == [503, 503]
    for status in (500, 502, 401, 403, 413):
        loki.fail_next(1, status)
        assert (await client.push(body(3)))[0] == status
    loki.fail_for(0.3, 502)
    assert (await client.push(body(4)))[0] == 502
    await asyncio.sleep(0.35)
    assert (await client.push(body(5)))[0] == 204
    assert lines(loki) == ["line 5"]


async def test_a_per_stream_rate_limit_stores_the_other_streams(client: Client, loki: FakeLoki) -> None:
    t = now_ns()
    info = stream({"app": "a", "level": "info"}, [str(t), "info"])
    error = stream({"app": "a", "level": "error"}, [str(t), "error 1"], [str(t + 1), "error 2"])
    loki.limit_streams({"level": "error"}, retry_after="1")
    status, text, headers = await client.push(push_body(info, error))
    labels = '{app="a", level="error", service_name="a"}'
    assert status == 429 and headers["Retry-After"] == "1"
    assert text == (
        f"entry with timestamp {go_time(t)} ignored, reason: 'Per stream rate limit exceeded (limit: 3MB/sec) while "
        f"attempting to ingest for stream '{labels}' totaling 7B, consider splitting a stream via additional labels "
        "or contact your Loki administrator to see if the limit can be increased',\n"
        f"entry with timestamp {go_time(t + 1)} ignored, reason: 'Per stream rate limit exceeded (limit: 3MB/sec) "
        f"while attempting to ingest for stream '{labels}' totaling 7B, consider splitting a stream via additional "
        "labels or contact your Loki administrator to see if the limit can be increased',\n"
        f"user '{TENANT}', total ignored: 2 out of 2 for stream: {labels}\n"
    )
    assert lines(loki) == ["info"]
    # The limited stream first: Loki answers for the last stream only, a 204, and the refusal goes unsaid.
    loki.limit_streams({"level": "error"})
    retry = stream({"app": "a", "level": "error"}, [str(t + 2), "error 3"])
    assert (await client.push(push_body(retry, stream({"app": "a", "level": "info"}, [str(t + 3), "info 2"]))))[
        0
    ] == 204
    assert loki.hidden_rejections == 1 and loki.rejected == {"per_stream_rate_limit": 3}
    assert (await client.push(push_body(error)))[0] == 204  # the limit was for one push
    assert sorted(lines(loki)) == ["error 1", "error 2", "info", "info 2"]


async def test_a_rate_limited_stream_names_only_its_rate_limited_entries(client: Client, loki: FakeLoki) -> None:
    """Loki shards streams, so a stream is rate limited whole and its error lists the rate-limited entries
    only: an entry of it refused as too far behind is not said."""
    now = now_ns()
    await client.push(push_body(stream({"app": "a"}, [str(now), "newest"])))
    loki.limit_streams()
    status, text, _ = await client.push(push_body(stream({"app": "a"}, [str(now - 2 * HOUR), "late"], [str(now), "x"])))
    assert status == 429 and "total ignored: 1 out of 2" in text and "too far behind" not in text
    assert loki.rejected == {"too_far_behind": 1, "per_stream_rate_limit": 1} and loki.hidden_rejections == 1


# ---------------------------------------------------------------- other endpoints


async def test_ready_and_labels(client: Client, loki: FakeLoki) -> None:
    assert await client.get("/ready") == (200, "ready\n")
    loki.set_ready(False)
    assert (await client.get("/ready"))[0] == 503
    assert await client.get("/loki/api/v1/labels") == (401, "no org id\n")
    tenant = {"X-Scope-OrgID": TENANT}
    assert await client.get("/loki/api/v1/labels", tenant) == (200, '{"status":"success"}\n')  # no data: omitted
    await client.push(push_body(stream({"app": "a", "level": "info"}, [str(now_ns()), "l"])))
    status, text = await client.get("/loki/api/v1/labels", tenant)
    assert status == 200 and orjson.loads(text) == {"status": "success", "data": ["app", "level", "service_name"]}


def test_served_from_a_thread_for_synchronous_tests() -> None:
    with FakeLoki().threaded() as loki:
        body = push_body(stream({"app": "a"}, [str(now_ns()), "from a thread"]))
        headers = {"Content-Type": JSON, "X-Scope-OrgID": TENANT}
        request = urllib.request.Request(loki.url + "/loki/api/v1/push", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 204
        assert lines(loki) == ["from a thread"]


@pytest.fixture
def fake_process() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.loki", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("listening http://127.0.0.1:"), line
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_as_a_process_with_control_endpoints(fake_process: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = fake_process

    def call(path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(url + path, data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    push_headers = {"Content-Type": JSON, "X-Scope-OrgID": TENANT}
    t = now_ns()
    assert call("/control/fault", orjson.dumps({"status": 429, "count": 1}), {"Content-Type": JSON})[0] == 200
    assert call("/loki/api/v1/push", push_body(stream({"a": "b"}, [str(t), "one"])), push_headers)[0] == 429
    assert call("/loki/api/v1/push", push_body(stream({"a": "b"}, [str(t), "one"])), push_headers)[0] == 204
    assert call("/control/ready", orjson.dumps({"ready": False}), {"Content-Type": JSON})[0] == 200
    assert call("/ready")[0] == 503
    status, raw = call("/control/stats")
    stats = orjson.loads(raw)
    assert status == 200 and stats["statuses"] == {"204": 1, "429": 1} and stats["rejected"] == {"rate_limited": 1}
    assert stats["tenants"] == {
        TENANT: [{"labels": {"a": "b", "service_name": "unknown_service"}, "entries": [[t, "one", {}]]}]
    }
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert proc.stderr is not None and orjson.loads(proc.stderr.read())["accepted"] == 1


# ---------------------------------------------------------------- Loki's text formats, unit by unit


def test_go_text_formats() -> None:
    t = time.time_ns()
    whole = t - t % 10**9
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rfc3339(t))
    assert go_time(whole) == rfc3339(whole).replace("T", " ").replace("Z", " +0000 UTC")
    assert go_time(whole + 500_000_000) == rfc3339(whole).replace("T", " ").replace("Z", ".5 +0000 UTC")
    assert go_time(whole + 1) == rfc3339(whole).replace("T", " ").replace("Z", ".000000001 +0000 UTC")
    assert [datasize(n) for n in (0, 7, 1024, 3 * 1024 * 1024, 1500)] == ["0B", "7B", "1KB", "3MB", "1500B"]
    assert go_quote('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01é"'
    assert grouped(["a"]) == "a" and grouped(["a", "a"]) == "2 errors like: a"
    assert grouped(["a", "b", "a"]) == "2 errors like: a; 1 errors like: b"
    assert [metadata_name(n) for n in ("trace.id", "a__b", "1x", "__x__", "_y")] == [
        "trace_id",
        "a_b",
        "key_1x",
        "__x__",
        "_y",
    ]
    with pytest.raises(ValueError, match="invalid name"):
        metadata_name("...")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{a="b"', "1:7: parse error: unexpected end of input inside braces"),
        ('{a="b}', "1:4: parse error: unterminated quoted string"),
        ("{a}", '1:3: parse error: unexpected "}" in label set, expected "="'),
        ("{a=b}", '1:4: parse error: unexpected identifier "b" in label set, expected string'),
        ('{a=~"b"}', '1:3: parse error: unexpected "=~" in label set, expected "="'),
        ('{a="\\q"}', "1:4: parse error: unknown escape sequence U+0071"),
    ],
)
def test_label_strings_that_prometheus_refuses(text: str, error: str) -> None:
    with pytest.raises(LabelSyntaxError) as caught:
        parse_labels(text)
    assert str(caught.value) == error


def test_label_strings_that_prometheus_reads() -> None:
    assert parse_labels('{b="2",a="1",}') == [("a", "1"), ("b", "2")]
    assert parse_labels("{a='x\\'y', b=`raw\\n`, c=\"\\u00e9\\x41\\101\"}") == [
        ("a", "x'y"),
        ("b", "raw\\n"),
        ("c", "éAA"),
    ]
    assert parse_labels('{"dotted.name"="v", e=""}') == [("dotted.name", "v")]  # UTF-8 names quoted; empty dropped
    assert parse_labels('up{job="x"}') == [("__name__", "up"), ("job", "x")]
    assert parse_labels("{}") == []
