"""What every HTTP sink shares: a pooled aiohttp session, gzip in a worker thread, response classes.

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
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from isal import igzip

from shipper.config import HttpSinkConfig
from shipper.sink import CheckResult, Outcome, Request, Sink

if TYPE_CHECKING:  # imported where a session is made: a parse worker preparing logs never needs it
    import aiohttp

# Compression releases the GIL: a small pool lets the second core compress while the loop parses.
_compressors = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shipper-gzip")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 4096
# A request body goes to the socket in pieces of this size, each after the last has drained.
WRITE_PIECE = 256 * 1024


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


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, as curl and
    the Datadog Agent read them), by aiohttp's own rules, with the proxy's credentials in its URL
    (from the variable or ~/.netrc: aiohttp sends them for plain requests and CONNECT alike);
    None: go direct."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None
    return str(proxy if auth is None else proxy.with_user(auth.login).with_password(auth.password))


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
    """`exc` and what it wraps: aiohttp's `os_error`, urllib3's `reason`, chained exceptions."""
    chain: list[BaseException] = []
    pending: list[Any] = [exc]
    while pending and len(chain) < 16:
        current = pending.pop(0)
        if isinstance(current, BaseException) and all(current is not seen for seen in chain):
            chain.append(current)
            pending += [getattr(current, "os_error", None), getattr(current, "reason", None)]
            pending += [current.__cause__, current.__context__]
    return chain


class HttpSink(Sink):
    config: HttpSinkConfig
    content_type = "application/json"

    def __init__(self, name: str, config: HttpSinkConfig) -> None:
        super().__init__(name, config)
        self._session: aiohttp.ClientSession | None = None
        self._via: dict[str, dict[str, Any]] = {}

    def via(self, url: str) -> dict[str, Any]:
        """How to reach `url`: through `environment_proxy`, or directly ({}). Looked up once per URL:
        aiohttp's `trust_env` looks it up, and ~/.netrc, in two thread hops on every request (~0.3 ms
        each request on this VM)."""
        if url not in self._via:
            proxy = environment_proxy(url)
            self._via[url] = {} if proxy is None else {"proxy": proxy}
        return self._via[url]

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
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.request_timeout),
            connector=aiohttp.TCPConnector(limit=self.config.concurrency * 2, ssl=self.tls()),
            auto_decompress=False,  # the proxy, if any, is given per request (`via`)
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        import aiohttp

        if self._session is None:
            await self.start()
        assert self._session is not None
        body = piecewise()(await self.wire_body(request))
        try:
            url = self.url(request)
            async with self._session.post(
                url, data=body, headers=self.request_headers(request), allow_redirects=False, **self.via(url)
            ) as resp:
                text = await resp.content.read(MAX_ERROR_BODY)
                return self.classify(resp.status, resp.headers, text, request)
        except aiohttp.ClientError as exc:
            return Outcome("retry", reason="connection", detail=type(exc).__name__)
        except TimeoutError:
            return Outcome("retry", reason="timeout", detail=f"no answer within {self.config.request_timeout}s")

    async def check(self) -> CheckResult:
        """Reachability and credentials without shipping logs: a GET with the sink's headers."""
        probe = Request(b"", [])
        headers = {k: v for k, v in self.request_headers(probe).items() if k != "Content-Encoding"}
        return await self.probe(self.url(probe), headers)

    async def probe(self, url: str, headers: dict[str, str]) -> CheckResult:
        """GET `url`: any HTTP answer but 401/403 means the destination is there and did not refuse us."""
        import aiohttp

        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False, **self.via(url)) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
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


@cache
def piecewise() -> type[aiohttp.BytesPayload]:
    """A body payload written in WRITE_PIECE pieces, each once the last has drained (its length
    is known: no chunked encoding). Written whole, a 1 MiB body is copied again with the headers,
    and over TLS encrypted into one buffer and read out into another, then held whole in the
    transport until the socket takes it: 4-5 MiB made and dropped per request in flight."""
    from aiohttp import BytesPayload

    class PiecewiseBody(BytesPayload):
        async def write(self, writer: Any) -> None:
            await self.write_with_length(writer, None)

        async def write_with_length(self, writer: Any, content_length: int | None) -> None:
            view = memoryview(self._value)[:content_length]
            for start in range(0, len(view), WRITE_PIECE):
                await writer.write(view[start : start + WRITE_PIECE])

    return PiecewiseBody
