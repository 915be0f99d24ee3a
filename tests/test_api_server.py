"""shipper/api.py's HTTP server, spoken to byte by byte on loopback: what Prometheus, a kubelet's
probes and curl send, and what they must never be able to do to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from shipper.api import MAX_HEAD, ApiServer
from shipper.config import ApiConfig
from shipper.httpclient import split_head


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    agent: Any = SimpleNamespace(contexts={}, drivers={}, ready=True, stopping=asyncio.Event())
    server = ApiServer(ApiConfig(enabled=True, address="127.0.0.1:0"), agent)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[str, dict[str, str], bytes]:
    writer.write(request)
    status, headers = split_head(await reader.readuntil(b"\r\n\r\n"))
    body = b"" if request.startswith(b"HEAD") else await reader.readexactly(int(headers["content-length"]))
    return status, dict(headers), body


async def test_requests_are_answered_in_turn_on_one_kept_alive_connection(api: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    status, headers, body = await exchange(reader, writer, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["content-type"], body) == ("HTTP/1.1 200 OK", "application/json", b'{"status":"ok"}')
    assert headers["connection"] == "keep-alive"
    status, headers, body = await exchange(reader, writer, b"HEAD /health/ready?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and int(headers["content-length"]) > 0 and body == b""
    status, _, body = await exchange(reader, writer, b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body.startswith(b'{"ready":true')
    status, headers, _ = await exchange(reader, writer, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == "HTTP/1.1 404 Not Found" and headers["connection"] == "close"
    assert await reader.read() == b""  # closed as asked
    writer.close()


async def test_only_get_and_head_are_served(api: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    request = b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    status, headers, _ = await exchange(reader, writer, request)
    assert status == "HTTP/1.1 405 Method Not Allowed" and headers["allow"] == "GET, HEAD"
    status, _, _ = await exchange(reader, writer, b"GET /health/live HTTP/1.1\r\n\r\n")  # the body was read past
    assert status == "HTTP/1.1 200 OK"
    writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/2.0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /health HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
    ],
)
async def test_what_is_not_a_request_it_serves_is_a_400_and_the_connection_ends(
    api: ApiServer, request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(request_bytes)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in answer
    writer.close()


async def test_stopping_closes_kept_alive_connections(api: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    await exchange(reader, writer, b"GET /health/live HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(api.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
