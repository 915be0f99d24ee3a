"""Line classes of the text formats and what a finished multi-line group says.

Nest's ConsoleLogger, pino-pretty and Node's own crash printout each start an event with a
recognisable line; everything else is a continuation or plain text. The regexes run on the
line with ANSI colours removed (Nest and pino-pretty colour parts of the header).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shipper.parsing.records import LEVEL_BY_WORD

ANSI_BYTES = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")

# `[Nest] 31830  - 11/23/2026, 12:47:50 AM     LOG [NestFactory] Starting Nest application...`
# (the app name in the brackets is configurable, the level is right-aligned to 7 characters)
NEST_HEAD = re.compile(
    rb"\[([^\]\s]{1,40})\] (\d{1,10})  - (.{1,60}?) +(LOG|ERROR|WARN|DEBUG|VERBOSE|FATAL) (?:\[([^\]]*)\] ?)?(.*)",
    re.DOTALL,
)
NEST_LEVELS: dict[bytes, str] = {
    b"LOG": "info",
    b"ERROR": "error",
    b"WARN": "warn",
    b"DEBUG": "debug",
    b"VERBOSE": "trace",
    b"FATAL": "fatal",
}

# `[00:47:26.845] INFO (30917): message`; the parentheses may read `name/pid on host`, or be absent.
PRETTY_HEAD = re.compile(
    rb"\[(\d[^\]]{4,38})\] (TRACE|DEBUG|INFO|WARN|ERROR|FATAL|USERLVL)(?: \(([^)]*)\))?:(?: (.*))?",
    re.DOTALL,
)
PRETTY_LEVELS: dict[bytes, str] = {
    b"TRACE": "trace",
    b"DEBUG": "debug",
    b"INFO": "info",
    b"WARN": "warn",
    b"ERROR": "error",
    b"FATAL": "fatal",
    b"USERLVL": "info",
}
PRETTY_ORIGIN = re.compile(r"(?:(.*)/)?(\d+)(?: on (.*))?")

# nest-winston's `utilities.format.nestLike()`: `[MyApp] 11880  12/3/2026, 3:49:25 PM   ERROR [Ctx] msg - {meta} +2ms`.
# The groups are NEST_HEAD's; the pid, time and context are optional (`processId`, winston's
# `timestamp()` and the context are), the level is any winston level upper-cased (`info` prints `LOG`).
# The name never starts with a digit: that is pino-pretty's `[15:49:24.123] INFO (42): ...`.
NEST_LIKE_HEAD = re.compile(
    rb"\[([^\]\s\d][^\]\s]{0,39})\] (?:(\d{1,10}) +)?(?:(\S.{0,58}?) +)?"
    rb"(LOG|INFO|ERROR|WARN|WARNING|DEBUG|VERBOSE|HTTP|SILLY|FATAL|CRIT|ALERT|EMERG|NOTICE)"
    rb"(?: \[([^\]]*)\])?(?: (.*))?",
    re.DOTALL,
)
# The ` - {meta}` nestLike appends: JSON, or util.inspect output when `prettyPrint` (its default).
NEST_LIKE_META = " - {"
# winston's `format.ms()` suffix (the `ms` package: `+12ms`, `+3s`, `+2m`, `+1h`, `+1d`).
WINSTON_ELAPSED = re.compile(r" \+(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

# A text line that starts with a date-time and a level word: winston's common
# `printf(({timestamp, level, message}) => `${timestamp} ${level}: ${message}`)`, and the same with
# brackets (`[2026-12-03T15:49:24.123Z] [ERROR] ...`).
STAMPED_HEAD = re.compile(
    r"\[?(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?: ?(?:Z|[+-]\d\d:?\d\d))?)\]? +"
    r"\[?(trace|debug|info|notice|warn|warning|error|err|fatal|critical|crit|alert|emerg|panic|http|verbose|silly)\]?"
    r"(?::| -)? ?(.*)",
    re.IGNORECASE | re.DOTALL,
)

# Node's uncaught-exception printout starts with the location of the throw: `file:///app/x.js:82`,
# `/app/x.js:82`, `node:internal/...:12`, or `<anonymous_script>:1` (JSON.parse of bad input).
CRASH_HEAD = re.compile(rb"(?:(?:file://)?(?:/|node:|[A-Za-z]:[\\/])\S*|<anonymous_script>):\d+")
# ... and ends with the version of the Node.js that died: `Node.js v20.20.2`.
NODE_VERSION = re.compile(r"Node\.js (v\d+\.\d+\.\d+\S*)")
# The caret Node prints under the source line (`^`, one per column of a range), aligned with it.
_CARET = re.compile(r"[ \t]*\^+[ \t]*")
# What Node prints after a thrown value that is not an Error (then a blank line, or its frames).
_NON_ERROR_TAIL = ("(Use `node --trace-uncaught ...`", "Thrown at:")
# An Error printed without frames (`Error.stackTraceLimit = 0`, a replaced `stack`): `[Error: message]`.
_FRAMELESS_ERROR = re.compile(r"\[([A-Z_$][\w$.]*)(?: \[[\w-]+\])?(?:: (.*))?\]", re.DOTALL)
# V8's own printout under `--abort-on-uncaught-exception`: `Uncaught Error: x`, a blank line, `FROM`,
# then one frame per line at column 0 (`fn (/app/x.js:2:3)`, `/app/x.js:1:1`).
_V8_ABORT_LINE = re.compile(rb"FROM|\S[^\n]* \([^()\s]+:\d+:\d+\)|\S+:\d+:\d+")

ELAPSED = re.compile(r" \+(\d+)ms$")
_FRAME = re.compile(r"\s+(?:at \S|\.\.\. \d+ (?:more|lines))")
_ERROR_HEAD = re.compile(r"(?:Uncaught |\{ )?([A-Z_$][\w$.]*)(?: \[[\w-]+\])?(?::\s?(.*))?")
_LEVEL_WORD = re.compile(
    r"\W{0,3}(trace|debug|info|notice|warn|warning|error|err|fatal|critical|crit|panic)\b", re.IGNORECASE
)
_WORDS = LEVEL_BY_WORD  # the words _LEVEL_WORD can match are all in it
_TEXT_CONTINUATIONS = (b" ", b"\t", b"}", b"]", b")", b"Node.js v", b"caused by:", b"Caused by:", b"[cause]")


def continues_text(plain: bytes, first: bytes) -> bool:
    """Whether a line belongs to the plain-text event whose first line is `first` (frames,
    inspect output, blanks; V8's `FROM` frames after its `Uncaught ...`)."""
    return (
        not plain.strip()
        or plain.startswith(_TEXT_CONTINUATIONS)
        or (first.startswith(b"Uncaught ") and _V8_ABORT_LINE.fullmatch(plain) is not None)
    )


def decode(line: bytes) -> str:
    """Text of a line for fields: ANSI removed, invalid UTF-8 replaced."""
    if 27 in line:
        line = ANSI_BYTES.sub(b"", line)
    return line.decode("utf-8", "replace")


def split_error(lines: list[str]) -> tuple[int, dict[str, Any]] | None:
    """Find `Type: message` followed by stack frames: (its index, err {type, message, stack})."""
    count = len(lines)
    for index, line in enumerate(lines):
        match = _ERROR_HEAD.fullmatch(line)
        if match is None:
            continue
        # The message may span a few lines before the first frame.
        for ahead in range(index + 1, min(index + 6, count)):
            if _FRAME.match(lines[ahead]):
                end = ahead
                while end < count and lines[end].strip():
                    end += 1
                stack = "\n".join([line.removeprefix("{ "), *lines[index + 1 : end]])  # compact inspect: `{ Error: x`
                message = "\n".join([match.group(2) or "", *lines[index + 1 : ahead]]).strip("\n")
                return index, {"type": match.group(1), "message": message, "stack": stack}
            if not lines[ahead].strip():
                break
    return None


def crash_error(texts: list[str]) -> tuple[str, dict[str, Any]]:
    """The message and `err` of Node's uncaught-exception printout (lines without colours, its
    `Node.js vX` line taken off). `err` holds the printout's every line: `location` (where the
    value was thrown), `source` (the source line and the caret under it, aligned as printed),
    `stack` (all Node printed for the thrown value, from its first line on), and the `type` and
    `message` of an Error; a thrown value that is no Error (`throw 'x'`) has only its text as
    `message`. The event's message is the thrown value's first line (`Error: message`)."""
    err: dict[str, Any] = {"location": texts[0]}
    rest = texts[1:]
    caret = next((i for i, text in enumerate(rest[:3]) if _CARET.fullmatch(text)), None)
    if caret is not None:
        err["source"] = "\n".join(rest[: caret + 1])
        rest = rest[caret + 1 :]
    while rest and not rest[0].strip():
        rest = rest[1:]
    if not rest:  # cut short before the thrown value
        return texts[0], err
    err["stack"] = "\n".join(rest)
    found = split_error(rest)
    if found is not None:
        error = found[1]
        err["type"], err["message"] = error["type"], error["message"]
        return error["stack"].split("\n", 1)[0], err
    end = next((i for i, text in enumerate(rest) if text.startswith(_NON_ERROR_TAIL)), len(rest))
    value = "\n".join(rest[:end])
    frameless = _FRAMELESS_ERROR.fullmatch(value)
    if frameless is None:
        err["message"] = value
        return value.split("\n", 1)[0], err
    err["type"], err["message"] = frameless.group(1), frameless.group(2) or ""
    return value[1:-1].split("\n", 1)[0], err  # the error's own line, as its `stack` reads


def text_level(first: str, has_error: bool) -> str:
    """Level of a plain-text event: a leading level word, `Warning:`, or an error with a stack."""
    match = _LEVEL_WORD.match(first)
    if match is not None:
        return _WORDS[match.group(1).lower()]
    head = _ERROR_HEAD.fullmatch(first)
    if has_error or (head is not None and head.group(1).endswith(("Error", "Exception"))):
        return "error"
    if "Warning:" in first:
        return "warn"
    return "info"


_FIELD = re.compile(r"    ([^\s:][^:]*?): (.*)")
_STRING_KEY = re.compile(r'(\s*)("(?:[^"\\]|\\.)*"):')


def pretty_body(lines: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split pino-pretty continuation lines into extra message lines and the record's fields."""
    extra: list[str] = []
    fields: dict[str, Any] = {}
    index, count = 0, len(lines)
    while index < count:
        line = lines[index]
        match = _FIELD.fullmatch(line)
        if match is None:
            extra.append(line)
            index += 1
            continue
        key, value = match.groups()
        if value in ("{", "["):
            close = "    " + ("}" if value == "{" else "]")
            end = index + 1
            while end < count and lines[end] != close:
                end += 1
            fields[key] = _block([value, *lines[index + 1 : end], close.strip()])
            index = end + 1
        else:
            try:
                fields[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                fields[key] = value
            index += 1
    return extra, fields


def _block(block: list[str]) -> Any:
    """A pretty-printed JSON block; multi-line strings (an expanded `stack`) are put back in quotes."""
    try:
        return orjson.loads("\n".join(block))
    except orjson.JSONDecodeError:
        pass
    out: list[str] = []
    index, count = 0, len(block)
    while index < count:
        line = block[index]
        match = _STRING_KEY.fullmatch(line)
        if match is None:
            out.append(line)
            index += 1
            continue
        indent = len(match.group(1))
        index += 1
        body: list[str] = []
        while index < count and (not block[index].strip() or len(block[index]) - len(block[index].lstrip()) > indent):
            body.append(block[index])
            index += 1
        cut = indent + 4
        value = "\n".join(part[cut:] if part[:cut].isspace() else part.strip() for part in body)
        comma = "," if index < count and block[index].lstrip().startswith('"') else ""
        out.append(f"{match.group(1)}{match.group(2)}: {orjson.dumps(value).decode()}{comma}")
    try:
        return orjson.loads("\n".join(out))
    except orjson.JSONDecodeError:
        return "\n".join(block)


def trailing_object(text: str) -> tuple[str, dict[str, Any]] | None:
    """`message {"k":1}` (pino-pretty `--singleLine`) split into the message and the JSON object's fields."""
    if not text.endswith("}"):
        return None
    start = text.find(' {"')
    while start >= 0:
        try:
            fields = orjson.loads(text[start + 1 :])
        except orjson.JSONDecodeError:
            start = text.find(' {"', start + 1)
            continue
        return (text[:start], fields) if type(fields) is dict else None
    return None


# util.inspect output (Nest's `json: true` with colours, nest-winston's `prettyPrint` meta): the
# tokens of JS object literals, plus the placeholders inspect prints for what it does not expand.
_INSPECT_TOKEN = re.compile(
    r"""\s*(?:
    (?P<special>\[(?:Object|Array|Circular\ \*\d+|Getter|Setter|Getter/Setter|Function[^\]]*|class\ [^\]]*)\]
        |<ref\ \*\d+>)
    |(?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)
    |(?P<num>-?(?:\d[\d_]*(?:\.\d+)?(?:e[+-]?\d+)?n?|Infinity))
    |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`)
    |(?P<word>[A-Za-z_$][\w$]*)
    |(?P<punct>[{}\[\],:+])
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_WORD_VALUES: dict[str, Any] = {"true": True, "false": False, "null": None, "undefined": None}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) > 1:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, code)


class _Inspect:
    """A recursive-descent reader of one util.inspect value; ValueError when the text is anything else."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos, end = 0, len(text.rstrip())
        while pos < end:
            match = _INSPECT_TOKEN.match(text, pos)
            if match is None or match.lastgroup is None:
                raise ValueError(pos)
            self.tokens.append((match.lastgroup, match.group(match.lastgroup)))
            pos = match.end()
        self.index = 0

    def next(self) -> tuple[str, str]:
        if self.index >= len(self.tokens):
            raise ValueError("end")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def peek(self) -> str:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else ""

    def value(self) -> Any:
        kind, text = self.next()
        if kind == "special" and text.startswith("<ref"):
            kind, text = self.next()
        if text == "{":
            return self.entries()
        if text == "[":
            return self.items()
        if kind == "str":
            value = _ESCAPE.sub(_unescape, text[1:-1])
            while self.peek() == "+":  # a long string printed as 'part\n' + 'part'
                self.next()
                kind, text = self.next()
                if kind != "str":
                    raise ValueError(text)
                value += _ESCAPE.sub(_unescape, text[1:-1])
            return value
        if kind == "num":
            number = text.replace("_", "").rstrip("n")
            return float(number) if any(c in number for c in ".eI") else int(number)
        if kind == "word":
            if text in _WORD_VALUES:
                return _WORD_VALUES[text]
            if self.peek() == "{":  # a class instance: `Foo { a: 1 }`
                return self.value()
            raise ValueError(text)
        if kind in ("special", "date"):
            return text
        raise ValueError(text)

    def entries(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.peek() != "}":
            kind, key = self.next()
            if kind == "str":
                key = _ESCAPE.sub(_unescape, key[1:-1])
            elif kind not in ("word", "num"):
                raise ValueError(key)
            if self.next()[1] != ":":
                raise ValueError(key)
            out[key] = self.value()
            if self.peek() == ",":
                self.next()
        self.next()
        return out

    def items(self) -> list[Any]:
        out: list[Any] = []
        while self.peek() != "]":
            out.append(self.value())
            if self.peek() == ",":
                self.next()
        self.next()
        return out


def inspect_object(text: str) -> dict[str, Any] | None:
    """The object util.inspect printed as `text` (ANSI already removed), None when it is not one."""
    try:
        reader = _Inspect(text)
        value = reader.value()
    except (ValueError, IndexError, OverflowError):
        return None
    return value if type(value) is dict and reader.index == len(reader.tokens) else None


def winston_elapsed(text: str) -> tuple[str, int] | None:
    """`message +3s` (winston's `format.ms()`) split into the message and the milliseconds."""
    match = WINSTON_ELAPSED.search(text)
    if match is None:
        return None
    return text[: match.start()], int(match.group(1)) * _UNIT_MS[match.group(2)]


def nest_like_meta(text: str) -> tuple[str, dict[str, Any]] | None:
    """`message - {meta}` (nestLike) split into the message and the meta object (JSON or util.inspect)."""
    start = text.find(NEST_LIKE_META)
    while start >= 0:
        body = text[start + 3 :]
        try:
            meta = orjson.loads(body)
        except orjson.JSONDecodeError:
            meta = inspect_object(body)
        if type(meta) is dict:
            return text[:start], meta
        start = text.find(NEST_LIKE_META, start + 1)
    return None
