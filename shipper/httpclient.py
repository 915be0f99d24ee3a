"""A small HTTP/1.1 client on asyncio streams, for the HTTP sinks and the Supabase poller.

What a shipper needs of HTTP is narrow: keep-alive connections to one or two origins, a POST or a
GET with a Content-Length body written in pieces, and each answer's status, headers and (bounded)
body; through the proxy the environment names (CONNECT for HTTPS), with the TLS context the sink
chose. aiohttp's client did it, but importing it cost the agent ~9 MiB of its ~51 MiB at rest
(148 modules, and the system CA store it loads into a context at import, even to speak plain
HTTP): more than any other dependency, to use a sliver of it. The API's server (shipper/api.py)
is as small, for the same reason.

Not here, by design: redirects (a log destination that redirects is misconfigured), cookies,
response decompression (nothing is asked compressed), HTTPS proxies (aiohttp ignored them too).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import netrc
import os
import ssl
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from shipper import __version__

# A request body goes to the socket in pieces of this size, each once the last has drained: written
# whole, a 1 MiB body would be copied into the transport's buffer (over TLS, encrypted into one
# buffer and read out into another) while the socket takes it, 2-4 MiB more per request in flight.
WRITE_PIECE = 256 * 1024
MAX_HEAD = 64 * 1024  # an answer's status line and headers
# A host's next address is tried this long after the last one was (RFC 8305): an IPv6 route that
# drops packets delays a connection by this, not by the whole request timeout.
HAPPY_EYEBALLS = 0.25
USER_AGENT = f"shipper/{__version__}"

log = logging.getLogger("shipper.http")


class HttpError(Exception):
    """No HTTP answer: the connection could not be made or broke, or what came back was not HTTP
    (the cause is chained: `connection_failure` in shipper/httpsink.py words it)."""


class Headers(Mapping[str, str]):
    """An answer's headers, looked up whatever the case of the name (the last of repeated ones)."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items  # names lower-cased

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, as curl and
    the Datadog Agent read them), with its credentials in its URL, from the variable or ~/.netrc
    (or $NETRC); None: go direct. An https:// proxy is not spoken: None, as aiohttp did."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host and urllib.request.proxy_bypass(host):
        return None
    named = urllib.request.getproxies_environment().get(parts.scheme)
    if not named:
        return None
    proxy = urlsplit(named if "://" in named else f"http://{named}")
    if proxy.scheme != "http" or not proxy.hostname:
        log.warning(
            "the environment names a proxy shipper cannot speak (only http:// proxies); going direct",
            extra={"destination": f"{parts.scheme}://{host}", "proxy_scheme": proxy.scheme},
        )
        return None
    where = f"{proxy.hostname}:{proxy.port or 80}"
    if proxy.username is not None:
        return f"http://{proxy.netloc}"
    login = _netrc_login(proxy.hostname)
    if login is None:
        return f"http://{where}"
    user, password = (quote(value, safe="") for value in login)
    return f"http://{user}:{password}@{where}"


def _netrc_login(host: str) -> tuple[str, str] | None:
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        found = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return None if found is None else (found[0] or "", found[2] or "")


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization header

    @classmethod
    def of(cls, url: str) -> _Proxy:
        parts = urlsplit(url)
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname or "", parts.port or 80, authorization)


