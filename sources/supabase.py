"""Supabase logs source: polls a project's Management API logs endpoint, none missed, none twice.

`GET {api_url}/v1/projects/{ref}/analytics/endpoints/logs?sql=..&iso_timestamp_start=..&iso_timestamp_end=..`
(ClickHouse SQL over one `logs` table; docs/supabase.md). Each configured table (a value of the
source column: edge_logs, function_logs, ...) is read in overlapping windows with a cursor of its
own (the plan: sources/supabase_logs.py) and pushed into a record feed of its own; a table's cursor,
with the ids it must not send again, is checkpointed only once its rows were delivered (the core's
acknowledgements), so a restart, even after kill -9, sends again at most what was in flight.

Every request of a project shares one rate budget (the endpoint allows ~30 a minute per user and
project), and the X-RateLimit-* headers and 429s the API answers stop the next request until reset.
401/403/402/404 make the source unhealthy (/health) with one clear line; 5xx, timeouts and errors
inside a 200 are retried with backoff; the window is only ever moved by rows received. A lock file
in the state directory keeps a second poller of the same project from starting beside this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit

import orjson
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from shipper import metrics
from shipper.checkpoint import CheckpointStore
from shipper.config import RetryConfig, SourceConfig
from shipper.errors import ConfigError
from shipper.health import Health
from shipper.httpclient import HttpClient, HttpError
from shipper.httpsink import connection_failure, retry_after
from shipper.log import RateLimitedLog
from shipper.pipeline.feed import RecordFeed
from shipper.sink import DELIVERED, CheckResult, Outcome
from shipper.source import Source, SourceContext
from shipper.statelock import StateLock
from shipper.units import Duration
from sources.supabase_logs import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_TABLES,
    MAX_ROWS,
    PROBE_WINDOW_US,
    US,
    WHOLE_MAP,
    Position,
    TableCursor,
    TableQuery,
    attribute_key,
    iso_micros,
    names_unknown_column,
    probe_sql,
    record_of,
)

log = logging.getLogger("shipper.sources.supabase")
T = TypeVar("T")

API_URL = "https://api.supabase.com"
LOGS_PATH = "/v1/projects/{ref}/analytics/endpoints/logs"
RATE_WINDOW = 60.0  # the rate limit counts requests per minute
NO_RESET_WAIT = 60.0  # a 429 that says nothing about its reset: wait out a whole window
MAX_RESET_WAIT = 900.0  # a reset header further ahead than this is not believed
REFUSED_RETRY = 60.0  # a refused token or project is asked again this often (a fix needs no restart)
SOURCE_COLUMNS = ("source", "source_name")  # the API reference and the migration changelog disagree


# ---------------------------------------------------------------------------------- config


class SupabaseConfig(SourceConfig):
    """`[sources.<name>]` with `type = "supabase"`; see docs/supabase.md."""

    type: Literal["supabase"]
    project_ref: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    access_token: SecretStr
    api_url: str = API_URL
    tables: list[str] = Field(default=list(DEFAULT_TABLES), min_length=1)
    # An extra ClickHouse condition per table, ANDed to its query, e.g.
    # `edge_logs = "log_attributes['response.status_code'] >= '400'"`.
    where: dict[str, str] = {}
    # The log_attributes keys shipped per table (default: DEFAULT_ATTRIBUTES; ["*"]: the whole map).
    attributes: dict[str, list[str]] = {}
    poll_interval: Duration = Field(default=15.0, gt=0)
    lag: Duration = 10.0  # read up to now minus this: rows still being ingested are left for the next poll
    overlap: Duration = 300.0  # each window starts this far before the cursor, to catch rows ingested late
    start_at: str = "now"  # a table without a checkpoint starts here: "now" or an RFC 3339 time
    source_column: Literal["auto", "source", "source_name"] = "auto"
    requests_per_minute: int = Field(default=30, ge=1, le=6000)  # this project's logs budget, every table together
    dedupe_max_ids: int = Field(default=10_000, ge=2 * MAX_ROWS, le=1_000_000)  # remembered per table
    request_timeout: Duration = Field(default=30.0, gt=0)
    retry: RetryConfig = RetryConfig(initial_backoff=1.0, max_backoff=60.0)
    unhealthy_after: Duration = 120.0

    @field_validator("access_token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        if not token:
            raise ValueError("the access token is empty (is SUPABASE_ACCESS_TOKEN set?)")
        if any(c.isspace() for c in token):
            raise ValueError("the access token contains whitespace")
        return SecretStr(token)

    @field_validator("api_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"expected a base URL such as {API_URL}, got {value!r}")
        return value.strip().rstrip("/")

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: list[str]) -> list[str]:
        for table in value:
            if not table.replace("_", "").isalnum() or not table.isascii():
                raise ValueError(f"expected a log source name such as edge_logs, got {table!r}")
        if len(set(value)) != len(value):
            raise ValueError("a table is listed twice")
        return value

    @field_validator("where", "attributes")
    @classmethod
    def _known_tables(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        tables = info.data.get("tables", [])
        for table in value:
            if table not in tables:
                raise ValueError(f"{table!r} is not in tables ({', '.join(tables)})")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_keys(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for keys in value.values():
            for key in keys:
                attribute_key(key)
        return value

    @field_validator("start_at")
    @classmethod
    def _start(cls, value: str) -> str:
        if value != "now":
            start_micros(value)
        return value

    def warnings(self, key: str) -> list[ConfigError]:
        """A poll interval the project's rate budget cannot serve for this many tables."""
        needed = len(self.tables) * RATE_WINDOW / self.poll_interval
        if needed <= self.requests_per_minute:
            return []
        fits = len(self.tables) * RATE_WINDOW / self.requests_per_minute
        return [
            ConfigError(
                f"{key}.poll_interval",
                f"{len(self.tables)} tables polled every {self.poll_interval:g}s need {needed:.0f} requests a minute, "
                f"over the {self.requests_per_minute} Supabase allows per project: polls will wait for the budget; "
                f"use poll_interval = {fits:g} or more (more still leaves room for paging and `shipper tail`)",
            )
        ]

    def queries(self, source_column: str) -> dict[str, TableQuery]:
        """Each table's query, with the source column's name as probed."""
        out = {}
        for table in self.tables:
            keys = self.attributes.get(table, DEFAULT_ATTRIBUTES.get(table))
            selected = None if keys is None or WHOLE_MAP in keys else tuple(keys)
            out[table] = TableQuery(table, source_column, selected, self.where.get(table))
        return out


