"""A fake Datadog HTTP logs intake (v2) that behaves like the real one: a real aiohttp server on loopback.

It enforces what WIRE.md says Datadog enforces, on the RAW request: `DD-API-KEY` (403), the
`Content-Encoding` header against the bytes actually sent (aiohttp's transparent decompression is
turned off, so a client that claims gzip and sends plain JSON, or gzips twice, is caught), at most
5,000,000 bytes once decompressed (413, checked while inflating so a bomb cannot exhaust memory),
a JSON array of at most 1,000 objects (400), then 202 `{}`. It also records what Datadog would
accept but never show: logs over 1 MB (silently truncated there) and logs outside the 18 h .. +2 h
window (not indexed), so tests can assert none were sent.

Faults on demand: `fail_next(n, 429, retry_after="1")` or `fail_for(seconds, 503)`; `set_keys(...)` to
start/stop accepting a key; `poison = predicate` to answer 400 to requests holding a matching log.
GET /api/v1/validate answers 200 `{"valid": true}` or 403.

Three ways to run it:
- `async with DatadogIntake(api_keys=["k"]) as intake:` on the test's event loop;
- `with DatadogIntake(...).threaded() as intake:` on its own loop in a thread (synchronous tests);
- `python -m tests.fakes.datadog_intake --port P --api-key K [--no-record]` as a process (bench);
  it prints `listening http://127.0.0.1:PORT`, and serves GET /_fake/stats, POST /_fake/fault,
  POST /_fake/keys for remote control.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from aiohttp import web

from tests.fakes.faults import Fault, Faults
from tests.fakes.threaded import FakeServer

MAX_ENTRIES = 1000
MAX_JSON_BYTES = 5_000_000
MAX_LOG_BYTES = 1_000_000
MAX_WIRE_BYTES = 64 * 1024 * 1024
MAX_AGE_S = 18 * 3600
MAX_AHEAD_S = 2 * 3600
GZIP_MAGIC = b"\x1f\x8b"


class PayloadTooLarge(Exception):
    pass


class BadPayload(Exception):
    pass


@dataclass(frozen=True)
class Seen:
    """One POST as the intake saw it."""

    status: int
    entries: int
    wire_bytes: int
    json_bytes: int
    encoding: str


def inflate(raw: bytes, encoding: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """The decompressed body; PayloadTooLarge past `limit` bytes (checked while inflating)."""
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise PayloadTooLarge(f"{len(raw)} bytes")
        return raw
    if encoding not in ("gzip", "deflate"):
        raise BadPayload(f"unsupported Content-Encoding {encoding!r}")
    if encoding == "gzip" and raw[:2] != GZIP_MAGIC:
        raise BadPayload("Content-Encoding: gzip but the body is not gzip")
    out = bytearray()
    data = raw
    while data:
        inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise BadPayload(f"corrupt {encoding} body: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"over {limit} bytes uncompressed")
        if not inflater.eof:
            raise BadPayload(f"truncated {encoding} body")
        data = inflater.unused_data
        if data and (encoding != "gzip" or data[:2] != GZIP_MAGIC):
            raise BadPayload(f"trailing bytes after the {encoding} stream")
    return bytes(out)


_RAW_ITEM = msgspec.json.Decoder(msgspec.Raw)  # validated, not built
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def _is_object(item: Any) -> bool:
    return isinstance(item, dict) or (isinstance(item, msgspec.Raw) and memoryview(item)[:1] == b"{")


def _errors(status: int, detail: str) -> web.Response:
    title = {400: "Bad Request", 403: "Forbidden", 413: "Payload Too Large"}.get(status, "Error")
    body = {"errors": [{"status": str(status), "title": title, "detail": detail}]}
    return web.json_response(body, status=status)


def _epoch_s(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value / 1000.0
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None


class DatadogIntake(FakeServer):
    thread_name = "fake-datadog"

    def __init__(
        self, api_keys: Iterable[str] = ("test-api-key",), *, record: bool = True, port: int = 0, delay: float = 0.0
    ) -> None:
        super().__init__(port)
        self.record = record
        self.delay = delay  # seconds before each answer: a slow destination, so buffers fill
        self.keys: set[str] = set(api_keys)
        self.logs: list[dict[str, Any]] = []
        self.unindexed: list[dict[str, Any]] = []
        self.oversized: list[dict[str, Any]] = []
        self.seen: list[Seen] = []
        self.statuses: Counter[int] = Counter()
        self.accepted = 0
        self.validations = 0
        # Logs the intake answers 400 for (the whole request), to test isolating a malformed log.
        self.poison: Callable[[dict[str, Any]], bool] | None = None
        self._faults = Faults()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ control

    def fail_next(
        self, count: int, status: int = 503, *, retry_after: str | None = None, rate_limit_reset: str | None = None
    ) -> None:
        """Answer the next `count` log POSTs with `status` (and the given rate-limit headers)."""
        with self._lock:
            self._faults.add(Fault(status, count, None, retry_after, rate_limit_reset))

    def fail_for(
        self, seconds: float, status: int = 503, *, retry_after: str | None = None, rate_limit_reset: str | None = None
    ) -> None:
        """Answer every log POST with `status` for the next `seconds`."""
        with self._lock:
            self._faults.add(Fault(status, None, time.monotonic() + seconds, retry_after, rate_limit_reset))

    def set_keys(self, *keys: str) -> None:
        """Replace the set of API keys accepted (none: every request is 403)."""
        with self._lock:
            self.keys = set(keys)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "accepted": self.accepted,
                "requests": len(self.seen),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "max_entries": max((s.entries for s in self.seen), default=0),
                "max_json_bytes": max((s.json_bytes for s in self.seen), default=0),
                "unindexed": len(self.unindexed),
                "oversized": len(self.oversized),
                "validations": self.validations,
            }

    # ------------------------------------------------------------ handlers

    async def _logs(self, request: web.Request) -> web.Response:
        raw = await request.read()  # raw bytes: the app runs with auto_decompress=False
        if self.delay:
            await asyncio.sleep(self.delay)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        response, entries, json_bytes = self._judge(request, raw, encoding)
        with self._lock:
            self.statuses[response.status] += 1
            self.seen.append(Seen(response.status, entries, len(raw), json_bytes, encoding))
        return response

    def _judge(self, request: web.Request, raw: bytes, encoding: str) -> tuple[web.Response, int, int]:
        key = request.headers.get("DD-API-KEY")
        with self._lock:
            known = key is not None and key in self.keys
        if not known:
            return _errors(403, "Forbidden"), 0, 0
        fault = self._faults.next()
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            if fault.rate_limit_reset is not None:
                headers["X-RateLimit-Reset"] = fault.rate_limit_reset
            return web.json_response({"errors": ["injected fault"]}, status=fault.status, headers=headers), 0, 0
        if request.content_type != "application/json":
            return _errors(400, f"unsupported Content-Type {request.content_type!r}"), 0, 0
        try:
            body = inflate(raw, encoding)
        except PayloadTooLarge as exc:
            return _errors(413, f"payload too large: {exc}"), 0, 0
        except BadPayload as exc:
            return _errors(400, str(exc)), 0, 0
        try:
            items = self._items(body)
        except (ValueError, msgspec.DecodeError):
            return _errors(400, "invalid JSON"), 0, len(body)
        if len(items) > MAX_ENTRIES:
            return _errors(400, f"{len(items)} entries, at most {MAX_ENTRIES}"), len(items), len(body)
        if not all(_is_object(item) for item in items):
            return _errors(400, "every log must be a JSON object"), len(items), len(body)
        poison = self.poison
        if poison is not None and any(poison(item) for item in items):
            return _errors(400, "malformed log"), len(items), len(body)
        self._accept(items, len(body))
        return web.json_response({}, status=202), len(items), len(body)

    def _items(self, body: bytes) -> list[Any]:
        """The body's logs (one object, or an array of them). Parsed when they are kept or checked
        for poison; else (the bench's intake) only validated: building every log as dicts cost
        this process ~40% of a core, taken from the shipper it measures on a 2-core machine.
        Raises ValueError or msgspec.DecodeError for a body that is not strict UTF-8 JSON."""
        if self.record or self.poison is not None:
            doc = orjson.loads(body)
            return doc if isinstance(doc, list) else [doc]
        body.decode()  # strict UTF-8, which skipping over string values does not check
        if body.lstrip()[:1] == b"[":
            return _RAW_ITEMS.decode(body)
        return [_RAW_ITEM.decode(body)]

    def _accept(self, items: list[Any], json_bytes: int) -> None:
        if not self.record:
            with self._lock:
                self.accepted += len(items)
            return
        now = time.time()
        landed, unindexed, oversized = [], [], []
        for item in items:
            if json_bytes > MAX_LOG_BYTES and len(orjson.dumps(item)) > MAX_LOG_BYTES:
                oversized.append(item)
            stamp = _epoch_s(item.get("timestamp", item.get("date")))
            if stamp is not None and not now - MAX_AGE_S <= stamp <= now + MAX_AHEAD_S:
                unindexed.append(item)
            else:
                landed.append(item)
        with self._lock:
            self.accepted += len(landed)
            self.logs.extend(landed)
            self.unindexed.extend(unindexed)
            self.oversized.extend(oversized)

    async def _validate(self, request: web.Request) -> web.Response:
        key = request.headers.get("DD-API-KEY")
        with self._lock:
            self.validations += 1
            known = key is not None and key in self.keys
        if known:
            return web.json_response({"valid": True})
        return web.json_response({"errors": ["Forbidden"]}, status=403)

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control_fault(self, request: web.Request) -> web.Response:
        spec = await request.json()
        status = int(spec.get("status", 503))
        retry_after, reset = spec.get("retry_after"), spec.get("rate_limit_reset")
        if "seconds" in spec:
            self.fail_for(float(spec["seconds"]), status, retry_after=retry_after, rate_limit_reset=reset)
        else:
            self.fail_next(int(spec.get("count", 1)), status, retry_after=retry_after, rate_limit_reset=reset)
        return web.json_response({"ok": True})

    async def _control_keys(self, request: web.Request) -> web.Response:
        self.set_keys(*(await request.json())["keys"])
        return web.json_response({"ok": True})

    # ------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_WIRE_BYTES)
        app.router.add_post("/api/v2/logs", self._logs)
        app.router.add_get("/api/v1/validate", self._validate)
        app.router.add_get("/_fake/stats", self._control_stats)
        app.router.add_post("/_fake/fault", self._control_fault)
        app.router.add_post("/_fake/keys", self._control_keys)
        return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Datadog logs intake on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", action="append", default=[], help="an accepted DD-API-KEY (repeatable)")
    parser.add_argument("--no-record", action="store_true", help="count logs instead of keeping them (bench)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer (a slow intake)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        keys = args.api_key or ["test-api-key"]
        intake = DatadogIntake(keys, record=not args.no_record, port=args.port, delay=args.delay)
        await intake.serve_until_signalled()
        print(orjson.dumps(intake.stats()).decode(), file=sys.stderr, flush=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