@dataclass(eq=False, slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    answered: bool = False  # the current request's answer began

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class _ProxyRefused(Exception):
    """The proxy answered CONNECT with 407: its answer is the request's."""

    def __init__(self, response: Response) -> None:
        self.response = response


@dataclass(eq=False)
class HttpClient:
    """Keep-alive connections per origin, at most `limit` requests at once, each within `timeout`
    seconds, HTTPS verified by `tls` (True: the system's trusted CAs; False: not verified)."""

    limit: int
    timeout: float
    tls: ssl.SSLContext | bool = True
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every request
    _idle: dict[tuple[str, str, int, str | None], list[_Connection]] = field(default_factory=dict, init=False)
    _proxies: dict[str, str | None] = field(default_factory=dict, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)  # a request that ends after `close` closes its connection

    def proxy_for(self, url: str) -> str | None:
        """`environment_proxy`, looked up once per URL (the environment and ~/.netrc are read from
        disk: ~0.3 ms, too much for every request)."""
        if url not in self._proxies:
            self._proxies[url] = environment_proxy(url)
        return self._proxies[url]

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        read_limit: int | None = None,
    ) -> Response:
        """The answer to one request (its body cut at `read_limit` bytes); HttpError when none came,
        TimeoutError when none came in time."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots, asyncio.timeout(self.timeout):
            return await self._exchange(method, url, {**self.headers, **(headers or {})}, body, read_limit)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def _exchange(
        self, method: str, url: str, headers: dict[str, str], body: bytes, read_limit: int | None
    ) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        proxy_url = self.proxy_for(url)
        proxy = _Proxy.of(proxy_url) if proxy_url else None
        plain_via_proxy = proxy is not None and parts.scheme == "http"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        head = _request_head(
            method,
            f"http://{host}{path}" if plain_via_proxy else path,
            host,
            headers,
            len(body),
            proxy.authorization if plain_via_proxy and proxy is not None else None,
        )
        key = (parts.scheme, parts.hostname, port, proxy_url)
        while True:
            connection = self._pooled(key)
            try:
                if connection is None:
                    connection = await self._connect(parts.scheme, parts.hostname, port, proxy)
                await _send(connection.writer, head, body)
                response, reusable = await _receive(connection, method, read_limit)
            except _ProxyRefused as refused:
                return refused.response
            except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
                if connection is None:
                    raise HttpError(f"cannot connect: {type(exc).__name__}") from exc
                connection.close()
                if connection.reused and not connection.answered:
                    self._drop_idle(key)  # closed by the server while idle, as its siblings likely are
                    continue
                raise HttpError(f"the connection failed: {type(exc).__name__}") from exc
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            if reusable and not self._closed:
                connection.reused, connection.answered = True, False
                self._idle.setdefault(key, []).append(connection)
            else:
                connection.close()
            return response

    def _pooled(self, key: tuple[str, str, int, str | None]) -> _Connection | None:
        connections = self._idle.get(key)
        while connections:
            connection = connections.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _drop_idle(self, key: tuple[str, str, int, str | None]) -> None:
        for connection in self._idle.pop(key, []):
            connection.close()

    async def _connect(self, scheme: str, host: str, port: int, proxy: _Proxy | None) -> _Connection:
        context = _context(self.tls) if scheme == "https" else None
        if proxy is None:
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=context,
                server_hostname=host if context else None,
                limit=MAX_HEAD,
                happy_eyeballs_delay=HAPPY_EYEBALLS,
            )
            return _Connection(reader, writer)
        reader, writer = await asyncio.open_connection(
            proxy.host, proxy.port, limit=MAX_HEAD, happy_eyeballs_delay=HAPPY_EYEBALLS
        )
        connection = _Connection(reader, writer)
        if context is None:
            return connection
        try:
            tunnel = {} if proxy.authorization is None else {"Proxy-Authorization": proxy.authorization}
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 address in brackets
            writer.write(_request_head("CONNECT", target, target, tunnel, 0, None))
            status, _, headers = _answer_head(await reader.readuntil(b"\r\n\r\n"))
            if status == 407:
                raise _ProxyRefused(Response(status, headers, b""))
            if not 200 <= status < 300:
                raise HttpError(f"the proxy answered HTTP {status} to CONNECT {host}:{port}")
            await writer.start_tls(context, server_hostname=host)
        except BaseException:
            connection.close()
            raise
        return connection


@cache
def _verified() -> ssl.SSLContext:
    return ssl.create_default_context()  # the system's CA store: loaded once, when HTTPS is first spoken


@cache
def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _context(tls: ssl.SSLContext | bool) -> ssl.SSLContext:
    if isinstance(tls, ssl.SSLContext):
        return tls
    return _verified() if tls else _unverified()


def _request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], length: int, proxy_authorization: str | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    names = {name.lower() for name in headers}
    if "host" not in names:  # a signed request names its own (SigV4 signs it)
        lines.append(f"Host: {host}")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in names and method != "CONNECT":
        lines.append("Accept: */*")
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n"):
            raise ValueError(f"a line break in the value of header {name!r}")
        lines.append(f"{name}: {value}")
    if length or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {length}")
    if proxy_authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy_authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _send(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
    if len(body) <= WRITE_PIECE:
        writer.write(head + body if body else head)
    else:
        writer.write(head)
        view = memoryview(body)
        for start in range(0, len(view), WRITE_PIECE):
            writer.write(view[start : start + WRITE_PIECE])
            await writer.drain()
    await writer.drain()


def split_head(head: bytes) -> tuple[str, Headers]:
    """The first line of a request's or an answer's head, and its headers (ValueError: not HTTP)."""
    first, *lines = head.decode("latin-1").split("\r\n")
    items: dict[str, str] = {}
    for line in lines:
        if line:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"not an HTTP header line: {line[:80]!r}")
            items[name.strip().lower()] = value.strip()
    return first, Headers(items)


def _answer_head(head: bytes) -> tuple[int, str, Headers]:
    """Status, HTTP version and headers of an answer's head (its status line and header lines)."""
    status_line, headers = split_head(head)
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    return int(rest[:3]), version, headers


async def _receive(connection: _Connection, method: str, read_limit: int | None) -> tuple[Response, bool]:
    """The answer, and whether the connection can carry another request."""
    reader = connection.reader
    while True:
        status, version, headers = _answer_head(await reader.readuntil(b"\r\n\r\n"))
        connection.answered = True
        if not 100 <= status < 200 or status == 101:
            break  # an interim answer (100 Continue, 103 Early Hints) precedes the real one
    complete = True
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body, complete = await _chunked(reader, read_limit)
    elif (length := headers.get("content-length")) is not None:
        size = int(length)
        if read_limit is not None and size > read_limit:
            body, complete = await reader.readexactly(read_limit), False
        else:
            body = await reader.readexactly(size)
    else:  # the answer ends with the connection
        body, complete = await _until_closed(reader, read_limit), False
    keep = complete and version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return Response(status, headers, body), keep


async def _until_closed(reader: asyncio.StreamReader, read_limit: int | None) -> bytes:
    if read_limit is None:
        return await reader.read(-1)
    body = bytearray()
    while len(body) < read_limit and (piece := await reader.read(read_limit - len(body))):
        body += piece
    return bytes(body)


async def _chunked(reader: asyncio.StreamReader, read_limit: int | None) -> tuple[bytes, bool]:
    """A chunked body (up to `read_limit` bytes), and whether it was read to its end."""
    pieces = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(pieces), True
        pieces += await reader.readexactly(size)
        await reader.readexactly(2)
        if read_limit is not None and len(pieces) >= read_limit:
            return bytes(pieces[:read_limit]), False
