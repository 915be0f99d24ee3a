"""A fake Supabase Management API logs endpoint that behaves as WIRE.md says: a real aiohttp server on loopback.

`GET /v1/projects/{ref}/analytics/endpoints/logs?sql=..&iso_timestamp_start=..&iso_timestamp_end=..`
- `Authorization: Bearer <token>`: 401 for an unknown token, 403 for one without access to the project
  (`forbid`), 402 when the plan refuses (`payment_required`), 404 for another project ref.
- Bounds: both, else the last minute only (whatever the one given said); over 24 h apart, or start
  after end: 400 with an `error`.
- The SQL is evaluated for real over one `logs` table (a ClickHouse subset: the queries shipper sends
  and simple conditions): SELECT of columns, `log_attributes['key'] [AS alias]`, `log_attributes`,
  `count()`; WHERE with AND / OR / NOT, parentheses, = != <> < <= > >=, [NOT] IN (...), [NOT] LIKE,
  toInt*OrZero / toFloat64OrZero / lower / upper; ORDER BY with ASC / DESC; LIMIT. `select *` and
  `count(*)` are refused, so is an unknown column (the source column is named `source` or
  `source_name`, as the fake is told), comparing text with a number, anything it cannot parse: each
  as ClickHouse words in an `error` inside HTTP 200 with an empty result.
- At most 1,000 rows, whatever LIMIT says. Timestamps as ClickHouse text without a zone
  (`2026-06-22T09:34:06.215000`, UTC).
- Rate limit per token: `limit` requests per `window` seconds (fixed windows); X-RateLimit-Limit,
  -Remaining and -Reset (seconds) on every answer; past the limit, 429 until the reset.
- Late rows: `add(rows, visible_after=s)` keeps rows (timestamps in the past) hidden for `s` seconds.

Faults on demand: `fail_next(n, status)`, `error_next(n, message)` (an error inside a 200),
`delay_next(n, seconds)` (a slow answer, for timeouts), `throttle_for(seconds)` (429 until then).
Every request is kept in `seen` (its parameters, status, rows) for tests to check.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.threaded import FakeServer

MAX_ROWS = 1000
MAX_WINDOW_S = 24 * 3600
DEFAULT_WINDOW_S = 60
US = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def clickhouse_text(us: int) -> str:
    """A timestamp as the endpoint returns it: ClickHouse text, no zone marker (UTC)."""
    return datetime.fromtimestamp(us // US, UTC).replace(microsecond=us % US).strftime("%Y-%m-%dT%H:%M:%S.%f")


def parse_micros(text: str) -> int:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * US + parsed.microsecond


@dataclass
class LogRow:
    """One row of the `logs` table."""

    source: str
    at: int  # epoch µs
    event_message: str
    severity_text: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    visible_at: float = 0.0  # monotonic: hidden before (ingested late)


def rows(
    source: str, count: int, first_us: int, step_us: int, *, prefix: str = "", **kw: Any
) -> list[LogRow]:  # fmt: skip
    """`count` rows of `source`, `step_us` apart from `first_us`; each message names its id."""
    out = []
    for index in range(count):
        row = LogRow(source, first_us + index * step_us, "", **kw)
        row.id = f"{prefix or source}-{index:06d}-{row.id[:8]}"
        row.event_message = f"row {row.id}"
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ SQL


class SqlError(Exception):
    """A query ClickHouse would refuse: its words go into the answer's `error`."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*')|(?P<quoted>`[^`]*`)"
    r"|(?P<op><=|>=|!=|<>|=|<|>|\(|\)|\[|\]|,|\*)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"SELECT", "FROM", "WHERE", "ORDER", "BY", "LIMIT", "AND", "OR", "NOT", "AS", "ASC", "DESC", "IN", "LIKE"}
_FUNCTIONS = re.compile(r"^(toU?Int(8|16|32|64)OrZero|toFloat64OrZero|lower|upper|toDateTime64)$")


class Timestamp(int):
    """The `timestamp` column's value (epoch µs): compared with text, the text is read as a time."""


def _tokens(sql: str) -> list[tuple[str, str]]:
    out = []
    position = 0
    sql = sql.rstrip().rstrip(";")
    while position < len(sql):
        match = _TOKEN.match(sql, position)
        if match is None or match.end() == position:
            if sql[position:].strip() == "":
                break
            raise SqlError(f"Code: 62. DB::Exception: Syntax error at position {position}: {sql[position:][:30]!r}")
        kind = match.lastgroup
        assert kind is not None
        text = match.group(kind)
        if kind == "word" and text.upper() in _KEYWORDS:
            kind, text = "kw", text.upper()
        out.append((kind, text))
        position = match.end()
    return out


Expr = Callable[[dict[str, Any]], Any]


class Query:
    """A parsed query: select items, filter, order, limit."""

    def __init__(self, sql: str, source_column: str) -> None:
        self.source_column = source_column
        self.columns = {"id", "timestamp", "event_message", "severity_text", source_column, "log_attributes"}
        self.tokens = _tokens(sql)
        self.at = 0
        self.items: list[tuple[str, Expr | None]] = []  # (output name, expression; None for count())
        self.where: Expr | None = None
        self.order: list[tuple[Expr, bool]] = []
        self.limit: int | None = None
        self._parse()

    # -------------------------------------------------------------- parsing

    def _peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def _take(self, kind: str, text: str | None = None) -> str:
        token = self._peek()
        if token[0] != kind or (text is not None and token[1] != text):
            want = text or kind
            raise SqlError(
                f"Code: 62. DB::Exception: Syntax error: expected {want}, got {token[1] or 'end of query'!r}"
            )
        self.at += 1
        return token[1]

    def _accept(self, kind: str, text: str) -> bool:
        if self._peek() == (kind, text):
            self.at += 1
            return True
        return False

    def _parse(self) -> None:
        self._take("kw", "SELECT")
        while True:
            self._item()
            if not self._accept("op", ","):
                break
        self._take("kw", "FROM")
        table = self._take("word")
        if table != "logs":
            raise SqlError(f"Code: 60. DB::Exception: Unknown table expression identifier '{table}'")
        if self._accept("kw", "WHERE"):
            self.where = self._or()
        if self._accept("kw", "ORDER"):
            self._take("kw", "BY")
            while True:
                expr = self._operand()
                desc = self._accept("kw", "DESC")
                if not desc:
                    self._accept("kw", "ASC")
                self.order.append((expr, desc))
                if not self._accept("op", ","):
                    break
        if self._accept("kw", "LIMIT"):
            self.limit = int(self._take("num"))
        if self._peek()[0] != "end":
            raise SqlError(f"Code: 62. DB::Exception: Syntax error: unexpected {self._peek()[1]!r}")

    def _item(self) -> None:
        if self._peek() == ("op", "*"):
            raise SqlError("select * is not allowed on the logs table: select the columns you need")
        if self._peek() == ("word", "count") and self._peek(1) == ("op", "("):
            self.at += 2
            if self._peek() == ("op", "*"):
                raise SqlError("count(*) is not supported: use count()")
            self._take("op", ")")
            name = self._take("quoted")[1:-1] if self._accept("kw", "AS") else "count()"
            self.items.append((name, None))
            return
        start = self.at
        expr = self._operand()
        name = " ".join(text for _, text in self.tokens[start : self.at])
        if self._accept("kw", "AS"):
            kind, text = self._peek()
            self.at += 1
            name = text[1:-1] if kind == "quoted" else text
        self.items.append((name, expr))

    def _or(self) -> Expr:
        left = self._and()
        while self._accept("kw", "OR"):
            right = self._and()
            left = (lambda a, b: lambda row: bool(a(row)) or bool(b(row)))(left, right)
        return left

    def _and(self) -> Expr:
        left = self._not()
        while self._accept("kw", "AND"):
            right = self._not()
            left = (lambda a, b: lambda row: bool(a(row)) and bool(b(row)))(left, right)
        return left

    def _not(self) -> Expr:
        if self._accept("kw", "NOT"):
            inner = self._not()
            return lambda row: not inner(row)
        return self._comparison()

    def _comparison(self) -> Expr:
        left = self._operand()
        negate = self._accept("kw", "NOT")
        if self._accept("kw", "IN"):
            self._take("op", "(")
            values = [self._literal()]
            while self._accept("op", ","):
                values.append(self._literal())
            self._take("op", ")")
            return lambda row: (any(_compare(left(row), "=", value) for value in values)) != negate
        if self._accept("kw", "LIKE"):
            pattern = _like(self._literal())
            return lambda row: (pattern.fullmatch(_text(left(row))) is not None) != negate
        if negate:
            raise SqlError("Code: 62. DB::Exception: Syntax error: NOT without IN or LIKE")
        kind, op = self._peek()
        if kind == "op" and op in ("=", "!=", "<>", "<", "<=", ">", ">="):
            self.at += 1
            right = self._operand()
            return lambda row: _compare(left(row), op, right(row))
        return left

    def _literal(self) -> Any:
        kind, text = self._peek()
        if kind == "str":
            self.at += 1
            return _unquote(text)
        if kind == "num":
            self.at += 1
            return float(text) if "." in text else int(text)
        raise SqlError(f"Code: 62. DB::Exception: Syntax error: expected a literal, got {text!r}")

    def _operand(self) -> Expr:
        kind, text = self._peek()
        if kind in ("str", "num"):
            value = self._literal()
            return lambda row: value
        if kind == "op" and text == "(":
            self.at += 1
            inner = self._or()
            self._take("op", ")")
            return inner
        if kind == "word" and self._peek(1) == ("op", "("):
            if not _FUNCTIONS.match(text):
                raise SqlError(f"Code: 46. DB::Exception: Unknown function {text}")
            self.at += 2
            arguments = [self._operand()]
            while self._accept("op", ","):
                arguments.append(self._operand())
            self._take("op", ")")
            return _function(text, arguments)
        if kind in ("word", "quoted"):
            self.at += 1
            name = text.strip("`")
            if name not in self.columns:
                raise SqlError(
                    f"Code: 47. DB::Exception: Unknown expression identifier `{name}` in scope SELECT ... FROM logs. "
                    "(UNKNOWN_IDENTIFIER)"
                )
            if name == "log_attributes" and self._accept("op", "["):
                key = self._literal()
                self._take("op", "]")
                return lambda row: row["log_attributes"].get(key, "")
            return lambda row: row[name]
        raise SqlError(f"Code: 62. DB::Exception: Syntax error: unexpected {text or 'end of query'!r}")

    # -------------------------------------------------------------- evaluation

    def run(self, table: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        selected = [row for row in table if self.where is None or self.where(row)]
        if any(expr is None for _, expr in self.items):
            return [{name: len(selected) if expr is None else None for name, expr in self.items}]
        for expr, desc in reversed(self.order):
            selected.sort(key=expr, reverse=desc)
        limit = MAX_ROWS if self.limit is None else min(self.limit, MAX_ROWS)
        out = []
        for row in selected[:limit]:
            record = {}
            for name, expr in self.items:
                assert expr is not None
                value = expr(row)
                record[name] = clickhouse_text(value) if isinstance(value, Timestamp) else value
            out.append(record)
        return out


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _like(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern), re.S)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise SqlError(f"Code: 43. DB::Exception: Illegal type {type(value).__name__} of argument of function like")
    return value


