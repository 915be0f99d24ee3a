"""Raw lines in, normalized and redacted events out.

`build_processor` is the one entry point sources use. A processor serves one stream group of one
source; it keeps multi-line state per stream key, so stdout and stderr may share it.

Formats. `auto` decides per line: a line starting with `{` that parses as a JSON object is a
record (pino when `level` is a number, Nest JSON when it is a word, any other JSON object too); a
`[Nest] PID  - ...` line opens a Nest event; `[HH:MM:ss.SSS] LEVEL (pid): ...` opens a pino-pretty
event; `file:///app.js:82` (Node's crash printout) opens a crash event that ends with its
`Node.js vX` line. Any other line continues the open Nest/pretty/crash event (their messages may
go on at column 0), or, after plain text, continues it when it looks like a continuation
(indented, blank, `}`) and otherwise starts a new text event. Groups end at the next header or
record, after `multiline.flush_timeout` of silence, or at the size cap. An explicit format only
narrows which of these are recognised; what is not recognised becomes text (counted in
`shipper_parse_fallbacks`), never dropped. The one exception: a blank line that belongs to no
event is dropped and counted with reason `empty`.

Also recognised (popular setups beyond the defaults): nest-winston's nestLike `[App] PID  TIME
LEVEL [Ctx] msg - {meta}` opens a Nest event; the util.inspect output of Nest's `json: true,
colors: true` is a record; a text line starting `2026-12-03 15:49:24 error: ...` (winston's common
printf) has its time and level read; pino-pretty `--singleLine`'s inline `{...}` becomes fields.

Normalized fields (all sinks encode from these):
- `timestamp` RFC 3339 UTC with milliseconds and `Z`; `level` trace|debug|info|warn|error|fatal;
  `message` always a string (objects as compact JSON); `host` (the record's hostname, else the
  agent's); `service` (config `service`, else the record's own `service`, else the source name);
  `source`; `stream` (when given); `pid`; `context` (Nest); `err` {type, message, stack, ...} for
  every error form; `http` {method, url, status_code, duration_ms} from pino's req/res/responseTime.
- pino: `level` becomes the word and the number stays as `level_num`; `time` stays unchanged;
  `msg` moves to `message` and `hostname` to `host`; `req`, `res`, `responseTime`, `err`, `pid`
  and child bindings stay unchanged.
- Nest JSON: `timestamp` (epoch ms) is rewritten in RFC 3339 (lossless), `error` and `stack`
  move to `err`, `params` and `context` stay.
- Other records: a level word (pino, Nest, winston, syslog, Cloud Logging, Python) under `level`,
  else `severity`, `log.level`, `lvl` or `levelname` (which stay). Numeric times are read by
  magnitude (seconds, ms, µs, ns: `clock.epoch_ms`), on the pino fast path too.
- nest-winston nestLike: as Nest text, plus the ` - {meta}` as fields and its `stack`/`error` as `err`.
- Nest text: the `+Nms` suffix becomes `elapsed_ms`.
- Node's crash printout: `err` {location, source, type, message, stack} (`text.crash_error`) and
  `node` {version}, level fatal. Any event ending in the `Node.js vX` line gets `node.version` and
  level fatal; lines after a stack stay in the message: no line is only in `raw`.
- A record field that collides with a normalized name and is not represented losslessly is kept
  as `original_<name>` (e.g. an unparseable timestamp, pino's `message` next to `msg`).
- `continuation: true` marks the second and later parts of a multi-line event split at the
  `multiline.max_lines`/`max_bytes` cap.

Timestamps. Each stream (a source's stdout or stderr, a file, stdin) keeps a clock of the times
its lines said, the same in a parse worker (which holds the feed's processor between chunks):
- A time printed without a date (pino-pretty's `HH:MM:ss.SSS`, in the source's zone) is its latest
  occurrence not after the receive time plus `clock.FUTURE_SKEW_SECONDS`: a line cannot come from
  the future, so a time of day later than the receive time is the day before's.
- A time printed to the second (Nest text) gets as milliseconds the one after the previous event's
  and after the last such made-up time, when they are in the same second (its first millisecond
  otherwise): never before a pino record of that second just above it, and events printed to the
  second keep their arrival order.
- A line without a usable time (crash output, plain text, a record without one, an unreadable
  header timestamp) is marked `shipper.time_estimated = true` and stamped with: the receive time
  when the stream has shown no time yet; else, when the stream's last time was read more than
  LIVE_LAG_MS after it was written (a replay, a backlog), that time (the event before it);
  else (read live) that time plus the receive time elapsed since, at most its own receive time.

Long lines. A line longer than `max_line_bytes` is cut into text events of at most that many bytes,
each with FRAGMENT = {"index": i} (from 0), "count": n when the line's end is in the call that
emits the piece, and "last": true on the final piece; each carries the level and time (and a
header's pid, context) read from the line's first KiB. A feed holds at most `max_line_bytes` of a
line still streaming in: it sends the line's start with `feed(open_end=True)`, the stream's next
line goes on with it (`_Stream.cut` pieces sent so far). Lines of normal length cost one length
test per call. Counted in `shipper_parse_fallbacks{reason="line_too_long"}`, warned about at
most once a minute per source.

`held_bytes` counts the input bytes (line plus its newline, `\\r` included) of lines sitting in
open multi-line groups; it grows when a line joins a group and shrinks by the group's total when
the group is emitted, so `end_offset - held_bytes` is always the start of unemitted input.

`Event.raw` is the original line (lines joined with `\\n`, `\\r` removed), except when redaction
changed the event: then a record's raw is its redacted JSON and a text event's raw is its
redacted text.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable
from itertools import repeat
from typing import TYPE_CHECKING, Any, cast

import orjson

from shipper.event import Event
from shipper.log import RateLimitedLog
from shipper.parsing.clock import (
    LocalTimes,
    epoch_ms,
    format_ms,
    resolve_zone,
)
from shipper.parsing.direct import Direct, Lane, LaneForm, direct_lines
from shipper.parsing.pino import normalize_records
from shipper.parsing.records import (
    LEVEL_BY_NUM,
    LEVEL_BY_WORD,
    NEST_VERBOSE,
    error_from_object,
    error_from_stack,
    http_fields,
    level_field,
    level_from_number,
    render,
)
from shipper.parsing.text import (
    ANSI_BYTES,
    CRASH_HEAD,
    ELAPSED,
    NEST_HEAD,
    NEST_LEVELS,
    NEST_LIKE_HEAD,
    NODE_VERSION,
    PRETTY_HEAD,
    PRETTY_LEVELS,
    PRETTY_ORIGIN,
    STAMPED_HEAD,
    continues_text,
    crash_error,
    decode,
    inspect_object,
    nest_like_meta,
    pretty_body,
    split_error,
    text_level,
    trailing_object,
    winston_elapsed,
)
from shipper.redact import REDACTED, Redactor
from shipper.tally import parse_fallbacks

if TYPE_CHECKING:
    from shipper.config import RedactConfig, SourceConfig

__all__ = ["FRAGMENT", "TIME_ESTIMATED", "Processor", "build_processor"]

# Set (true) on an event whose line shows no usable time, so its timestamp is shipper's estimate.
TIME_ESTIMATED = "shipper.time_estimated"
# A stream whose last time was read within this of being written is read live: its lines without a
# time are stamped by the receive clock. One read further behind is a replay (or a backlog): they
# take the time of the event before them.
LIVE_LAG_MS = 60_000

# Set on each piece of a line longer than `max_line_bytes`: {"index": i, "count": n, "last": true}
# (see the module docstring, Long lines).
FRAGMENT = "shipper.fragment"
# How much of a long line's start is read for its level and time.
_HEAD_BYTES = 1024
# A record's level and time keys near its start (`"level":50`, `"time":1795394836366`).
_RECORD_HEAD = re.compile(
    rb'"(level|time|timestamp|ts|@timestamp|severity|lvl|levelname)"\s*:\s*'
    rb'(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|"(?:[^"\\]|\\.){0,100}")'
)
_HEAD_KEYS = ("level", "level_num", "timestamp", TIME_ESTIMATED)
_cut_lines_log = RateLimitedLog(logging.getLogger("shipper.parsing"), 60.0)

# Group kinds.
_NEST, _PRETTY, _TEXT, _CRASH = 1, 2, 3, 4
_TIME_KEYS = ("time", "ts", "@timestamp")
_UNPARSED = object()  # a line not parsed yet (JSON null parses to None)


class _Group:
    """Lines of one multi-line event still waiting for their end."""

    __slots__ = ("done", "first", "head", "kind", "last_at", "lines", "nbytes", "winston")

    def __init__(self, kind: int, line: bytes, size: int, at: float, head: dict[str, Any], first: str | None) -> None:
        self.kind = kind
        self.lines = [line]
        self.nbytes = size
        self.last_at = at
        self.head = head  # fields known from the first line (timestamp, level, pid, context, ...)
        self.first = first  # the first line's message part, when the first line is a header
        self.done = False  # a crash printout ends with its `Node.js vX` line
        self.winston = False  # a Nest group printed by nest-winston's nestLike (` - {meta}`, winston levels)


class _Stream:
    """Per-stream state: the open group and the stream's clock (the times its events said)."""

    __slots__ = ("const", "cut", "cut_head", "group", "last_ms", "read_at", "read_ms", "second_ms")

    def __init__(self, const: dict[str, Any]) -> None:
        self.const = const
        self.group: _Group | None = None
        self.cut = 0  # pieces of a long line emitted before its end was read
        self.cut_head: dict[str, Any] = {}  # the level and time that line's start showed
        self.last_ms = -1  # the previous event's time (epoch ms)
        self.second_ms = -1  # the last time made up for a time printed to the second
        self.read_ms = -1  # the last time read from a line (epoch ms), -1 before the first
        self.read_at = 0.0  # that line's receive time

    def read(self, ms: int, received_at: float) -> int:
        """Note a time read from a line (the event's own time)."""
        self.last_ms = self.read_ms = ms
        self.read_at = received_at
        return ms

    def second(self, second: int, received_at: float) -> int:
        """Epoch ms for a time printed to the second (Nest): the millisecond after both the
        previous event's and the last one made up, when in the same second, so neither a record
        just before nor the order of these events is contradicted; else the second's first (or,
        after a later second, its last) millisecond."""
        start = second * 1000
        ms = min(max(self.last_ms + 1, self.second_ms + 1, start), start + 999)
        self.second_ms = ms
        return self.read(ms, received_at)

    def estimate(self, received_at: float) -> int:
        """Epoch ms for a line that shows no time (see the module docstring, Timestamps)."""
        received = int(received_at * 1000)
        if self.read_ms < 0:
            ms = received
        elif self.read_at * 1000 - self.read_ms > LIVE_LAG_MS:
            ms = self.read_ms  # read behind the writer (a replay): the neighbouring event's time
        else:
            ms = min(received, self.read_ms + int((received_at - self.read_at) * 1000))
        self.last_ms = ms
        return ms