def start_micros(value: str) -> int:
    """Epoch µs of an RFC 3339 `start_at` (a zone is required: a bare time is ambiguous)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f'expected "now" or an RFC 3339 time such as 2026-12-01T00:00:00Z, got {value!r}') from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: add Z (UTC) or an offset such as +02:00")
    return int(parsed.timestamp()) * US + parsed.microsecond


# ---------------------------------------------------------------------------------- the API


class ApiProblem(Exception):
    """A request that gave no rows: `outcome` is its metric label (http_503, timeout, query_error),
    `detail` says why in words (never a credential)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class Refused(ApiProblem):
    """401/403/402/404 (the token, its permissions, the plan, the project), or no source column:
    retrying soon will not help."""


class Throttled(ApiProblem):
    """429: the project's budget is spent; the budget now waits until reset."""


class QueryRejected(ApiProblem):
    """An `error` in the answer (a 200 can carry one) or a 400: the query, the window, or ClickHouse."""


def error_text(body: bytes) -> str:
    """The API's own words from an error answer: `error` (a string, or {message, errors[...]})
    or `message`; the start of the body when it is not JSON."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip()
    if not isinstance(doc, dict):
        return str(doc)[:300]
    error = doc.get("error") or doc.get("message") or doc.get("msg")
    if isinstance(error, dict):
        parts = [str(error.get("message") or "")]
        nested = error.get("errors")
        if isinstance(nested, list):
            parts += [str(item.get("message", item)) if isinstance(item, dict) else str(item) for item in nested]
        return "; ".join(dict.fromkeys(part for part in parts if part))[:1000] or str(error)[:300]
    return str(error)[:1000] if error else body[:300].decode("utf-8", "replace")


_REFUSALS = {
    401: "Supabase refused the access token (HTTP 401): check {key}.access_token",
    403: "the access token may not read project {ref}'s logs (HTTP 403): it needs the analytics_logs_read "
    "permission (OAuth scope analytics:read) on this project",
    402: "Supabase refuses to serve project {ref}'s logs on its plan or billing state (HTTP 402)",
    404: "no project {ref} at {url} (HTTP 404): check {key}.project_ref and api_url",
}


def rows_of(status: int, body: bytes, *, key: str, ref: str, url: str) -> list[Mapping[str, Any]]:
    """The rows of an answer, or the ApiProblem it is."""
    if status == 200:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise QueryRejected("bad_answer", f"the answer is not JSON: {body[:200]!r}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("result", []), list):
            raise QueryRejected("bad_answer", f"unexpected answer shape: {body[:200]!r}")
        if doc.get("error"):  # a failed query can come with HTTP 200 and an empty result
            raise QueryRejected("query_error", error_text(body))
        return [row for row in doc.get("result") or [] if isinstance(row, dict)]
    words = error_text(body)
    if status in _REFUSALS:
        line = _REFUSALS[status].format(key=key, ref=ref, url=url)
        raise Refused(f"http_{status}", f"{line} ({words})" if words else line)
    if status == 429:
        raise Throttled("http_429", "the project's logs rate limit is spent")
    if status in (400, 422):
        raise QueryRejected(f"http_{status}", words)
    raise ApiProblem(f"http_{status}", words or f"HTTP {status}")


class RateBudget:
    """One project's request budget: at most `per_minute` in any minute, none while the API said
    the limit is spent (X-RateLimit-Remaining 0, or a 429) until its reset."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._sent: deque[float] = deque()
        self.blocked_until = 0.0

    def wait(self) -> float:
        """Seconds before the next request may go (0: now)."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - RATE_WINDOW:
            self._sent.popleft()
        wait = self.blocked_until - now
        if len(self._sent) >= self.per_minute:
            wait = max(wait, self._sent[0] + RATE_WINDOW - now)
        return max(0.0, wait)

    def spend(self) -> None:
        self._sent.append(self._clock())

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Read an answer's rate-limit headers: a 429, or none remaining, blocks until reset."""
        remaining = headers.get("X-RateLimit-Remaining", "").strip()
        if status != 429 and remaining != "0":
            return
        reset = retry_after(headers)
        if reset is not None and reset > 10 * MAX_RESET_WAIT:  # an epoch time, not seconds from now
            reset -= time.time()
        if reset is None or not 0 <= reset <= MAX_RESET_WAIT:
            reset = NO_RESET_WAIT if status == 429 else None
        if reset is not None:
            self.blocked_until = max(self.blocked_until, self._clock() + reset)


