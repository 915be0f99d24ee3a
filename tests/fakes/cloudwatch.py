"""CloudWatch Logs for tests: moto's server behind a front that does what moto does not.

moto's server mode (ThreadedMotoServer, on loopback) keeps log groups, streams and events over real
HTTP, so what a test puts it reads back with GetLogEvents. It neither checks signatures nor
enforces PutLogEvents' limits (WIRE.md), and its rejectedLogEventsInfo indexes are not AWS's. So
every request goes through `CloudWatchFront`, a real aiohttp server on 127.0.0.1 that, like AWS:

- verifies each request's SigV4 signature against the keys it knows (unknown key:
  UnrecognizedClientException; wrong signature or a date off by more than 5 minutes:
  InvalidSignatureException; a key `expire`d: ExpiredTokenException, all HTTP 400);
- checks every PutLogEvents call against the limits: 1..10,000 events, at most 1,048,576 bytes
  counting each message's UTF-8 bytes + 26, no event over 1 MB, no empty message, time order, a
  24 h span, a stream name without `:` or `*`. A call breaking one is refused as AWS refuses it
  (400 InvalidParameterException) and recorded in `violations`: tests assert there are none;
- judges time as AWS does: events older than 14 days (or `expired_before_ms`, a group's
  retention) or more than 2 h ahead are left out of what reaches moto and named in a correct
  `rejectedLogEventsInfo` (AWS's exclusive/inclusive indexes), the rest land;
- injects faults on demand: `throttle_next(n)` (ThrottlingException as HTTP 400),
  `unavailable_next(n)` (503 ServiceUnavailableException), `drop_next(n)` (the connection closed
  without an answer), `poison` (a call holding an event whose message contains it: 400
  InvalidParameterException), `expire(key)`.

Every PutLogEvents call it answered is kept in `calls` (with the events as sent), every answer's
status or fault in `answers`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import boto3
import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer

from tests.fakes.threaded import served_in_thread

MAX_EVENTS = 10_000
MAX_CALL_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 1_048_576
MAX_SPAN_MS = 24 * 3600 * 1000
MAX_AGE_MS = 14 * 86_400_000
MAX_AHEAD_MS = 2 * 3600 * 1000
MAX_CLOCK_SKEW_S = 300
PUT = "Logs_20140328.PutLogEvents"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;\-]+),\s*Signature=([0-9a-f]{64})"
)


def start_moto() -> ThreadedMotoServer:
    """moto's server on a free loopback port, quiet."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


def moto_url(server: ThreadedMotoServer) -> str:
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def _error(kind: str, message: str, status: int = 400, query: bool = False) -> web.Response:
    """An AWS error answer: JSON for the JSON protocol (CloudWatch Logs), XML for the query one (STS)."""
    if query:
        body = f"<ErrorResponse><Error><Type>Sender</Type><Code>{kind}</Code><Message>{message}</Message></Error>"
        return web.Response(
            status=status, text=body + "<RequestId>0</RequestId></ErrorResponse>", content_type="text/xml"
        )
    body = orjson.dumps({"__type": kind, "message": message})
    return web.Response(status=status, body=body, content_type="application/x-amz-json-1.1")


@dataclass
class Call:
    """One PutLogEvents call as the front saw it, and how it answered."""

    group: str
    stream: str
    events: list[dict[str, Any]]
    answer: str  # "200", or the error type it answered with


@dataclass
class Faults:
    throttle: int = 0
    unavailable: int = 0
    drop: int = 0
    poison: str | None = None
    expired: set[str] = field(default_factory=set)