class Processor:
    """Parses, normalizes and redacts the lines of one source's stream group."""

    def __init__(self, source: str, config: SourceConfig, *, host: str, redact: RedactConfig) -> None:
        self.source = source
        self.host = host
        self.held_bytes = 0
        fmt = config.format
        self._json = fmt in ("auto", "pino", "nest-json")
        self._nest = fmt in ("auto", "nest")
        self._pretty = fmt in ("auto", "pino-pretty")
        self._service = config.service
        self._times = LocalTimes(resolve_zone(config.timezone))  # the name was checked with the config
        self._timeout = config.multiline.flush_timeout
        self._max_bytes = config.multiline.max_bytes
        self._max_lines = config.multiline.max_lines
        self._max_line = config.max_line_bytes
        self._redactor = Redactor(redact)
        self._streams: dict[str | None, _Stream] = {}
        self._second = -1
        self._prefix = ""
        self._records_only = self._json  # whether the last chunk held nothing but records
        self._pino_lane = fmt in ("auto", "pino")  # Nest JSON records are never the lane's
        self._lanes: dict[tuple[Any, ...], Lane] = {}
        self._text_reason = "unrecognized" if fmt != "text" else None
        self._fallbacks = {
            reason: parse_fallbacks.labels(source, reason)
            for reason in ("unrecognized", "invalid_json", "empty", "bad_timestamp", "line_too_long")
        }

    def parse(self, lines: list[bytes], stream: str | None, received_at: float, open_end: bool = False) -> list[Event]:
        """Parse lines (no terminators) read from `stream` at `received_at` (epoch seconds). The
        lines are complete, except the last one with `open_end`: the start of a line longer than
        `max_line_bytes` whose end is still to come (the next call's first line goes on with it)."""
        out: list[Event] = []
        state = self._state(stream)
        if state.group is not None and received_at - state.group.last_at >= self._timeout:
            out.append(self._close(state))
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        json_ok = self._json
        redactor = self._redactor
        joined = b"\n".join(lines)
        if open_end or state.cut or self._has_long_line(joined, lines):
            return out + self._feed_long(lines, stream, state, received_at, open_end)
        crlf = joined.find(b"\r") >= 0 and any(line[-1:] == b"\r" for line in lines)
        # Lines that may hold a secret, found for the whole chunk at once, by object identity so
        # the loop needs no index.
        suspects: set[int] = set()
        if redactor.enabled and json_ok:
            found = redactor.suspects(joined)
            suspects = {id(line) for line in lines} if found is None else {id(lines[i]) for i in found}
        # A stream of records (the last chunk was all records) is parsed in one C-level map; a
        # chunk with any other line falls back to line-by-line parsing. JSON whitespace includes
        # the \r of a CRLF line, so it parses too.
        parsed: Iterable[Any] = repeat(_UNPARSED)
        if json_ok and self._records_only:
            try:
                parsed = list(map(loads, lines))
            except decode_error:
                self._records_only = False
        records_only = json_ok
        # Consecutive records go to the fast path (`pino.normalize_records`) together.
        run: list[Any] = []
        raws: list[bytes] = []
        for line, record in zip(lines, parsed, strict=False):  # `parsed` may be endless
            if record is _UNPARSED:
                record = None
                if json_ok and line[:1] == b"{":
                    try:
                        record = loads(line)
                    except decode_error:
                        crash = state.group
                        if crash is None or crash.kind != _CRASH or crash.done:
                            # Nest's `json: true` with `colors: true` prints util.inspect output, not JSON.
                            record = inspect_object(decode(line))
                            if record is None:
                                self._fallbacks["invalid_json"].inc()
                        # else: a thrown object, as Node's crash printout shows it (util.inspect output)
            if type(record) is dict:
                if state.group is not None:
                    out.append(self._close(state))
                raw = line[:-1] if crlf and line[-1:] == b"\r" else line
                if suspects and id(line) in suspects and redactor.record(record) is not None:
                    raw = orjson.dumps(record)
                run.append(record)
                raws.append(raw)
                continue
            records_only = False
            if run:
                out += self._records(run, raws, state, stream, received_at)
                run, raws = [], []
            self._text_line(state, line, received_at, out)
        if run:
            out += self._records(run, raws, state, stream, received_at)
        self._records_only = records_only
        return out

    def _state(self, stream: str | None) -> _Stream:
        state = self._streams.get(stream)
        if state is None:
            const: dict[str, Any] = {"service": self._service or self.source, "source": self.source}
            if stream is not None:
                const["stream"] = stream
            state = self._streams[stream] = _Stream(const)
        return state

    def parse_direct(
        self, joined: bytes, stream: str | None, received_at: float, extra: dict[str, Any] | None, form: LaneForm
    ) -> Direct | None:
        """Complete lines (`joined` by newlines: a worker gets them so, and the lane reads them so,
        with no bytes object a line) through the direct lane (shipper/parsing/direct.py) in a
        sink's `form`, with `extra` added as `fill_in` adds it. None, with nothing changed, when the
        chunk is not for the lane: the lane is not built, the stream is not all records, a group or
        long line is open, a line is long or ends in CR, or a line the lane left is not a JSON object."""
        if direct_lines is None or not (self._json and self._records_only and self._pino_lane):
            return None
        state = self._state(stream)
        if state.group is not None or state.cut:
            return None
        if b"\r" in joined or self._has_long_line(joined):
            return None
        # A processor serves one feed, whose extra fields stay; its sinks may change (a reload).
        key = (stream, form.kind, form.service, form.labels, form.stream_of)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(state.const, extra, form)
        redactor = self._redactor
        flagged = bytearray()  # a byte per line up to the last flagged one
        if redactor.enabled:
            found = redactor.suspects(joined)
            if found is None:
                return None
            if found:
                flagged = bytearray(max(found) + 1)
                for index in found:
                    flagged[index] = 1
        args = (joined, bytes(flagged), lane.forbidden, lane.constants, lane.extra, self._second, self._prefix)
        settings = lane.settings(form)
        result = direct_lines(*args) if settings is None else direct_lines(*args, settings)
        wire, slow, before, fresh, second, prefix, stamps, restamped, cuts, slow_lines, count = result
        records: list[dict[str, Any]] = []
        for line in slow_lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            if type(record) is not dict:
                return None
            records.append(record)
        self._second, self._prefix = second, prefix
        events: list[Event] = []
        for index, prior, record, raw in zip(slow, before, records, slow_lines, strict=True):
            if prior >= 0:
                state.read(prior, received_at)
            if index < len(flagged) and flagged[index] and redactor.record(record) is not None:
                raw = orjson.dumps(record)
            events += self._records([record], [raw], state, stream, received_at)
        if fresh >= 0:
            state.read(fresh, received_at)
        return Direct(count, wire, cuts, slow, events, stamps, restamped)

    def _has_long_line(self, joined: bytes, lines: list[bytes] | None = None) -> bool:
        """Whether a line of `joined` (`lines`: them, when already split) is over `max_line_bytes`."""
        if len(joined) <= self._max_line:
            return False
        return max(map(len, joined.split(b"\n") if lines is None else lines)) > self._max_line

    def _records(
        self, records: list[dict[str, Any]], raws: list[bytes], state: _Stream, stream: str | None, received_at: float
    ) -> list[Event]:
        """Events of consecutive records: plain pino ones on the fast path, the others normalized
        carefully in their place, the stream's clock noted in line order."""
        events, slow, before, fresh, self._second, self._prefix = normalize_records(
            records, raws, state.const["service"], self.source, stream, self._second, self._prefix
        )
        for index, prior in zip(slow, before, strict=True):
            if prior >= 0:
                state.read(prior, received_at)
            record = records[index]
            self._normalize(record, state, received_at)
            events[index] = Event(record, raws[index])
        if fresh >= 0:
            state.read(fresh, received_at)
        return cast(list[Event], events)

    def flush(self, now: float | None = None, force: bool = False) -> list[Event]:
        """Emit multi-line groups idle for the flush timeout (all of them when `force`)."""
        if now is None:
            now = time.time()
        out: list[Event] = []
        for state in self._streams.values():
            group = state.group
            if group is not None and (force or now - group.last_at >= self._timeout):
                out.append(self._close(state))
        return out

    # ------------------------------------------------------------------ long lines

    def _feed_long(
        self, lines: list[bytes], stream: str | None, state: _Stream, received_at: float, open_end: bool
    ) -> list[Event]:
        """`feed` for lines of which some are (or go on) a line longer than `max_line_bytes`: those
        are cut into pieces, the others parsed as usual, in order."""
        out: list[Event] = []
        start = 0  # the first line not parsed yet
        last = len(lines) - 1
        for index, line in enumerate(lines):
            ends = not (open_end and index == last)
            if state.cut or len(line) > self._max_line or not ends:
                if start < index:
                    out += self.parse(lines[start:index], stream, received_at)
                out += self._pieces(line, state, received_at, ends)
                start = index + 1
        if start <= last:
            out += self.parse(lines[start:], stream, received_at)
        return out

    def _pieces(self, line: bytes, state: _Stream, received_at: float, ends: bool) -> list[Event]:
        """A long line (or the next part of one, after `state.cut` pieces) as text events of at most
        `max_line_bytes`, each marked FRAGMENT and carrying the level and time of the line's start.
        `ends`: the line's end is in `line` (the total is known, the final piece is in it)."""
        out: list[Event] = []
        if state.group is not None:
            out.append(self._close(state))
        if state.cut == 0:  # the line's start
            state.cut_head = self._long_line_head(line[:_HEAD_BYTES], state, received_at)
            self._fallbacks["line_too_long"].inc()
            _cut_lines_log.warning(
                self.source,
                "line longer than max_line_bytes shipped in pieces (shipper.fragment)",
                source=self.source,
                max_line_bytes=self._max_line,
            )
        if ends and line[-1:] == b"\r":
            line = line[:-1]
        step = self._max_line
        count = max(1, -(-len(line) // step))
        first = state.cut
        for number in range(count):
            piece = line[number * step : (number + 1) * step]
            fragment: dict[str, Any] = {"index": first + number}
            if ends:
                fragment["count"] = first + count
                if number == count - 1:
                    fragment["last"] = True
            head = dict(state.cut_head)
            head[FRAGMENT] = fragment
            out.append(self._event(_Group(_TEXT, piece, 0, received_at, head, None), state.const))
        state.cut = 0 if ends else first + count
        return out

    def _long_line_head(self, start: bytes, state: _Stream, received_at: float) -> dict[str, Any]:
        """The level and time (and a header's other fields) a long line's first bytes show: a
        record's `"level"` and time keys, a Nest, pino-pretty or winston header; else the text's."""
        plain = ANSI_BYTES.sub(b"", start) if 27 in start else start
        if plain[:1] == b"{" and self._json:
            record: dict[str, Any] = {}
            for key, value in _RECORD_HEAD.findall(plain):
                with contextlib.suppress(orjson.JSONDecodeError):  # a string with an escape JSON lacks
                    record.setdefault(key.decode(), orjson.loads(value))
            self._level_and_time(record, state, received_at)
            return {key: record[key] for key in _HEAD_KEYS if key in record}
        header = self._read_header(state, plain, received_at) if plain[:1] == b"[" else None
        if header is not None:
            return header[1]
        stamped = self._stamped(state, plain, received_at)
        if stamped is not None:
            return stamped[0]
        head = self._estimated_head(state, received_at)
        head["level"] = text_level(decode(plain), False)
        return head

    # ------------------------------------------------------------------ records

    def _normalize(self, record: dict[str, Any], state: _Stream, received_at: float) -> None:
        """Any JSON object other than a plain pino record: Nest JSON, pino with collisions, others."""
        self._level_and_time(record, state, received_at)
        if "msg" in record:
            msg = record.pop("msg")
            if "message" in record:
                record["original_message"] = record["message"]
            record["message"] = "" if msg is None else render(msg)
        else:
            message = record.get("message")
            record["message"] = "" if message is None else render(message)
        hostname = record.get("hostname")
        if isinstance(hostname, str):
            del record["hostname"]
            if "host" in record and record["host"] != hostname:
                record["original_host"] = record["host"]
            record["host"] = hostname
        if "err" not in record:
            error = record.get("error")
            if isinstance(error, dict) and ("message" in error or "stack" in error):
                record["err"] = error_from_object(record.pop("error"))
            elif isinstance(record.get("stack"), str):
                record["err"] = error_from_stack(record.pop("stack"))
        if "http" not in record:
            http = http_fields(record)
            if http is not None:
                record["http"] = http
        self._common(record, state.const)

    def _level_and_time(self, record: dict[str, Any], state: _Stream, received_at: float) -> None:
        """A record's `level` word (and `level_num`) and RFC 3339 `timestamp`, from whichever keys it states them in."""
        level = record.get("level")
        if isinstance(level, int | float) and not isinstance(level, bool):
            record.setdefault("level_num", level)
            record["level"] = LEVEL_BY_NUM.get(int(level)) or level_from_number(int(level))
        elif isinstance(level, str) and level.lower() in LEVEL_BY_WORD:
            word = level.lower()
            # Nest's JSON (epoch-ms `timestamp`) ranks verbose below debug; winston (ISO times) above it.
            nest = word == "verbose" and type(record.get("timestamp")) is int
            record["level"] = NEST_VERBOSE if nest else LEVEL_BY_WORD[word]
        else:
            stated = level_field(record) if level is None else None
            if isinstance(stated, str) and stated.lower() in LEVEL_BY_WORD:
                record["level"] = LEVEL_BY_WORD[stated.lower()]
            else:
                if level is not None:
                    record["original_level"] = level
                record["level"] = "info"
        ms = None
        if "timestamp" in record:
            ms = epoch_ms(record["timestamp"])
            if ms is None:
                record["original_timestamp"] = record["timestamp"]
        if ms is None:
            for key in _TIME_KEYS:
                if key in record:
                    ms = epoch_ms(record[key])
                    if ms is not None:
                        break
        if ms is None:
            if "original_timestamp" in record or any(key in record for key in _TIME_KEYS):
                self._fallbacks["bad_timestamp"].inc()
            record["timestamp"] = format_ms(state.estimate(received_at))
            record[TIME_ESTIMATED] = True
        else:
            record["timestamp"] = format_ms(state.read(ms, received_at))

    def _common(self, fields: dict[str, Any], const: dict[str, Any]) -> None:
        """host/service/source/stream, keeping a record's own different value as `original_<name>`."""
        if not isinstance(fields.get("host"), str):
            if "host" in fields:
                fields["original_host"] = fields["host"]
            fields["host"] = self.host
        service = fields.get("service")
        for key, value in const.items():
            if key == "service" and self._service is None and isinstance(service, str) and service:
                continue
            if key in fields and fields[key] != value:
                fields["original_" + key] = fields[key]
            fields[key] = value

    # ------------------------------------------------------------------ text

    def _text_line(self, state: _Stream, line: bytes, received_at: float, out: list[Event]) -> None:
        """Route one non-record line: a header opens a group, a continuation joins one, else text."""
        size = len(line) + 1
        if line[-1:] == b"\r":
            line = line[:-1]
        plain = ANSI_BYTES.sub(b"", line) if 27 in line else line
        group = state.group
        if plain[:1] == b"[":
            opened = self._header(state, line, plain, size, received_at, out)
            if opened:
                return
        if CRASH_HEAD.fullmatch(plain):
            self._open(state, _CRASH, line, size, received_at, self._estimated_head(state, received_at), None, out)
            self._count_text()
            return
        if group is not None and (
            group.kind in (_NEST, _PRETTY)
            or (group.kind == _CRASH and not group.done)
            or (group.kind == _TEXT and continues_text(plain, group.lines[0]))
        ):
            if len(group.lines) >= self._max_lines or group.nbytes + size > self._max_bytes:
                head = dict(group.head, continuation=True)
                self._open(state, group.kind, line, size, received_at, head, None, out)
                group = state.group
                assert group is not None
            else:
                group.lines.append(line)
                group.nbytes += size
                group.last_at = received_at
                self.held_bytes += size
            if group.kind == _CRASH and plain.startswith(b"Node.js v"):
                group.done = True
            return
        if not plain.strip():
            self._fallbacks["empty"].inc()
            return
        stamped = self._stamped(state, plain, received_at)
        if stamped is not None:
            self._open(state, _TEXT, line, size, received_at, *stamped, out)
        else:
            self._open(state, _TEXT, line, size, received_at, self._estimated_head(state, received_at), None, out)
        self._count_text()

    def _stamped(self, state: _Stream, plain: bytes, received_at: float) -> tuple[dict[str, Any], str] | None:
        """The head and message of `2026-12-03 15:49:24 error: ...` (winston's printf), else None."""
        stamped = STAMPED_HEAD.fullmatch(decode(plain)) if plain[:1].isdigit() or plain[:1] == b"[" else None
        ms = self._times.stamp(stamped.group(1)) if stamped is not None else None
        if stamped is None or ms is None:
            return None
        head = {
            "timestamp": format_ms(state.second(ms // 1000, received_at)),
            "level": LEVEL_BY_WORD[stamped.group(2).lower()],
        }
        return head, stamped.group(3)

    def _count_text(self) -> None:
        if self._text_reason is not None:
            self._fallbacks[self._text_reason].inc()

    def _header(
        self, state: _Stream, line: bytes, plain: bytes, size: int, received_at: float, out: list[Event]
    ) -> bool:
        """Open a Nest or pino-pretty group when `plain` is one of their header lines."""
        header = self._read_header(state, plain, received_at)
        if header is None:
            return False
        kind, head, message, winston = header
        self._open(state, kind, line, size, received_at, head, message, out)
        if winston:
            assert state.group is not None
            state.group.winston = True
        return True

    def _read_header(
        self, state: _Stream, plain: bytes, received_at: float
    ) -> tuple[int, dict[str, Any], str, bool] | None:
        """A Nest (or nestLike) or pino-pretty header line's group kind, head fields, message, and
        whether nest-winston printed it; None for any other line."""
        match = NEST_HEAD.fullmatch(plain) if self._nest else None
        winston = match is None and self._nest and (match := NEST_LIKE_HEAD.fullmatch(plain)) is not None
        if match is not None:
            pid, stamp, level, context, message = match.group(2, 3, 4, 5, 6)
            stamp_text = "" if stamp is None else stamp.decode("utf-8", "replace")
            head: dict[str, Any] = {"level": LEVEL_BY_WORD[level.decode().lower()] if winston else NEST_LEVELS[level]}
            if pid is not None:
                head["pid"] = int(pid)
            if context is not None:
                head["context"] = decode(context)
            second = self._times.nest(stamp_text)  # None for "" (nestLike without winston's `timestamp()`)
            if second is None:
                if stamp is None:  # nestLike without winston's `timestamp()`
                    head.update(self._estimated_head(state, received_at))
                else:
                    self._bad_stamp(head, stamp_text, state, received_at)
            else:
                head["timestamp"] = format_ms(state.second(second, received_at))
            return _NEST, head, decode(message or b""), winston
        match = PRETTY_HEAD.fullmatch(plain) if self._pretty else None
        if match is not None:
            stamp_text = match.group(1).decode("utf-8", "replace")
            head = {"level": PRETTY_LEVELS[match.group(2)]}
            ms = self._times.time_of_day(stamp_text, received_at)
            if ms is None:
                ms = self._times.stamp(stamp_text)
            if ms is None:
                self._bad_stamp(head, stamp_text, state, received_at)
            else:
                head["timestamp"] = format_ms(state.read(ms, received_at))
            origin = PRETTY_ORIGIN.fullmatch(decode(match.group(3) or b""))
            if origin is not None:
                name, pid, hostname = origin.groups()
                head["pid"] = int(pid)
                if name:
                    head["name"] = name
                if hostname:
                    head["host"] = hostname
            return _PRETTY, head, decode(match.group(4) or b""), False
        return None

    @staticmethod
    def _estimated_head(state: _Stream, received_at: float) -> dict[str, Any]:
        return {"timestamp": format_ms(state.estimate(received_at)), TIME_ESTIMATED: True}

    def _bad_stamp(self, head: dict[str, Any], stamp: str, state: _Stream, received_at: float) -> None:
        """A header whose timestamp cannot be read: kept as `original_timestamp`, the time estimated."""
        head["original_timestamp"] = stamp
        head.update(self._estimated_head(state, received_at))
        self._fallbacks["bad_timestamp"].inc()

    def _open(
        self,
        state: _Stream,
        kind: int,
        line: bytes,
        size: int,
        received_at: float,
        head: dict[str, Any],
        first: str | None,
        out: list[Event],
    ) -> None:
        if state.group is not None:
            out.append(self._close(state))
        state.group = _Group(kind, line, size, received_at, head, first)
        self.held_bytes += size

    def _close(self, state: _Stream) -> Event:
        """Turn the stream's open group into an event and release its held bytes."""
        group = state.group
        assert group is not None
        state.group = None
        self.held_bytes -= group.nbytes
        return self._event(group, state.const)

    def _event(self, group: _Group, const: dict[str, Any]) -> Event:
        """The event of a finished group: its fields, `const` (service, source, stream) and raw."""
        raw = b"\n".join(group.lines)
        texts = [decode(line) for line in group.lines]
        if group.first is not None:
            texts[0] = group.first
        fields = dict(group.head)
        if group.kind == _PRETTY:
            extra, parsed = pretty_body(texts[1:] if group.first is not None else texts)
            lines = extra
            if group.first is not None:
                first = texts[0].rstrip()  # `--singleLine` leaves a space where the fields below begin
                inline = trailing_object(first)  # `--singleLine`'s `message {"k":1}`
                if inline is not None:
                    first, parsed = inline[0], {**inline[1], **parsed}
                lines = [first, *extra]
            for key, value in parsed.items():
                fields["original_" + key if key in fields else key] = value
            fields["message"] = "\n".join(lines)
            if isinstance(parsed.get("hostname"), str):
                fields["host"] = fields.pop("hostname")
            http = http_fields(fields)
            if http is not None and "http" not in fields:
                fields["http"] = http
        else:
            # Trailing blank lines go, and Node's `Node.js vX`: the end of its crash printout (the process died).
            version = None
            while len(texts) > 1:
                if not texts[-1].strip():
                    texts.pop()
                elif version is None and (version := NODE_VERSION.fullmatch(texts[-1])) is not None:
                    fields["node"] = {"version": version.group(1)}
                    fields["level"] = "fatal"
                    texts.pop()
                else:
                    break
            if group.kind == _CRASH and "continuation" not in fields:
                fields["message"], fields["err"] = crash_error(texts)
            else:
                if group.winston:
                    texts = self._winston_meta(fields, texts)
                elif group.kind == _NEST:
                    elapsed = ELAPSED.search(texts[-1])
                    if elapsed is not None:
                        fields["elapsed_ms"] = int(elapsed.group(1))
                        texts[-1] = texts[-1][: elapsed.start()]
                found = split_error(texts)
                if found is None:
                    message = "\n".join(texts)
                else:
                    index, fields["err"] = found
                    if group.kind == _NEST and index > 0 and "elapsed_ms" not in fields:
                        # `error(msg, stack)` with `timestamp: true`: the `+Nms` ends the line before the stack.
                        elapsed = ELAPSED.search(texts[index - 1])
                        if elapsed is not None:
                            fields["elapsed_ms"] = int(elapsed.group(1))
                            texts[index - 1] = texts[index - 1][: elapsed.start()]
                    # A crash's or a thrown error's own line is the message; else what was logged before the stack.
                    if group.kind == _CRASH or index == 0:
                        message = fields["err"]["stack"].split("\n", 1)[0]  # without compact inspect's `{ `
                    else:
                        message = "\n".join(texts[:index])
                    after = texts[index + fields["err"]["stack"].count("\n") + 1 :]
                    while after and not after[0].strip():
                        after = after[1:]
                    if after:
                        message += "\n" + "\n".join(after)
                fields["message"] = message
                if group.kind == _TEXT and "level" not in fields:
                    fields["level"] = text_level(texts[0], found is not None)
            if group.kind == _CRASH:
                fields.setdefault("level", "error")
            fields.setdefault("level", "info")
        self._common(fields, const)
        redactor = self._redactor
        if redactor.enabled and redactor.suspect(raw):
            raw = self._redact_text(fields, raw)
        return Event(fields, raw)

    @staticmethod
    def _winston_meta(fields: dict[str, Any], texts: list[str]) -> list[str]:
        """nestLike's `+Nms` and ` - {meta}` taken off the text into fields; the message lines left.

        nest-winston's `error(msg, stack)` writes `stack: [stack]` and the error's own properties
        as `error`; they become `err`. Other meta keys are fields (`original_<key>` on a collision).
        """
        text = "\n".join(texts)
        elapsed = winston_elapsed(text)
        if elapsed is not None:
            text, fields["elapsed_ms"] = elapsed
        split = nest_like_meta(text)
        if split is None:
            return text.split("\n")
        text, meta = split
        stack = meta.pop("stack", None)
        if isinstance(stack, list):
            stack = next((item for item in stack if isinstance(item, str)), None)
        error = meta.get("error")
        if isinstance(stack, str):
            fields["err"] = error_from_stack(stack)
            if isinstance(error, dict):
                del meta["error"]
                fields["err"].update((key, value) for key, value in error.items() if key not in fields["err"])
        elif isinstance(error, dict) and ("message" in error or "stack" in error):
            fields["err"] = error_from_object(meta.pop("error"))
        for key, value in meta.items():
            fields["original_" + key if key in fields else key] = value
        return text.split("\n")

    def _redact_text(self, fields: dict[str, Any], raw: bytes) -> bytes:
        """Redact a text event's fields, then the same secrets (and the text rules) in its raw lines."""
        secrets = self._redactor.record(fields) or []
        text = raw.decode("utf-8", "surrogateescape")
        redacted = self._redactor.text(text)
        for secret in secrets:
            if secret in redacted:
                redacted = redacted.replace(secret, REDACTED)
            elif secret not in text:
                # Written differently in the raw lines (escaped, coloured): ship the fields instead.
                return orjson.dumps(fields)
        return raw if redacted == text else redacted.encode("utf-8", "surrogateescape")


def build_processor(source: str, config: SourceConfig, *, host: str, redact: RedactConfig) -> Processor:
    """The processor a source feeds its lines to (see the module docstring for the formats)."""
    return Processor(source, config, host=host, redact=redact)
