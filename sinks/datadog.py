"""Datadog Logs sink: HTTP intake v2 (`POST /api/v2/logs`), spoken directly for speed.

The config, the intake's URL and key, how Datadog's answers are classified, and `shipper check`.
Encoding lives in sinks/datadog_logs.py (`LogEncoder`): a parse worker runs its per-event part
where events are parsed (shipper/workers.py), and its framing makes the requests of at most 1,000
entries and 5,000,000 uncompressed bytes. Batching, retries, splitting and acknowledgements stay in
`shipper.pipeline.driver`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import time
from base64 import b64encode
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import orjson
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from shipper.config import HttpSinkConfig, environ_of
from shipper.event import Event, PreparerSpec
from shipper.httpclient import HttpError, environment_proxy
from shipper.httpsink import HttpSink, connection_failure
from shipper.lines import events_of
from shipper.rules import OutOfRange
from shipper.sink import DELIVERED, BatchLimits, CheckResult, Outcome, Request
from shipper.template import PLACEHOLDER, template_error
from shipper.units import Size
from sinks.datadog_logs import MAX_ENTRIES, MAX_EVENT_BYTES, MAX_REQUEST_BYTES, LogEncoder

# Site name -> site domain. Logs go to `http-intake.logs.<domain>`, API calls to `api.<domain>`.
SITES: dict[str, str] = {
    "US1": "datadoghq.com",
    "US3": "us3.datadoghq.com",
    "US5": "us5.datadoghq.com",
    "EU1": "datadoghq.eu",
    "AP1": "ap1.datadoghq.com",
    "AP2": "ap2.datadoghq.com",
    "UK1": "uk1.datadoghq.com",
    "US1-FED": "ddog-gov.com",
    "US2-FED": "us2.ddog-gov.com",
}
Site = Literal["US1", "US3", "US5", "EU1", "AP1", "AP2", "UK1", "US1-FED", "US2-FED"]

LOGS_PATH = "/api/v2/logs"
VALIDATE_PATH = "/api/v1/validate"
# A request whose oldest entry is this close to the age limit is re-encoded before being (re)sent,
# so a long outage (e.g. a revoked key fixed hours later) re-stamps or drops it instead of losing it.
STALE_MS = 18 * 3600 * 1000 - 2 * 60 * 1000


# ---------------------------------------------------------------------------------- config


class DatadogConfig(HttpSinkConfig):
    """`[sinks.<name>]` with `type = "datadog"`; see docs/datadog.md."""

    type: Literal["datadog"]
    api_key: SecretStr
    site: Site = "US1"
    endpoint: str | None = None
    service: str | None = None
    source: str = "nodejs"
    tags: list[str] = []
    max_event_bytes: Size = Field(default=MAX_EVENT_BYTES, ge=4096, le=MAX_EVENT_BYTES)
    out_of_range: OutOfRange = "restamp"

    @model_validator(mode="before")
    @classmethod
    def _agent_environment(cls, data: Any, info: ValidationInfo) -> Any:
        """What Datadog's own agents read from the environment, for the keys the table leaves out:
        DD_API_KEY, DD_SITE, DD_SERVICE; DD_TAGS (space or comma separated) when it has no `tags`, and
        DD_ENV as the tag `env:<value>` when its tags have no `env:` tag."""
        if not isinstance(data, dict):
            return data
        environ = environ_of(info)
        filled = dict(data)
        for key, variable in (("api_key", "DD_API_KEY"), ("site", "DD_SITE"), ("service", "DD_SERVICE")):
            if key not in filled and environ.get(variable):
                filled[key] = environ[variable]
        if "tags" not in filled and environ.get("DD_TAGS"):
            filled["tags"] = [tag for tag in re.split(r"[\s,]+", environ["DD_TAGS"]) if tag]
        env = environ.get("DD_ENV", "").strip()
        tags = filled.get("tags", [])
        if env and isinstance(tags, list) and not any(str(tag).startswith("env:") for tag in tags):
            filled["tags"] = [*tags, f"env:{env}"]
        return filled

    @field_validator("api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("the API key is empty (is DD_API_KEY set?)")
        if any(c.isspace() for c in key):
            raise ValueError("the API key contains whitespace")
        return SecretStr(key)

    @field_validator("site", mode="before")
    @classmethod
    def _site_name(cls, value: Any) -> Any:
        """Accept a site name in any case, or the site's domain as DD_SITE spells it (datadoghq.eu)."""
        if isinstance(value, str):
            name = value.strip().upper()
            if name in SITES:
                return name
            domain = value.strip().lower().removeprefix("https://").removeprefix("app.").rstrip("/")
            for site, site_domain in SITES.items():
                if domain == site_domain:
                    return site
            raise ValueError(f"unknown Datadog site {value!r} (one of: {', '.join(SITES)})")
        return value

    @field_validator("endpoint")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected a base URL such as https://proxy.example.com, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("the endpoint must not have a query or fragment")
        return value.strip().rstrip("/").removesuffix(LOGS_PATH)

    @field_validator("tags")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag or "," in PLACEHOLDER.sub("", tag):
                raise ValueError(f"invalid tag {tag!r}: tags are non-empty and contain no comma")
            problem = template_error(tag)
            if problem:
                raise ValueError(problem)
        return value


