"""shipper/httpclient.py against raw HTTP servers on loopback that write exactly the bytes a test
gives them: kept-alive connections, every framing of an answer, a connection the server dropped
while idle, TLS verification, and HTTPS through a CONNECT proxy with credentials."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from shipper.httpclient import USER_AGENT, HttpClient, HttpError
from shipper.httpsink import connection_failure
from tests.procutil import ShipperProcess, pino_lines, wait_for

Answer = Callable[[str, dict[str, str], bytes], bytes | None]  # None: close without answering


def ok(body: bytes = b"fine", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


class RawServer:
    """Answers each request with `answer(request line, headers, body)`, written as is."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                line, headers = _head(await reader.readuntil(b"\r\n\r\n"))
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((line, headers, body))
                reply = self.answer(line, headers, body)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply or (b"Content-Length" not in reply and b"chunked" not in reply):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _head(head: bytes) -> tuple[str, dict[str, str]]:
    line, *rest = head.decode().split("\r\n")
    return line, {name.lower(): value.strip() for name, _, value in (item.partition(":") for item in rest if item)}


@asynccontextmanager
async def serving(server: RawServer, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()


async def test_requests_share_one_kept_alive_connection() -> None:
    server = RawServer(lambda line, headers, body: ok(b"got " + body))
    async with serving(server) as port, HttpClient(4, 5.0) as client:
        answers = [
            await client.request("POST", f"http://127.0.0.1:{port}/push?x=1", headers={"X-Tenant": "a"}, body=b"n")
            for n in range(3)
        ]
    assert [(a.status, a.body) for a in answers] == [(200, b"got n")] * 3
    assert answers[0].headers["content-type"] == answers[0].headers["Content-Type"] == "text/plain"
    assert server.connections == 1
    line, headers, _ = server.requests[0]
    assert line == "POST /push?x=1 HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{port}" and headers["user-agent"] == USER_AGENT
    assert headers["content-length"] == "1" and headers["x-tenant"] == "a"


async def test_a_connection_the_server_dropped_while_idle_is_replaced_without_an_error() -> None:
    """The server takes the second request of a connection and closes it unanswered, as one whose
    idle timeout fired while the request was on its way: the client sends it again on a new one."""
    per_connection: dict[int, int] = {}

    def answer(line: str, headers: dict[str, str], body: bytes) -> bytes | None:
        count = per_connection[server.connections] = per_connection.get(server.connections, 0) + 1
        return ok() if count == 1 else None

    server = RawServer(answer)
    async with serving(server) as port, HttpClient(4, 5.0) as client:
        first = await client.request("POST", f"http://127.0.0.1:{port}/", body=b"a")
        second = await client.request("POST", f"http://127.0.0.1:{port}/", body=b"b")
    assert (first.status, second.status) == (200, 200)
    assert server.connections == 2
    assert [body for _, _, body in server.requests] == [b"a", b"b", b"b"]


async def test_a_fresh_connection_closed_unanswered_is_an_error_not_a_resend() -> None:
    server = RawServer(lambda line, headers, body: None)
    async with serving(server) as port, HttpClient(4, 5.0) as client:
        with pytest.raises(HttpError):
            await client.request("POST", f"http://127.0.0.1:{port}/", body=b"a")
    assert len(server.requests) == 1


async def test_answers_framed_by_chunks_or_by_closing_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    answers = iter([chunked, chunked, b"HTTP/1.1 200 OK\r\n\r\nuntil the end", ok()])
    server = RawServer(lambda line, headers, body: next(answers))
    async with serving(server) as port, HttpClient(4, 5.0) as client:
        bodies = [(await client.request("GET", f"http://127.0.0.1:{port}/")).body for _ in range(4)]
    assert bodies == [b"hello, world", b"hello, world", b"until the end", b"fine"]
    assert server.connections == 2  # the chunked answers kept the connection; the closing one ended it


async def test_an_interim_answer_is_skipped_and_a_long_body_cut_at_the_limit() -> None:
    answers = iter([b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"x" * 10_000), ok(b"small")])
    server = RawServer(lambda line, headers, body: next(answers))
    async with serving(server) as port, HttpClient(4, 5.0) as client:
        first = await client.request("POST", f"http://127.0.0.1:{port}/", body=b"{}", read_limit=100)
        second = await client.request("POST", f"http://127.0.0.1:{port}/", body=b"{}", read_limit=100)
    assert (first.status, first.body) == (200, b"x" * 100)
    assert second.body == b"small"
    assert server.connections == 2  # the rest of the long body was never read: that connection is done