class LogsApi:
    """One project's logs endpoint: a GET per query, its answer classified."""

    def __init__(self, config: SupabaseConfig, key: str, http: HttpClient, budget: RateBudget) -> None:
        self.config = config
        self.key = key  # the source's config key, for messages
        self.url = config.api_url + LOGS_PATH.format(ref=config.project_ref)
        self.http = http
        self.budget = budget

    async def query(self, sql: str, start_us: int, end_us: int) -> list[Mapping[str, Any]]:
        """Rows of `sql` over [start, end] (both bounds always sent: with neither, the API answers the
        last minute only), or the ApiProblem the answer is; sent once the rate budget allows."""
        params = {"sql": sql, "iso_timestamp_start": iso_micros(start_us), "iso_timestamp_end": iso_micros(end_us)}
        headers = {
            "Authorization": f"Bearer {self.config.access_token.get_secret_value()}",
            "Accept": "application/json",
        }
        while (wait := self.budget.wait()) > 0:
            await asyncio.sleep(wait)
        self.budget.spend()
        try:
            answer = await self.http.request("GET", f"{self.url}?{urlencode(params)}", headers=headers)
        except TimeoutError:
            raise ApiProblem("timeout", f"no answer within {self.config.request_timeout:g}s") from None
        except HttpError as exc:
            raise ApiProblem("connection", connection_failure(exc, self.url)) from None
        self.budget.observe(answer.status, answer.headers)
        ref = self.config.project_ref
        return rows_of(answer.status, answer.body, key=self.key, ref=ref, url=self.config.api_url)

    async def source_column(self, table: str, now_us: int) -> str:
        """The name of the logs table's source column (`source` in the API reference, `source_name`
        in the migration changelog): the configured one, else the first a one-row query accepts."""
        configured = self.config.source_column
        candidates = SOURCE_COLUMNS if configured == "auto" else (configured,)
        refusals = []
        for column in candidates:
            try:
                await self.query(probe_sql(column, table), now_us - PROBE_WINDOW_US, now_us)
            except QueryRejected as exc:
                if not names_unknown_column(exc.detail, column):
                    raise
                refusals.append(f"{column}: {exc.detail}")
                continue
            return column
        tried = " nor ".join(f"`{column}`" for column in candidates)
        raise Refused(
            "no_source_column",
            f"the logs table has neither {tried} column to select a log source by; set {self.key}.source_column "
            f"if Supabase renamed it ({'; '.join(refusals)})",
        )


