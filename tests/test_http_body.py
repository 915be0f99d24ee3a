"""How an HTTP sink puts a request on the wire: a body bigger than one write piece goes in pieces
(bounded memory per request) and still arrives whole, with its length, never chunked."""

from __future__ import annotations

import asyncio
from typing import Any

from shipper.config import config_from_dict
from shipper.event import Event
from shipper.httpsink import WRITE_PIECE
from sinks import build_sink


async def test_a_body_of_several_write_pieces_arrives_whole_with_its_length() -> None:
    received: dict[str, Any] = {}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head[1:] if ":" in line}
        received.update(headers=headers, body=await reader.readexactly(int(headers["content-length"])))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    doc = {
        "sources": {"api": {"type": "stdin"}},
        "sinks": {
            "out": {"type": "http", "inputs": ["api"], "url": f"http://127.0.0.1:{port}/logs", "compression": "none"}
        },
    }
    sink = build_sink("out", config_from_dict(doc, None, environ={}).sinks["out"])
    events = [Event({"message": f"event {i}", "pad": "x" * 300}, b"") for i in range(3000)]
    [request] = sink.encode(events)
    assert len(request.body) > 3 * WRITE_PIECE
    try:
        outcome = await sink.send(request)
    finally:
        await sink.stop()
        server.close()
        await server.wait_closed()
    assert outcome.kind == "delivered", outcome
    assert received["body"] == request.body
    assert received["headers"]["content-length"] == str(len(request.body))
    assert "transfer-encoding" not in received["headers"]