async def test_no_answer_a_refused_connection_and_not_http_are_told_apart() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with HttpClient(4, 0.3) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request("GET", f"http://127.0.0.1:{port}/")
        assert time.monotonic() - started < 2
    listener.close()
    await listener.wait_closed()

    async with HttpClient(4, 5.0) as client:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(HttpError) as refused:
            await client.request("GET", url)
        assert connection_failure(refused.value, url) == f"connection refused to 127.0.0.1:{port}"

        server = RawServer(lambda line, headers, body: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        async with serving(server) as other:
            with pytest.raises(HttpError):
                await client.request("GET", f"http://127.0.0.1:{other}/")


# ---------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, valid from a few minutes ago (the clock's, not a date)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shipper test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


async def test_https_is_verified_against_the_trusted_certificates(certificate: tuple[Path, Path]) -> None:
    server = RawServer(lambda line, headers, body: ok(b"secure"))
    async with serving(server, server_tls(certificate)) as port:
        url = f"https://127.0.0.1:{port}/"
        trusting = ssl.create_default_context(cafile=str(certificate[0]))
        async with HttpClient(4, 5.0, trusting) as client:
            assert (await client.request("GET", url)).body == b"secure"
        async with HttpClient(4, 5.0, False) as client:  # tls_verify = false
            assert (await client.request("GET", url)).body == b"secure"
        async with HttpClient(4, 5.0, True) as client:  # the system's CAs do not know this certificate
            with pytest.raises(HttpError) as refused:
                await client.request("GET", url)
            said = connection_failure(refused.value, url)
            assert said.startswith(f"TLS with 127.0.0.1:{port} failed:") and "certificate" in said


class ConnectProxy:
    """An HTTP proxy that tunnels CONNECT for a client giving `credentials`, else answers 407."""

    def __init__(self, credentials: tuple[str, str]) -> None:
        self.expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        self.tunnels: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line, headers = _head(await reader.readuntil(b"\r\n\r\n"))
            method, target, _ = line.split(" ")
            if method != "CONNECT" or headers.get("proxy-authorization") != self.expected:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            host, _, port = target.rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_https_goes_through_the_environments_proxy_with_its_credentials(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = ConnectProxy(("relay", "p@ss:word"))
    proxy_listener = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy_port = proxy_listener.sockets[0].getsockname()[1]
    server = RawServer(lambda line, headers, body: ok(b"tunnelled"))
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    try:
        async with serving(server, server_tls(certificate)) as port:
            url = f"https://127.0.0.1:{port}/v1/input"
            monkeypatch.setenv("HTTPS_PROXY", f"http://relay:p%40ss%3Aword@127.0.0.1:{proxy_port}")
            async with HttpClient(4, 5.0, trusting) as client:
                answers = [await client.request("POST", url, body=b"{}") for _ in range(2)]
            assert [(a.status, a.body) for a in answers] == [(200, b"tunnelled")] * 2
            assert proxy.tunnels == [f"127.0.0.1:{port}"]  # one tunnel, kept alive
            assert server.requests[0][0] == "POST /v1/input HTTP/1.1"

            monkeypatch.setenv("HTTPS_PROXY", f"http://relay:wrong@127.0.0.1:{proxy_port}")
            async with HttpClient(4, 5.0, trusting) as client:
                assert (await client.request("POST", url, body=b"{}")).status == 407
            assert len(server.requests) == 2  # nothing reached the destination without the proxy's consent
    finally:
        proxy_listener.close()


async def test_a_proxy_shipper_cannot_speak_is_said_and_the_request_goes_direct(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.invalid:3129")
    server = RawServer(lambda line, headers, body: ok(b"direct"))
    async with serving(server) as port, HttpClient(4, 5.0) as client:
        assert (await client.request("GET", f"http://127.0.0.1:{port}/")).body == b"direct"
    assert "only http:// proxies" in caplog.text


def test_a_running_agent_ships_over_http_without_loading_aiohttp(collector: Any, tmp_path: Path) -> None:
    """aiohttp's client cost the agent ~9 MiB at rest: an agent whose API is off must not map any
    of its compiled modules, and still ship."""
    log = tmp_path / "app.log"
    log.write_bytes(pino_lines(range(20)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{log}"]\nstart_at = "beginning"\n'
        f'[sinks.out]\ntype = "http"\ninputs = ["api"]\nurl = "{collector.url}"\nbatch = {{ timeout = "50ms" }}\n'
    )
    shipper = ShipperProcess(config, tmp_path)
    try:
        wait_for(lambda: len(collector.events) == 20, 20, "the 20 lines to reach the collector")
        maps = Path(f"/proc/{shipper.proc.pid}/maps").read_text()
        assert "site-packages/aiohttp" not in maps and "site-packages/multidict" not in maps
        assert "site-packages/pydantic_core" in maps  # the check reads the right process
    finally:
        shipper.ensure_stopped()