def session(config: SupabaseConfig) -> HttpClient:
    """The poller's client: one request at a time (the queries of a poll are sequential), through
    the proxy HTTPS_PROXY / HTTP_PROXY / NO_PROXY name, as the HTTP sinks read them."""
    return HttpClient(1, config.request_timeout)


# ---------------------------------------------------------------------------------- one poller per project


# ---------------------------------------------------------------------------------- the source


class _Table:
    """A table's poller: its query, cursor, feed and committed position, and when it is next due."""

    def __init__(self, name: str, key: str, position: Position, cursor: TableCursor, store: CheckpointStore) -> None:
        self.name = name
        self.key = key  # its checkpoint entry: `<project_ref>/<table>`
        self.committed = position  # delivered up to here
        self.cursor = cursor
        self.store = store
        self.feed: RecordFeed | None = None
        self.query: TableQuery | None = None
        self.due_at = 0.0  # monotonic
        self.failures = 0  # consecutive failed requests (backoff)
        self.failing = False  # its last request failed: the source is not healthy while one is

    def commit(self, position: Position) -> None:
        """Every row up to `position` was delivered: checkpoint it."""
        self.committed = position
        self.store.update(self.key, position.to_state())

    def lag_seconds(self) -> float:
        return max(0.0, time.time() - self.committed.cursor / US)


class _Stopped(Exception):
    """The agent is stopping: abandon the request or wait at hand (nothing was pushed for it)."""