# ---------------------------------------------------------------------------------- sink


class DatadogSink(HttpSink):
    config: DatadogConfig
    limits = BatchLimits(max_events=MAX_ENTRIES, max_bytes=MAX_REQUEST_BYTES, goal_bytes=4_250_000, timeout=5.0)

    def __init__(self, name: str, config: DatadogConfig) -> None:
        super().__init__(name, config)
        domain = SITES[config.site]
        self.intake = (
            f"{config.endpoint}{LOGS_PATH}" if config.endpoint else f"https://http-intake.logs.{domain}{LOGS_PATH}"
        )
        self.api_base = config.endpoint or f"https://api.{domain}"
        self.where = config.endpoint or f"site {config.site} ({domain})"  # an endpoint replaces the site
        # What the encoder is built from, here and in a parse worker (plain values: see datadog_logs).
        self._encoding: dict[str, Any] = {
            "source": config.source,
            "service": config.service,
            "tags": list(config.tags),
            "max_event_bytes": int(config.max_event_bytes),
            "out_of_range": config.out_of_range,
        }
        self.encoder = LogEncoder(name, **self._encoding)

    # ------------------------------------------------------------ HttpSink hooks

    def url(self, request: Request) -> str:
        return self.intake

    def auth_headers(self) -> dict[str, str]:
        return {"DD-API-KEY": self.config.api_key.get_secret_value()}

    # ------------------------------------------------------------ encoding

    def preparer(self) -> PreparerSpec:
        return f"{LogEncoder.__module__}:{LogEncoder.__name__}", self._encoding

    def encode(self, events: list[Event]) -> list[Request]:
        return self.encoder.encode(self.encoded(events))

    # ------------------------------------------------------------ sending

    async def send(self, request: Request) -> Outcome:
        """Send, first re-stamping the logs of a request that waited so long they near the age limit."""
        oldest = request.meta.get("oldest_ms")
        if oldest is not None and oldest < time.time() * 1000 - STALE_MS:
            fresh = self.encoder.encode(self.encoder.aged(events_of(request.events)))
            if not fresh:  # every event dropped as out of range (counted by `aged`)
                request.events = []
                return DELIVERED
            if len(fresh) > 1:
                return Outcome("split", reason="stale", detail="re-encoded request no longer fits one request")
            request.body, request.events, request.meta = fresh[0].body, fresh[0].events, fresh[0].meta
            request.wire = None
        return await super().send(request)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes, request: Request) -> Outcome:
        """Where Datadog differs from the HttpSink defaults.

        - 400 on a batch: split until the bad log is alone, so one malformed entry does not cost
          999 good ones; a lone 400 is dropped (driver: counted, logged at most once a minute).
        - 401/403: unhealthy, data kept; the detail names the site (the key never appears).
        - 404/405: the endpoint is not a logs intake (a wrong `endpoint`): a config error, keep data.
        """
        detail = body[:512].decode("utf-8", "replace")
        if status == 400 and len(request.events) > 1:
            return Outcome("split", reason="http_400", detail=detail)
        if status in (401, 403):
            return Outcome(
                "unhealthy",
                reason=f"http_{status}",
                detail=f"Datadog refused the API key for {self.where} (HTTP {status}); "
                "data stays buffered and is retried until the key is fixed",
            )
        if status in (404, 405):
            return Outcome(
                "unhealthy",
                reason=f"http_{status}",
                detail=f"{self.intake} is not a Datadog logs intake (HTTP {status}); check site/endpoint",
            )
        return super().classify(status, headers, body, request)

    # ------------------------------------------------------------ shipper check

    async def check(self) -> CheckResult:
        """Validate the API key (GET /api/v1/validate on the API host, or on `endpoint` when set)
        and that the logs intake answers; no log is sent. The key never appears in the detail."""
        if importlib.util.find_spec("datadog_api_client") is None:
            key = await self._validate_plain()
        else:
            key = await asyncio.to_thread(self._validate_with_client)
        if not key.ok:
            return key
        reach = await self.probe(self.intake, {})  # without the key: only reachability is asked
        return CheckResult(reach.ok, f"{key.detail}; {reach.detail}")

    def _validate_with_client(self) -> CheckResult:
        # Imported by name: the package is an optional extra, and its functions are untyped.
        client_module: Any = importlib.import_module("datadog_api_client")
        exceptions: Any = importlib.import_module("datadog_api_client.exceptions")
        auth: Any = importlib.import_module("datadog_api_client.v1.api.authentication_api")
        ApiClient, Configuration = client_module.ApiClient, client_module.Configuration
        ApiException, AuthenticationApi = exceptions.ApiException, auth.AuthenticationApi

        configuration = Configuration(
            host=self.api_base,
            api_key={"apiKeyAuth": self.config.api_key.get_secret_value()},
            request_timeout=self.config.request_timeout,
        )
        proxy = environment_proxy(self.api_base)
        if proxy is not None:  # urllib3 reads no proxy from the environment, and no credentials from its URL
            parts = urlsplit(proxy)
            configuration.proxy = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
            if parts.username is not None:
                credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                configuration.proxy_headers = {
                    "Proxy-Authorization": f"Basic {b64encode(credentials.encode()).decode()}"
                }
        try:
            with ApiClient(configuration) as client:
                response = AuthenticationApi(client).validate()
        except ApiException as exc:
            return self._validation_result(int(exc.status or 0))
        except Exception as exc:  # urllib3 connection errors and the like
            return self._unreachable(exc)
        return self._validation_result(200 if getattr(response, "valid", False) else 403)

    async def _validate_plain(self) -> CheckResult:
        client = await self.http()
        try:
            url = self.api_base + VALIDATE_PATH
            answer = await client.request("GET", url, headers=self.auth_headers(), read_limit=4096)
            status = answer.status
            if status == 200:
                doc = orjson.loads(answer.body or b"{}")
                status = 200 if isinstance(doc, dict) and doc.get("valid") is True else 403
        except orjson.JSONDecodeError:
            return CheckResult(False, f"{self.api_base + VALIDATE_PATH} is not a Datadog API (its answer is not JSON)")
        except (HttpError, TimeoutError) as exc:
            return self._unreachable(exc)
        return self._validation_result(status)

    def _unreachable(self, exc: BaseException) -> CheckResult:
        url = self.api_base + VALIDATE_PATH
        return CheckResult(False, f"cannot reach {url} to validate the API key: {connection_failure(exc, url)}")

    def _validation_result(self, status: int) -> CheckResult:
        if status == 200:  # with an endpoint, the intake URL named next says where
            return CheckResult(True, "API key valid" if self.config.endpoint else f"API key valid for {self.where}")
        if status in (401, 403):
            return CheckResult(False, f"API key rejected for {self.where} (HTTP {status})")
        return CheckResult(False, f"key validation at {self.api_base} failed (HTTP {status})")


REGISTRATION = (DatadogConfig, DatadogSink)