def _function(name: str, arguments: list[Expr]) -> Expr:
    argument = arguments[0]
    if name == "toDateTime64":  # toDateTime64('2026-06-22 09:34:06.215000', 6, 'UTC')
        if len(arguments) != 3 or arguments[1]({}) != 6 or arguments[2]({}) != "UTC":
            raise SqlError("Code: 42. DB::Exception: the fake reads toDateTime64(text, 6, 'UTC') only")
        return lambda row: Timestamp(_as_time(_text(argument(row))))
    if len(arguments) != 1:
        raise SqlError(f"Code: 42. DB::Exception: Number of arguments for function {name} doesn't match")
    if name in ("lower", "upper"):
        return lambda row: getattr(_text(argument(row)), name)()

    def number(row: dict[str, Any]) -> Any:
        value = argument(row)
        try:
            return float(value) if name.startswith("toFloat") else int(str(value))
        except ValueError:
            return 0

    return number


_TYPE = {str: "String", int: "UInt64", float: "Float64", Timestamp: "DateTime64(6, 'UTC')"}


def _compare(left: Any, op: str, right: Any) -> bool:
    """ClickHouse comparison: text against a timestamp is read as a time; text against a number is
    an error, as in ClickHouse."""
    if isinstance(left, Timestamp) and isinstance(right, str):
        right = _as_time(right)
    elif isinstance(right, Timestamp) and isinstance(left, str):
        left = _as_time(left)
    elif isinstance(left, str) != isinstance(right, str):
        raise SqlError(
            f"Code: 386. DB::Exception: There is no supertype for types {_TYPE.get(type(left), '?')}, "
            f"{_TYPE.get(type(right), '?')} because some of them are String and some of them are not"
        )
    if op == "=":
        return bool(left == right)
    if op in ("!=", "<>"):
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _as_time(text: str) -> int:
    try:
        return parse_micros(text)
    except ValueError:
        raise SqlError(f"Code: 41. DB::Exception: Cannot parse DateTime64 from String {text!r}") from None