class SupabaseSource(Source):
    """Polls the project's tables round-robin, one request at a time, within the rate budget."""

    replayable = True
    config: SupabaseConfig

    def __init__(self, name: str, config: SourceConfig, context: SourceContext) -> None:
        super().__init__(name, config, context)
        self.key = f"sources.{name}"
        ref = self.config.project_ref
        self.lock = StateLock(
            context.state_dir / "locks" / f"supabase-{ref}.lock",
            f"Supabase project {ref} is already polled by {{owner}} with this state directory ({{path}} is "
            "locked); run exactly one poller per project",
        )
        self.health = Health(name, self.config.unhealthy_after, kind="source")
        self.budget = RateBudget(self.config.requests_per_minute)
        self._problems = RateLimitedLog(log, interval=60.0)
        self._ok = metrics.source_requests.labels(name, "ok")
        self._duplicates = metrics.source_duplicates.labels(name)
        self._tables: list[_Table] = []

    async def run(self) -> None:
        self.lock.acquire(f"source {self.name}")  # before the checkpoints are read: they are this poller's alone
        context = self.context
        context.health = self.health
        metrics.source_healthy.labels(self.name).set_function(lambda: self.health.healthy)
        tables = self._tables = self._open_tables()
        log.info(
            "polling Supabase logs",
            extra={"source": self.name, "project_ref": self.config.project_ref, "tables": [t.name for t in tables]},
        )
        async with session(self.config) as http:
            api = LogsApi(self.config, self.key, http, self.budget)
            with contextlib.suppress(_Stopped):
                await self._poll(api, tables)
        for table in tables:
            assert table.feed is not None
            await table.feed.flush(force=True)

    def close(self) -> None:
        self.lock.release()

    def _open_tables(self) -> list[_Table]:
        """A record feed per table, resuming from its checkpoint (else from `start_at`)."""
        config, store = self.config, self.context.checkpoints
        state = store.load()
        start = time.time_ns() // 1000 if config.start_at == "now" else start_micros(config.start_at)
        tables = []
        for name in config.tables:
            key = f"{config.project_ref}/{name}"
            position = Position.from_state(state.get(key))
            if key in state:
                problem = "not a table's position" if position is None else position.implausible(time.time_ns() // 1000)
                if problem is not None:  # the table starts at `start_at`
                    store.reject(key, problem)
                    position = None
            if position is None:
                position = Position.starting_at(start)
            cursor = TableCursor(position, int(config.overlap * US), config.dedupe_max_ids)
            table = _Table(name, key, position, cursor, store)
            fields = {"supabase_table": name, "project_ref": config.project_ref}
            table.feed = self.context.open_record_feed(on_commit=table.commit, committed=position, fields=fields)
            metrics.source_cursor_lag.labels(self.name, name).set_function(table.lag_seconds)
            tables.append(table)
        return tables

    async def _poll(self, api: LogsApi, tables: list[_Table]) -> None:
        """Until stopped: the next due table's next page (round-robin), one request at a time."""
        order = deque(tables)
        column: str | None = None
        while True:
            if column is None:
                column = await self._probe(api, tables)
                queries = self.config.queries(column)
                for table in tables:
                    table.query = queries[table.name]
                continue
            now = time.monotonic()
            due = next((t for t in order if t.due_at <= now), None)
            if due is None:
                await self._sleep(min(t.due_at for t in tables) - now)
                continue
            order.remove(due)
            order.append(due)
            try:
                await self._page(api, due)
            except QueryRejected as exc:
                if names_unknown_column(exc.detail, column):
                    column = None  # Supabase renamed the column under us: probe again
                self._failed(due, exc)
            except ApiProblem as exc:
                self._failed(due, exc)

    async def _probe(self, api: LogsApi, tables: list[_Table]) -> str:
        """The source column's name, asked until an answer gives it (a refusal or an outage is
        retried, as any request)."""
        while True:
            try:
                column = await self._interruptible(api.source_column(tables[0].name, time.time_ns() // 1000))
            except ApiProblem as exc:
                self._failed(tables[0], exc)
                await self._sleep(tables[0].due_at - time.monotonic())
                continue
            if self.config.source_column == "auto":
                log.info("Supabase logs source column found", extra={"source": self.name, "source_column": column})
            return column

    async def _page(self, api: LogsApi, table: _Table) -> None:
        """One request of `table` and what it gave, pushed with the position after it."""
        config = self.config
        lag_us = int(config.lag * US)
        window = table.cursor.window(time.time_ns() // 1000, lag_us)
        if window is None:
            table.due_at = time.monotonic() + config.poll_interval
            return
        assert table.query is not None
        rows = await self._interruptible(api.query(table.query.sql(window.after), window.start, window.end))
        self._succeeded(table)
        taken = table.cursor.take(window, rows, MAX_ROWS)
        if taken.duplicates:
            self._duplicates.inc(taken.duplicates)
        if table.cursor.forgot_before is not None:
            self._problems.warning(
                f"forgot:{table.name}",
                "more rows within the overlap than dedupe_max_ids: rows ingested later than this are no longer caught",
                source=self.name,
                table=table.name,
                caught_after=iso_micros(table.cursor.forgot_before),
            )
        assert table.feed is not None
        await table.feed.push_records([record_of(row) for row in taken.rows], table.cursor.position())
        behind = window.end + int(config.poll_interval * US) < time.time_ns() // 1000 - lag_us  # a 24 h cut
        table.due_at = time.monotonic() + (0.0 if taken.more or behind else config.poll_interval)

    def _succeeded(self, table: _Table) -> None:
        """A request answered with rows: healthy again once no table's last request failed."""
        self._ok.inc()
        table.failures = 0
        table.failing = False
        if not any(t.failing for t in self._tables):
            self.health.record(DELIVERED)

    def _failed(self, table: _Table, problem: ApiProblem) -> None:
        """Count, log and schedule the retry of a request that gave no rows: a 429 waits for the
        budget's reset, a refusal a minute, anything else backs off (per table, with jitter)."""
        metrics.source_requests.labels(self.name, problem.outcome).inc()
        table.failing = True
        table.failures += 1
        if isinstance(problem, Throttled):
            table.due_at = 0.0  # the budget holds the next request until the reset
            self.health.record(Outcome("retry", reason=problem.outcome, detail=problem.detail))
            return
        if isinstance(problem, Refused):  # every table alike: one refusal speaks for the project
            self.health.record(Outcome("unhealthy", reason=problem.outcome, detail=problem.detail))
            for each in self._tables:
                each.due_at = time.monotonic() + REFUSED_RETRY
            return
        retry = self.config.retry
        delay = min(retry.max_backoff, retry.initial_backoff * 2 ** (table.failures - 1)) * random.uniform(0.5, 1.0)
        table.due_at = time.monotonic() + delay
        self.health.record(Outcome("retry", reason=problem.outcome, detail=f"{table.name}: {problem.detail}"))
        self._problems.warning(
            f"{table.name}:{problem.outcome}",
            "Supabase logs request failed; retrying",
            source=self.name,
            table=table.name,
            reason=problem.outcome,
            detail=problem.detail,
            retry_in_seconds=round(delay, 2),
        )

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise _Stopped as soon as the agent stops."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.context.stopping.wait(), seconds)
        if self.context.stopping.is_set():
            raise _Stopped

    async def _interruptible(self, request: Awaitable[T]) -> T:
        """Await `request`, abandoned (cancelled) when the agent stops first: nothing was pushed for it."""
        task = asyncio.ensure_future(request)
        stopping = asyncio.ensure_future(self.context.stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise _Stopped
        return task.result()

    async def check(self) -> CheckResult:
        """One small query (the source column's probe, over the last minute): the token, the
        project and the column's name, without shipping anything."""
        async with session(self.config) as http:
            api = LogsApi(self.config, self.key, http, self.budget)
            try:
                column = await api.source_column(self.config.tables[0], time.time_ns() // 1000)
            except ApiProblem as exc:
                return CheckResult(False, exc.detail)
        ref = self.config.project_ref
        return CheckResult(True, f"project {ref}: token accepted, logs readable (source column `{column}`)")


REGISTRATION = (SupabaseConfig, SupabaseSource)
