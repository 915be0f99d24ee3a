"""What every HTTP sink shares: a keep-alive HTTP client, gzip in a worker thread, response classes.

A subclass gives its URL and auth headers, an `encode`, and overrides `classify` only where its
service differs from the defaults: 2xx delivered, 413 split, 408/429/5xx retry (honouring
Retry-After and X-RateLimit-Reset), 401/403 unhealthy (keep data), any other 4xx rejected.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import socket
import ssl
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from isal import igzip

from shipper.config import HttpSinkConfig
from shipper.httpclient import HttpClient, HttpError, environment_proxy
from shipper.sink import CheckResult, Outcome, Request, Sink

# Compression releases the GIL: a small pool lets the second core compress while the loop parses.
_compressors = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipper-gzip")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 4096


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (seconds)."""
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - (time.time() if now is None else now))
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset))
        except ValueError:
            return None
    return None


def connection_failure(exc: BaseException, url: str) -> str:
    """Why a request to `url` got no answer, in words: "connection refused to 127.0.0.1:1". It
    names only the host and port connected to (the proxy's, when one is used), never a credential."""
    proxy = environment_proxy(url)
    parts = urlsplit(proxy or url)
    where = f"{'proxy ' if proxy else ''}{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {parts.hostname}"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused to {where}"
        if isinstance(cause, ConnectionResetError):
            return f"connection reset by {where}"
        if isinstance(cause, TimeoutError):
            return f"no answer from {where} in time"
        if isinstance(cause, ssl.SSLError):
            return f"TLS with {where} failed: {getattr(cause, 'verify_message', None) or cause.reason}"
        if type(cause) is OSError and cause.errno:
            return f"{os.strerror(cause.errno).lower()} ({where})"
    return f"{type(exc).__name__} connecting to {where}"


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: urllib3's `reason`, chained exceptions."""
    chain: list[BaseException] = []
    pending: list[Any] = [exc]
    while pending and len(chain) < 16:
        current = pending.pop(0)
        if isinstance(current, BaseException) and all(current is not seen for seen in chain):
            chain.append(current)
            pending.append(getattr(current, "reason", None))
            pending += [current.__cause__, current.__context__]
    return chain


class HttpSink(Sink):
    config: HttpSinkConfig
    content_type = "application/json"

    def __init__(self, name: str, config: HttpSinkConfig) -> None:
        super().__init__(name, config)
        self._client: HttpClient | None = None

    def url(self, request: Request) -> str:
        raise NotImplementedError

    def auth_headers(self) -> dict[str, str]:
        """Credentials for every request; never logged."""
        return {}

    def tls(self) -> ssl.SSLContext | bool:
        """How HTTPS destinations are verified: True is the system's trusted CAs; a sink with its own
        CA bundle (or verification turned off for a test endpoint) returns its context, or False."""
        return True

    async def start(self) -> None:
        if self._client is None:
            self._client = HttpClient(self.config.concurrency * 2, self.config.request_timeout, self.tls())

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def http(self) -> HttpClient:
        """The sink's client, made on first use."""
        await self.start()
        assert self._client is not None
        return self._client

    async def wire_body(self, request: Request) -> bytes:
        """The request body as sent, made once across retries: in a worker thread when it is
        compressed (compression releases the GIL, so the loop goes on parsing meanwhile)."""
        if request.wire is None:
            if self.wire_in_thread():
                loop = asyncio.get_running_loop()
                request.wire = await loop.run_in_executor(_compressors, self.wire_form, request)
            else:
                request.wire = self.wire_form(request)
            if request.wire is not request.body:
                request.body = b""  # retries send `wire`; splits and re-encodings start from the events
        return request.wire

    def wire_in_thread(self) -> bool:
        return self.config.compression == "gzip"

    def wire_form(self, request: Request) -> bytes:
        """The body as sent: gzip-compressed when configured."""
        if self.config.compression == "gzip":
            return bytes(igzip.compress(request.body, self.config.compression_level))
        return request.body

    def request_headers(self, request: Request) -> dict[str, str]:
        headers = {"Content-Type": self.content_type, **self.config.headers, **self.auth_headers()}
        if self.config.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        return headers

    async def send(self, request: Request) -> Outcome:
        client = await self.http()
        body = await self.wire_body(request)
        url = self.url(request)
        try:
            answer = await client.request(
                "POST", url, headers=self.request_headers(request), body=body, read_limit=MAX_ERROR_BODY
            )
        except HttpError as exc:
            return Outcome("retry", reason="connection", detail=connection_failure(exc, url))
        except TimeoutError:
            return Outcome("retry", reason="timeout", detail=f"no answer within {self.config.request_timeout}s")
        return self.classify(answer.status, answer.headers, answer.body, request)

    async def check(self) -> CheckResult:
        """Reachability and credentials without shipping logs: a GET with the sink's headers."""
        probe = Request(b"", [])
        headers = {k: v for k, v in self.request_headers(probe).items() if k != "Content-Encoding"}
        return await self.probe(self.url(probe), headers)

    async def probe(self, url: str, headers: dict[str, str]) -> CheckResult:
        """GET `url`: any HTTP answer but 401/403 means the destination is there and did not refuse us."""
        client = await self.http()
        try:
            status = (await client.request("GET", url, headers=headers, read_limit=0)).status
        except (HttpError, TimeoutError) as exc:
            return CheckResult(False, f"{url} unreachable: {connection_failure(exc, url)}")
        if status in (401, 403):
            return CheckResult(False, f"{url} refused the credentials (HTTP {status})")
        if status == 407:
            return CheckResult(False, f"the HTTP proxy refused shipper's credentials on the way to {url} (HTTP 407)")
        return CheckResult(True, f"{url} reachable (HTTP {status} to a GET)")

    def classify(self, status: int, headers: Mapping[str, str], body: bytes, request: Request) -> Outcome:
        if 200 <= status < 300:
            return Outcome("delivered")
        detail = body[:512].decode("utf-8", "replace")
        if status == 413:
            return Outcome("split", reason="payload_too_large", detail=detail)
        if status in RETRYABLE_STATUS:
            return Outcome("retry", reason=f"http_{status}", retry_after=retry_after(headers), detail=detail)
        if status in (401, 403):
            return Outcome("unhealthy", reason=f"http_{status}", detail=detail, retry_after=None)
        if status == 407:  # our egress proxy, not the destination, refused: keep the data until it is fixed
            return Outcome(
                "unhealthy",
                reason="http_407",
                detail="the HTTP proxy refused shipper's credentials (HTTP 407); check HTTPS_PROXY / HTTP_PROXY",
            )
        return Outcome("reject", reason=f"http_{status}", detail=detail)
