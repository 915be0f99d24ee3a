"""AWS CloudWatch Logs sink: PutLogEvents within every limit, acting on partial rejections.

The config, how calls are sent and their answers classified, group and stream creation, and
`shipper check`. Per-event encoding and framing live in sinks/cloudwatch_events.py (a parse
worker runs the per-event part); batching, retries, splitting and acknowledgements stay in
`shipper.pipeline.driver`.

Two planes, two clients:
- PutLogEvents, the hot path, is sent with shipper's HTTP client (shipper/httpsink.py): its JSON body is framed
  from the prepared events, and botocore's `SigV4Auth` signs it in this sink's thread pool with
  the standard credential chain's current credentials (refreshed role credentials included).
  boto3's `put_log_events` would serialize and validate every event in Python: measured here,
  ~168 ms of one core per 10,000 events (~60,000 events/s at most, holding the GIL), against
  ~2.5 ms to frame and sign the same call.
- The control plane (CreateLogGroup, PutRetentionPolicy, CreateLogStream, DescribeLogGroups, STS
  GetCallerIdentity for `shipper check`) is boto3 in the same small pool. Those rare calls keep
  botocore's standard retry mode with a budget of 3 attempts (CreateLogStream is throttled at 50
  per second: a burst of new streams is absorbed where it happens); PutLogEvents never goes
  through botocore, so its only retry layer is the driver's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from shipper.config import HttpSinkConfig
from shipper.errors import ConfigError
from shipper.event import Event, PreparerSpec
from shipper.httpsink import HttpSink
from shipper.rules import OutOfRange
from shipper.sink import DELIVERED, BatchLimits, CheckResult, Outcome, Rejection, Request
from shipper.template import PLACEHOLDER, template_error
from shipper.units import Size
from sinks.aws import Aws, NoCredentials, NoRegion, chain_region, environment_region, signed_headers
from sinks.cloudwatch_events import (
    MAX_CALL_BYTES,
    MAX_CALL_EVENTS,
    MAX_EVENT_BYTES,
    STREAM_NAME_CHARS,
    LogEvents,
    Message,
    calls,
    line_calls,
)

RETENTION_DAYS = (
    *(1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731),
    *(1096, 1827, 2192, 2557, 2922, 3288, 3653),
)
GROUP_NAME = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
TARGET = "Logs_20140328.PutLogEvents"
CONTENT_TYPE = "application/x-amz-json-1.1"

# Error types (`__type`) of a refused call, by what they mean for us.
CREDENTIAL_ERRORS = frozenset(
    {
        "UnrecognizedClientException",
        "AccessDeniedException",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationTokenException",
        "NotAuthorized",
        "OptInRequired",
        "RequestExpired",
        "SignatureDoesNotMatch",
    }
)
THROTTLING_ERRORS = frozenset({"ThrottlingException", "Throttling", "LimitExceededException", "RequestLimitExceeded"})
UNAVAILABLE_ERRORS = frozenset({"ServiceUnavailableException", "ServiceUnavailable", "InternalFailure"})
# The call itself is wrong: split to isolate the events that make it so.
INVALID_ERRORS = frozenset({"InvalidParameterException", "ValidationException", "SerializationException"})
# rejectedLogEventsInfo: (key, reason, detail). `tooOld` and `expired` end a prefix of the call
# (exclusive), `tooNew` starts a suffix (inclusive).
REJECTED_BEFORE = (
    ("tooOldLogEventEndIndex", "too_old", "older than 14 days"),
    ("expiredLogEventEndIndex", "expired", "older than the log group's retention"),
)
REJECTED_FROM = ("tooNewLogEventStartIndex", "too_new", "more than 2 h in the future")

T = TypeVar("T")

log = logging.getLogger("shipper.sinks.cloudwatch")


# ---------------------------------------------------------------------------------- config


class CloudWatchConfig(HttpSinkConfig):
    """`[sinks.<name>]` with `type = "cloudwatch"`; see docs/cloudwatch.md."""

    by_reference_only: ClassVar[tuple[str, ...]] = ("access_key_id", "secret_access_key", "session_token")

    type: Literal["cloudwatch"]
    region: str | None = None  # else the standard chain's: AWS_REGION, AWS_DEFAULT_REGION, the profile
    log_group: str
    log_stream: str = "{host}/{source}"
    create_group: bool = True
    create_stream: bool = True
    retention_days: int | None = None  # applied when shipper creates the group
    message: Message = "json"
    # Credentials: the standard AWS chain unless keys are given (as ${VAR} or ${file:PATH}).
    profile: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    endpoint_url: str | None = None
    ca_bundle: Path | None = None
    tls_verify: bool = True
    compression: Literal["none"] = "none"  # PutLogEvents takes no compressed body
    max_event_bytes: Size = Field(default=MAX_EVENT_BYTES, ge=4096, le=MAX_CALL_BYTES)
    out_of_range: OutOfRange = "restamp"

    @field_validator("log_group")
    @classmethod
    def _group_name(cls, value: str) -> str:
        if not GROUP_NAME.fullmatch(value):
            raise ValueError("a log group name is 1 to 512 of the characters A-Z a-z 0-9 . - _ / #")
        if value.startswith("aws/"):
            raise ValueError("log group names starting with aws/ are reserved by AWS")
        return value

    @field_validator("log_stream")
    @classmethod
    def _stream_template(cls, value: str) -> str:
        problem = template_error(value) if value else "a log stream name is at least one character"
        if problem is not None:
            raise ValueError(problem)
        literal = PLACEHOLDER.sub("", value)
        if ":" in literal or "*" in literal:
            raise ValueError("a log stream name cannot contain ':' or '*'")
        if len(literal) > STREAM_NAME_CHARS:
            raise ValueError(f"a log stream name is at most {STREAM_NAME_CHARS} characters")
        return value

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, value: int | None) -> int | None:
        if value is not None and value not in RETENTION_DAYS:
            raise ValueError(f"CloudWatch keeps logs for one of {', '.join(map(str, RETENTION_DAYS))} days")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not REGION.fullmatch(value):
            raise ValueError(f"expected an AWS region such as eu-west-1, got {value!r}")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value.strip()):
            raise ValueError(f"expected a URL such as https://logs.eu-west-1.amazonaws.com, got {value!r}")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _credentials(self) -> CloudWatchConfig:
        keys = (self.access_key_id, self.secret_access_key)
        if (keys[0] is None) != (keys[1] is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (the standard chain)")
        if self.session_token is not None and keys[0] is None:
            raise ValueError("session_token goes with access_key_id and secret_access_key")
        if self.profile is not None and keys[0] is not None:
            raise ValueError("give a profile or keys, not both")
        if self.ca_bundle is not None and not self.tls_verify:
            raise ValueError("ca_bundle is for verifying the endpoint: it makes no sense with tls_verify = false")
        return self

    def preflight(self, key: str) -> None:
        """The region resolves (here or in the standard chain) and the profile and CA bundle exist."""
        if self.ca_bundle is not None and not os.access(self.ca_bundle, os.R_OK):
            raise ConfigError(f"{key}.ca_bundle", f"cannot read {str(self.ca_bundle)!r}")
        if self.profile is None and (self.region or environment_region()):
            return  # nothing to ask botocore
        import botocore.exceptions
        import botocore.session

        try:
            region = self.region or chain_region(botocore.session.Session(profile=self.profile))
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"{key}.profile", f"no profile {self.profile!r} in the AWS config files") from None
        if not region:
            raise ConfigError(
                f"{key}.region", "no region: set it here, or AWS_REGION / AWS_DEFAULT_REGION, or in the AWS profile"
            )


# ---------------------------------------------------------------------------------- AWS


class CreationRefused(Exception):
    """A group or stream is missing and shipper may not create it: the data waits until it exists."""


# ---------------------------------------------------------------------------------- sink


class CloudWatchSink(HttpSink):
    config: CloudWatchConfig
    limits = BatchLimits(max_events=MAX_CALL_EVENTS, max_bytes=MAX_CALL_BYTES, timeout=1.0)
    content_type = CONTENT_TYPE
    overload_reasons = frozenset({"connection", "service_unavailable"})

    def __init__(self, name: str, config: CloudWatchConfig) -> None:
        super().__init__(name, config)
        self._encoding: dict[str, Any] = {
            "log_stream": config.log_stream,
            "message": config.message,
            "max_event_bytes": int(config.max_event_bytes),
            "out_of_range": config.out_of_range,
            "retention_days": config.retention_days,
        }
        # boto3 and the signing of calls: blocking, so in threads of their own.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"shipper-aws-{name}")
        self._aws: Aws | None = None
        self._stale = False  # the destination refused the credentials: look them up again
        self._connecting = threading.Lock()
        self._creations: dict[str, asyncio.Future[None]] = {}

    # ------------------------------------------------------------ AWS session, in the pool

    async def _in_pool(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(call, *args))

    def _connect(self) -> Aws:
        """The standard chain resolved (again after the destination refused its credentials)."""
        with self._connecting:
            if self._aws is None or self._stale:
                self._aws, self._stale = Aws.resolve(self.config), False
            return self._aws

    def _signed(self, body: bytes) -> dict[str, str]:
        """SigV4 headers for a PutLogEvents call with `body`, with the chain's current credentials
        (a role's are refreshed by botocore as they near expiry: that may block, hence a thread)."""
        aws = self._connect()
        headers = {"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET}
        return signed_headers(aws.keys(), aws.region, urlsplit(aws.endpoint).netloc, body, headers, time.time())

    # ------------------------------------------------------------ HttpSink hooks

    async def start(self) -> None:
        """Resolve the region, endpoint and credential chain (a failure is said here, and by every
        send until fixed), then make the HTTP client for PutLogEvents."""
        if self._client is not None:
            return
        try:
            await self._in_pool(self._connect)
        except (NoRegion, NoCredentials) as exc:
            log.error("cannot set up AWS access", extra={"sink": self.name, "error": str(exc)})
        await super().start()

    def url(self, request: Request) -> str:
        return self._aws.endpoint if self._aws is not None else ""

    def request_headers(self, request: Request) -> dict[str, str]:
        return {**self.config.headers, **request.meta["signed"]}

    def tls(self) -> ssl.SSLContext | bool:
        if not self.config.tls_verify:
            return False
        bundle = self.config.ca_bundle or (self._aws.ca_bundle if self._aws is not None else None)
        return ssl.create_default_context(cafile=str(bundle)) if bundle else True

    async def stop(self) -> None:
        await super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ encoding

    def preparer(self) -> PreparerSpec:
        return f"{LogEvents.__module__}:{LogEvents.__name__}", self._encoding

    def encode(self, events: list[Event]) -> list[Request]:
        return calls(self.encoded(events), self.config.log_group)

    def encode_runs(self, events: Sequence[Event]) -> list[Request]:
        return line_calls(events, self.config.log_group) or super().encode_runs(events)

    # ------------------------------------------------------------ sending

    async def send(self, request: Request) -> Outcome:
        """Put the call; when its group or stream is missing, create them (once for every call
        waiting on them) and put it again."""
        outcome = await self._put(request)
        if outcome.reason == "resource_not_found" and outcome.kind == "retry":
            refused = await self._create(request.meta["stream"], outcome.detail)
            outcome = refused or await self._put(request)
        return outcome

    async def _put(self, request: Request) -> Outcome:
        await self.start()
        try:
            request.meta["signed"] = await self._in_pool(self._signed, request.body)
        except NoRegion as exc:
            return Outcome("unhealthy", reason="no_region", detail=str(exc))
        except NoCredentials as exc:  # none found, or the chain failed to get them
            self._stale = True
            return Outcome(
                "unhealthy",
                reason="no_credentials",
                detail=f"cannot get AWS credentials ({exc}); data stays buffered",
            )
        return await super().send(request)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes, request: Request) -> Outcome:
        """By the error type CloudWatch names (`__type`), whatever the status: throttling arrives as
        a 400. An answer naming no AWS error is not CloudWatch's (a wrong endpoint_url, a proxy):
        its 4xx keep the data, as no event of it was judged."""
        if 200 <= status < 300:
            return self._delivered(body, len(request.events))
        kind, message = error_of(headers, body)
        detail = f"{kind or f'HTTP {status}'}: {message}" if message else kind or f"HTTP {status}"
        if status == 413 or (not kind and (status >= 500 or status in (408, 429))):
            return super().classify(status, headers, body, request)
        if not kind:
            return Outcome(
                "unhealthy",
                reason=f"http_{status}",
                detail=f"{self.url(request)} answered HTTP {status} with no AWS error: is it a CloudWatch Logs "
                "endpoint (endpoint_url)? data stays buffered",
            )
        if kind in CREDENTIAL_ERRORS:
            self._stale = True  # the next attempt looks the credentials up again (a fixed file, a new role)
            provider = self._aws.provider if self._aws is not None else "unknown"
            return Outcome(
                "unhealthy",
                reason="credentials",
                detail=f"CloudWatch refused the credentials from {provider} ({detail}); "
                "data stays buffered and is retried with the credentials looked up again",
            )
        if kind == "ResourceNotFoundException":
            return Outcome("retry", reason="resource_not_found", detail=detail)
        if kind in THROTTLING_ERRORS:
            return Outcome("retry", reason="throttled", detail=detail)
        if kind in UNAVAILABLE_ERRORS or status == 503:
            return Outcome("retry", reason="service_unavailable", detail=detail)
        if status >= 500:
            return Outcome("retry", reason=f"http_{status}", detail=detail)
        if len(request.events) > 1:  # one bad event fails the whole call: isolate it
            return Outcome("split", reason=_label(kind), detail=detail)
        return Outcome("reject", reason=_label(kind), detail=detail)

    def _delivered(self, body: bytes, count: int) -> Outcome:
        """Accepted, but for the events named in rejectedLogEventsInfo: refused for good, by reason."""
        if b"rejectedLogEventsInfo" not in body:
            return DELIVERED
        try:
            info = orjson.loads(body).get("rejectedLogEventsInfo")
        except (orjson.JSONDecodeError, AttributeError):
            return DELIVERED
        if not isinstance(info, dict):
            return DELIVERED
        reasons: dict[int, tuple[str, str]] = {}
        for key, reason, detail in REJECTED_BEFORE:
            end = info.get(key)
            if isinstance(end, int):
                for index in range(min(end, count)):
                    reasons.setdefault(index, (reason, detail))
        key, reason, detail = REJECTED_FROM
        start = info.get(key)
        if isinstance(start, int):
            for index in range(max(start, 0), count):
                reasons.setdefault(index, (reason, detail))
        if not reasons:
            return DELIVERED
        rejected = [Rejection(index, why, text) for index, (why, text) in sorted(reasons.items())]
        return Outcome("delivered", reason="rejected_log_events", rejected=rejected)

    async def _create(self, stream: str, detail: str) -> Outcome | None:
        """Create the missing stream (and its group, when that is missing too), once for every call
        waiting on it; None once done, else why the data must wait."""
        from botocore.exceptions import BotoCoreError, ClientError

        creation = self._creations.get(stream)
        if creation is None:
            creation = asyncio.ensure_future(self._in_pool(self._create_stream, stream))
            self._creations[stream] = creation
            creation.add_done_callback(lambda _: self._creations.pop(stream, None))
        try:
            await asyncio.shield(creation)
        except CreationRefused as exc:
            return Outcome("unhealthy", reason="resource_not_found", detail=f"{exc} ({detail})")
        except ClientError as exc:
            kind, message = _client_error(exc)
            if kind in THROTTLING_ERRORS:
                return Outcome("retry", reason="throttled", detail=f"creating log stream {stream!r}: {message}")
            return Outcome(
                "unhealthy",
                reason="create_failed",
                detail=f"cannot create log stream {stream!r} in {self.config.log_group!r}: {kind}: {message}",
            )
        except BotoCoreError as exc:
            return Outcome("retry", reason="connection", detail=f"creating log stream {stream!r}: {exc}")
        return None

    def _create_stream(self, stream: str) -> None:
        """CreateLogStream; CreateLogGroup first when the group is missing too (as configured). A
        stream or group made meanwhile by someone else is as good."""
        logs, group = self._connect().client("logs"), self.config.log_group
        if not self.config.create_stream:
            raise CreationRefused(f"log stream {stream!r} of {group!r} is missing and create_stream = false")
        exists = logs.exceptions.ResourceAlreadyExistsException
        try:
            with contextlib.suppress(exists):
                logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except logs.exceptions.ResourceNotFoundException:
            self._create_group(logs)
            with contextlib.suppress(exists):
                logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def _create_group(self, logs: Any) -> None:
        """CreateLogGroup, with its retention when one is configured (a group someone else made keeps theirs)."""
        group, retention = self.config.log_group, self.config.retention_days
        if not self.config.create_group:
            raise CreationRefused(f"log group {group!r} is missing and create_group = false")
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            return
        log.info("created log group", extra={"sink": self.name, "log_group": group, "endpoint": logs.meta.endpoint_url})
        if retention is None:
            return
        try:
            logs.put_retention_policy(logGroupName=group, retentionInDays=retention)
        except logs.exceptions.ClientError as exc:  # the group is there: shipping goes on
            kind, message = _client_error(exc)
            log.error(
                "could not set the new log group's retention; its logs never expire until it is set",
                extra={
                    "sink": self.name,
                    "log_group": group,
                    "retention_days": retention,
                    "error": f"{kind}: {message}",
                },
            )

    # ------------------------------------------------------------ shipper check

    async def check(self) -> CheckResult:
        """Which identity the credentials resolve to (STS GetCallerIdentity) and from which
        provider, and whether the log group is there (DescribeLogGroups); nothing is written."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            aws = await self._in_pool(self._connect)
            await self._in_pool(aws.keys)
            identity = await self._in_pool(self._identity, aws)
        except (NoRegion, NoCredentials) as exc:
            return CheckResult(False, str(exc))
        except ClientError as exc:
            kind, message = _client_error(exc)
            provider = self._aws.provider if self._aws is not None else "the standard chain"
            return CheckResult(False, f"credentials from {provider} refused by STS ({kind}: {message})")
        except BotoCoreError as exc:
            return CheckResult(False, f"cannot resolve or check AWS credentials: {exc}")
        who = f"credentials from {aws.provider} ({identity})"
        group = self.config.log_group
        try:
            found = await self._in_pool(self._describe_group, aws)
        except ClientError as exc:
            kind, message = _client_error(exc)
            return CheckResult(False, f"{who}; cannot describe log group {group!r} in {aws.region} ({kind}: {message})")
        except BotoCoreError as exc:
            return CheckResult(False, f"{who}; {aws.endpoint} unreachable: {exc}")
        if found is None:
            if self.config.create_group:
                return CheckResult(
                    True, f"{who}; log group {group!r} not in {aws.region} yet: created on the first send"
                )
            return CheckResult(False, f"{who}; log group {group!r} not in {aws.region}, and create_group = false")
        retention = found.get("retentionInDays")
        kept = f"retention {retention} days" if retention else "never expires"
        return CheckResult(True, f"{who}; log group {group!r} in {aws.region} reachable ({kept})")

    def _identity(self, aws: Aws) -> str:
        return str(aws.client("sts").get_caller_identity()["Arn"])

    def _describe_group(self, aws: Aws) -> dict[str, Any] | None:
        group = self.config.log_group
        found = aws.client("logs").describe_log_groups(logGroupNamePrefix=group, limit=5).get("logGroups", [])
        return next((g for g in found if g.get("logGroupName") == group), None)


def error_of(headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """The error type and message of a refused call: `__type` (`com.amazonaws.logs#X` or `X`) and
    `message` of the JSON body, else the `x-amzn-ErrorType` header."""
    kind, message = "", ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        kind = str(doc.get("__type") or doc.get("code") or "").rpartition("#")[2]
        message = str(doc.get("message") or doc.get("Message") or "")
    if not kind:
        kind = headers.get("x-amzn-ErrorType", "").partition(":")[0]
    return kind, message[:300]


def _client_error(exc: Any) -> tuple[str, str]:
    error = exc.response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", ""))[:300]


def _label(kind: str) -> str:
    """A metric label from an error type: InvalidParameterException -> invalid_parameter."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind.removesuffix("Exception")).lower()


REGISTRATION = (CloudWatchConfig, CloudWatchSink)