class CloudWatchFront:
    def __init__(self, moto: str, keys: dict[str, str], *, region: str = "us-east-1") -> None:
        self.moto = moto
        self.keys = dict(keys)  # access key id -> secret: what signatures are checked with
        self.region = region
        self.host = "127.0.0.1"
        self.port = 0
        self.faults = Faults()
        self.expired_before_ms: int | None = None  # a group's retention, as a cut-off time
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.answers: Counter[str] = Counter()
        self.targets: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ control

    def throttle_next(self, count: int) -> None:
        with self._lock:
            self.faults.throttle += count

    def unavailable_next(self, count: int) -> None:
        with self._lock:
            self.faults.unavailable += count

    def drop_next(self, count: int) -> None:
        with self._lock:
            self.faults.drop += count

    def expire(self, key: str) -> None:
        with self._lock:
            self.faults.expired.add(key)

    def renew(self, key: str) -> None:
        with self._lock:
            self.faults.expired.discard(key)

    def logs(self, group: str, stream: str | None = None) -> list[dict[str, Any]]:
        """Every event moto holds in `group` (one stream, or all), read back with GetLogEvents."""
        client = boto3.client(
            "logs",
            endpoint_url=self.moto,
            region_name=self.region,
            aws_access_key_id="reader",
            aws_secret_access_key="reader",
        )
        names = [stream] if stream else [s["logStreamName"] for s in _streams(client, group)]
        events: list[dict[str, Any]] = []
        for name in names:
            query: dict[str, Any] = {"logGroupName": group, "logStreamName": name, "startFromHead": True}
            while True:
                page = client.get_log_events(**query)
                events += [{**event, "stream": name} for event in page["events"]]
                token = page.get("nextForwardToken")
                if not page["events"] or token is None or token == query.get("nextToken"):
                    break
                query["nextToken"] = token
        return events

    def messages(self, group: str, stream: str | None = None) -> list[dict[str, Any]]:
        """The JSON messages of every event in `group`, parsed, each with its `@stream` and `@timestamp`."""
        return [
            {**orjson.loads(event["message"]), "@stream": event["stream"], "@timestamp": event["timestamp"]}
            for event in self.logs(group, stream)
        ]

    # ------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        with self._lock:
            self.targets[target.rpartition(".")[2] or "query"] += 1
        refused = self._refused_signature(request, body)
        if refused is not None:
            kind, message = refused
            return self._answered(_error(kind, message, query=not target), target, body)
        if target != PUT:
            return await self._forward(request, body)
        fault = self._fault(body)
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()  # no answer at all: the client sees the connection go
            self._count("dropped")
            return web.Response()
        if fault is not None:
            return self._answered(fault, target, body)
        return await self._put(request, body)

    def _refused_signature(self, request: web.Request, body: bytes) -> tuple[str, str] | None:
        """The error type and message AWS answers a request whose SigV4 signature does not hold, else None."""
        match = _AUTHORIZATION.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        key, _, region, service, signed, signature = match.groups()
        secret = self.keys.get(key)
        if secret is None:
            return "UnrecognizedClientException", "The security token included in the request is invalid."
        stamp = request.headers.get("X-Amz-Date", "")
        try:
            signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return "IncompleteSignature", "X-Amz-Date is missing or malformed"
        if abs(signed_at - time.time()) > MAX_CLOCK_SKEW_S:
            return "InvalidSignatureException", "Signature expired"
        names = signed.split(";")
        if any(name not in request.headers for name in names):
            return "IncompleteSignature", "a signed header is missing"
        unsigned = AWSRequest(
            request.method,
            f"http://{request.host}{request.path_qs}",
            data=body,
            headers={name: request.headers[name] for name in names},
        )
        unsigned.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(key, secret), service, region)
        if signer.signature(signer.string_to_sign(unsigned, signer.canonical_request(unsigned)), unsigned) != signature:
            return "InvalidSignatureException", "The request signature we calculated does not match"
        with self._lock:
            expired = key in self.faults.expired
        if expired:
            return "ExpiredTokenException", "The security token included in the request is expired"
        return None

    def _fault(self, body: bytes) -> web.Response | str | None:
        with self._lock:
            faults = self.faults
            if faults.drop:
                faults.drop -= 1
                return "drop"
            if faults.throttle:
                faults.throttle -= 1
                return _error("ThrottlingException", "Rate exceeded")
            if faults.unavailable:
                faults.unavailable -= 1
                return _error("ServiceUnavailableException", "The service is unavailable", status=503)
            poison = faults.poison
        if poison is not None and poison.encode() in body:
            events = orjson.loads(body).get("logEvents", [])
            if any(poison in event.get("message", "") for event in events):
                return _error("InvalidParameterException", "Log event message is invalid (test poison)")
        return None

    async def _put(self, request: web.Request, body: bytes) -> web.Response:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._answered(_error("SerializationException", "not JSON"), PUT, body)
        events = doc.get("logEvents")
        group, stream = str(doc.get("logGroupName")), str(doc.get("logStreamName"))
        problem = _limits_broken(events, stream)
        if problem is not None:
            with self._lock:
                self.violations.append(f"{group}/{stream}: {problem}")
            return self._answered(_error("InvalidParameterException", problem), PUT, body, group, stream, events)
        rejected, kept = self._judged(events)
        if kept:
            forwarded = orjson.dumps({**doc, "logEvents": kept})
            status, answer, headers = await self._relay(request, forwarded)
            if status != 200:
                return self._answered(web.Response(status=status, body=answer, headers=headers), PUT, body)
        answer_doc: dict[str, Any] = {"nextSequenceToken": "0" * 56}
        if rejected:
            answer_doc["rejectedLogEventsInfo"] = rejected
        response = web.Response(body=orjson.dumps(answer_doc), content_type="application/x-amz-json-1.1")
        return self._answered(response, PUT, body, group, stream, events)

    def _judged(self, events: list[dict[str, Any]]) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """rejectedLogEventsInfo for a call in time order, with AWS's indexes, and the events that land."""
        now = int(time.time() * 1000)
        times = [event["timestamp"] for event in events]
        too_old = sum(1 for t in times if t < now - MAX_AGE_MS)
        expired = sum(1 for t in times if self.expired_before_ms is not None and t < self.expired_before_ms)
        too_new = next((i for i, t in enumerate(times) if t > now + MAX_AHEAD_MS), len(times))
        info = {}
        if too_old:
            info["tooOldLogEventEndIndex"] = too_old
        if expired:
            info["expiredLogEventEndIndex"] = expired
        if too_new < len(times):
            info["tooNewLogEventStartIndex"] = too_new
        return info, events[max(too_old, expired) : too_new]

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        status, answer, headers = await self._relay(request, body)
        return self._answered(web.Response(status=status, body=answer, headers=headers), "", body)

    async def _relay(self, request: web.Request, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._client.post(self.moto + request.path_qs, data=body, headers=headers) as answer:
            kept = ("Content-Type", "x-amzn-RequestId")
            return answer.status, await answer.read(), {k: answer.headers[k] for k in kept if k in answer.headers}

    def _answered(
        self,
        response: web.Response,
        target: str,
        body: bytes,
        group: str = "",
        stream: str = "",
        events: list[dict[str, Any]] | None = None,
    ) -> web.Response:
        answer = str(response.status)
        if response.status >= 400 and response.body is not None:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                answer = str(orjson.loads(response.body).get("__type", answer))  # type: ignore[arg-type]
        self._count(answer)
        if target == PUT:
            if events is None:
                doc = orjson.loads(body)
                group, stream, events = doc.get("logGroupName", ""), doc.get("logStreamName", ""), doc["logEvents"]
            with self._lock:
                self.calls.append(Call(group, stream, events, answer))
        return response

    def _count(self, answer: str) -> None:
        with self._lock:
            self.answers[answer] += 1

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> CloudWatchFront:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._client = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @contextlib.contextmanager
    def threaded(self) -> Iterator[CloudWatchFront]:
        """Serve from a background thread with its own event loop."""
        with served_in_thread(self.start, self.stop, "fake-cloudwatch"):
            yield self


def _limits_broken(events: Any, stream: str) -> str | None:
    """What makes a PutLogEvents call invalid for CloudWatch (WIRE.md), or None."""
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        return f"logEvents must hold 1 to {MAX_EVENTS} events, not {len(events) if isinstance(events, list) else '-'}"
    if not stream or ":" in stream or "*" in stream or len(stream) > 512:
        return f"invalid log stream name {stream[:80]!r}"
    size = 0
    for index, event in enumerate(events):
        message, stamp = event.get("message"), event.get("timestamp")
        if not isinstance(message, str) or not message:
            return f"event {index}: the message is empty"
        if type(stamp) is not int:
            return f"event {index}: the timestamp is not an integer"
        weight = len(message.encode()) + EVENT_OVERHEAD
        if weight > MAX_EVENT_BYTES:
            return f"event {index}: {weight} bytes, over the 1 MB event limit"
        size += weight
    if size > MAX_CALL_BYTES:
        return f"{size} bytes (UTF-8 + 26 each), over {MAX_CALL_BYTES}"
    times = [event["timestamp"] for event in events]
    if times != sorted(times):
        return "Log events in a single PutLogEvents request must be in chronological order."
    if times[-1] - times[0] > MAX_SPAN_MS:
        return "The batch of log events in a single PutLogEvents request cannot span more than 24 hours."
    return None


def _streams(client: Any, group: str) -> list[dict[str, Any]]:
    streams: list[dict[str, Any]] = []
    for page in client.get_paginator("describe_log_streams").paginate(logGroupName=group):
        streams += page["logStreams"]
    return streams