# ------------------------------------------------------------------------------------ the server


@dataclass(frozen=True)
class Seen:
    """One request as the fake saw it."""

    at: float  # monotonic
    status: int
    sql: str
    start: str | None
    end: str | None
    rows: int
    error: str | None


class SupabaseLogsApi(FakeServer):
    thread_name = "fake-supabase"

    def __init__(
        self,
        token: str = "sbp_test_token",
        ref: str = "abcdefghijklmnopqrst",
        *,
        source_column: str = "source",
        limit: int = 30,
        window: float = 60.0,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.token = token
        self.ref = ref
        self.source_column = source_column
        self.limit = limit
        self.window = window
        self.forbid = False  # 403: the token may not read this project
        self.payment_required = False  # 402
        self.latency = 0.0  # seconds before every answer (a slow API: requests are in flight longer)
        self.table: list[LogRow] = []
        self.seen: list[Seen] = []
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._window_start = 0.0
        self._count = 0
        self._throttled_until = 0.0
        self._fail: list[int] = []
        self._errors: list[str] = []
        self._delays: list[float] = []

    # ------------------------------------------------------------ control

    def add(self, new: Iterable[LogRow], visible_after: float = 0.0) -> list[LogRow]:
        """Store rows; with `visible_after`, they appear only that many seconds from now (late)."""
        added = list(new)
        with self._lock:
            for row in added:
                row.visible_at = time.monotonic() + visible_after
            self.table.extend(added)
        return added

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail += [status] * count

    def error_next(self, count: int, message: str = "Code: 159. DB::Exception: Timeout exceeded") -> None:
        """The next `count` queries answer HTTP 200 with an empty result and this `error`."""
        with self._lock:
            self._errors += [message] * count

    def delay_next(self, count: int, seconds: float) -> None:
        with self._lock:
            self._delays += [seconds] * count

    def throttle_for(self, seconds: float) -> None:
        """429 to every request for `seconds` (a spent budget elsewhere: `shipper tail`, a script)."""
        with self._lock:
            self._throttled_until = time.monotonic() + seconds

    def requests(self, status: int | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if status is None or s.status == status]

    # ------------------------------------------------------------ handler

    async def _logs(self, request: web.Request) -> web.Response:
        with self._lock:
            delay = self._delays.pop(0) if self._delays else self.latency
        if delay:
            await asyncio.sleep(delay)
        status, body, headers = self._answer(request)
        response = web.json_response(body, status=status, headers=headers)
        with self._lock:
            self.statuses[status] += 1
            result = body.get("result") if isinstance(body, dict) else None
            error = body.get("error") if isinstance(body, dict) else None
            query = request.query
            self.seen.append(
                Seen(
                    time.monotonic(), status, query.get("sql", ""), query.get("iso_timestamp_start"),
                    query.get("iso_timestamp_end"), len(result) if isinstance(result, list) else 0,
                    None if error is None else str(error),
                )
            )  # fmt: skip
        return response

    def _answer(self, request: web.Request) -> tuple[int, Any, dict[str, str]]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}, {}
        if request.match_info["ref"] != self.ref:
            return 404, {"message": "Project not found"}, {}
        if self.forbid:
            return 403, {"message": "Your account does not have the necessary privileges to access this endpoint"}, {}
        if self.payment_required:
            return 402, {"message": "Logs are not available on this project's plan"}, {}
        with self._lock:
            throttled, headers = self._rate()
            fault = self._fail.pop(0) if self._fail and not throttled else None
            error = self._errors.pop(0) if self._errors and fault is None and not throttled else None
        if throttled:
            return 429, {"message": "Too many requests"}, headers
        if fault is not None:
            return fault, {"message": "injected fault"}, headers
        query = request.query
        start, end = query.get("iso_timestamp_start"), query.get("iso_timestamp_end")
        if start is None or end is None:  # WIRE: with a bound missing, the last minute only
            first, last = now_us() - DEFAULT_WINDOW_S * US, now_us()
        else:
            try:
                first, last = parse_micros(start), parse_micros(end)
            except ValueError:
                return 400, _error(400, f"invalid timestamp {start!r} / {end!r}"), headers
            if last < first:
                return 400, _error(400, "iso_timestamp_start must be before iso_timestamp_end"), headers
            if last - first > MAX_WINDOW_S * US:
                return (
                    400,
                    _error(400, "the range between iso_timestamp_start and iso_timestamp_end is over 24 hours"),
                    headers,
                )
        if error is not None:
            return 200, {"result": [], "error": {"code": 500, "message": error, "status": "INTERNAL"}}, headers
        try:
            parsed = Query(query.get("sql", ""), self.source_column)
        except SqlError as exc:
            return 200, {"result": [], "error": str(exc)}, headers
        visible = time.monotonic()
        with self._lock:
            table = [row for row in self.table if first <= row.at <= last and row.visible_at <= visible]
        try:
            result = parsed.run(self._columns(row) for row in table)
        except SqlError as exc:
            return 200, {"result": [], "error": str(exc)}, headers
        return 200, {"result": result, "error": None}, headers

    def _columns(self, row: LogRow) -> dict[str, Any]:
        return {
            "id": row.id,
            "timestamp": Timestamp(row.at),
            "event_message": row.event_message,
            "severity_text": row.severity_text,
            self.source_column: row.source,
            "log_attributes": row.attributes,
        }

    def _rate(self) -> tuple[bool, dict[str, str]]:
        """Count a request in the token's fixed window: (throttled, rate-limit headers)."""
        now = time.monotonic()
        if now >= self._window_start + self.window:
            self._window_start, self._count = now, 0
        self._count += 1
        reset = self._window_start + self.window - now
        throttled = self._count > self.limit
        if now < self._throttled_until:
            throttled, reset = True, self._throttled_until - now
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": "0" if throttled else str(max(0, self.limit - self._count)),
            "X-RateLimit-Reset": str(max(1, math.ceil(reset))) if throttled else str(math.ceil(reset)),
        }
        return throttled, headers

    # ------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/projects/{ref}/analytics/endpoints/logs", self._logs)
        return app


def _error(code: int, message: str) -> dict[str, Any]:
    return {"result": [], "error": {"code": code, "message": message, "status": "INVALID_ARGUMENT", "errors": []}}
