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

# Node's uncaught-exception printout starts with `file:///app/x.js:82`, `/app/x.js:82` or `node:internal/...:12`.
CRASH_HEAD = re.compile(rb"(?:file://)?(?:/|node:|[A-Za-z]:[\\/])\S*:\d+")

ELAPSED = re.compile(r" \+(\d+)ms$")
_FRAME = re.compile(r"\s+(?:at \S|\.\.\. \d+ (?:more|lines))")
_ERROR_HEAD = re.compile(r"(?:Uncaught )?([A-Z_$][\w$.]*)(?: \[[\w-]+\])?(?::\s?(.*))?")
_LEVEL_WORD = re.compile(
    r"\W{0,3}(trace|debug|info|notice|warn|warning|error|err|fatal|critical|crit|panic)\b", re.IGNORECASE
)
_WORDS = LEVEL_BY_WORD  # the words _LEVEL_WORD can match are all in it
_TEXT_CONTINUATIONS = (b" ", b"\t", b"}", b"]", b")", b"Node.js v", b"caused by:", b"Caused by:", b"[cause]")


def continues_text(plain: bytes) -> bool:
    """Whether a line belongs to the plain-text event before it (frames, inspect output, blanks)."""
    return not plain.strip() or plain.startswith(_TEXT_CONTINUATIONS)


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
                stack = "\n".join(lines[index:end])
                message = "\n".join([match.group(2) or "", *lines[index + 1 : ahead]]).strip("\n")
                return index, {"type": match.group(1), "message": message, "stack": stack}
            if not lines[ahead].strip():
                break
    return None


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
