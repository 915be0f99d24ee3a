"""How an HTTP sink puts a request on the wire: a body bigger than one write piece goes in pieces
(bounded memory per request) and still arrives whole, with its length, never chunked; the proxy the
environment names is looked up once, its credentials from its URL or ~/.netrc."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from shipper.config import config_from_dict
from shipper.event import Event
from shipper.httpclient import WRITE_PIECE
from shipper.httpsink import HttpSink
from sinks import build_sink
from tests.fakes.forward_proxy import ForwardProxy


@asynccontextmanager
async def destination(received: dict[str, Any]) -> AsyncIterator[int]:
    """A raw HTTP/1.1 server on loopback that records one request's headers and body; its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head[1:] if ":" in line}
        received.update(headers=headers, body=await reader.readexactly(int(headers["content-length"])))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def http_sink(port: int) -> HttpSink:
    doc = {
        "sources": {"api": {"type": "stdin"}},
        "sinks": {
            "out": {"type": "http", "inputs": ["api"], "url": f"http://127.0.0.1:{port}/logs", "compression": "none"}
        },
    }
    sink = build_sink("out", config_from_dict(doc, None, environ={}).sinks["out"])
    assert isinstance(sink, HttpSink)
    return sink


async def test_a_body_of_several_write_pieces_arrives_whole_with_its_length() -> None:
    received: dict[str, Any] = {}
    async with destination(received) as port:
        sink = http_sink(port)
        events = [Event({"message": f"event {i}", "pad": "x" * 300}, b"") for i in range(3000)]
        [request] = sink.encode(events)
        assert len(request.body) > 3 * WRITE_PIECE
        try:
            outcome = await sink.send(request)
        finally:
            await sink.stop()
    assert outcome.kind == "delivered", outcome
    assert received["body"] == request.body
    assert received["headers"]["content-length"] == str(len(request.body))
    assert "transfer-encoding" not in received["headers"]


async def test_the_proxy_takes_its_credentials_from_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY without credentials, ~/.netrc with the proxy host's: they reach the proxy (as
    curl and aiohttp's trust_env read them), on every request though looked up once."""
    user, password = "ops", "netrc-proxy-secret-9d8c7b"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {user} password {password}\n")
    netrc.chmod(0o600)
    proxy = ForwardProxy((user, password))
    await proxy.start()
    received: dict[str, Any] = {}
    try:
        async with destination(received) as port:
            monkeypatch.setenv("NETRC", str(netrc))
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            for name in ("NO_PROXY", "no_proxy", "http_proxy"):
                monkeypatch.delenv(name, raising=False)
            sink = http_sink(port)
            try:
                outcomes = [await sink.send(sink.encode([Event({"message": f"m{i}"}, b"")])[0]) for i in range(2)]
            finally:
                await sink.stop()
    finally:
        await proxy.stop()
    assert [outcome.kind for outcome in outcomes] == ["delivered", "delivered"], outcomes
    assert proxy.forwarded == 2 and proxy.refused == 0
    assert b"m1" in received["body"]
