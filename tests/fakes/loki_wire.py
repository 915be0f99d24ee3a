"""Loki's push wire formats, decoded the way Loki decodes them, for the fake Loki (tests/fakes/loki.py).

Written from Loki's Go sources, not from any client, so that it judges a client independently:
- pkg/loghttp/push/push.go `parsePushRequestBody`: Content-Encoding "", "snappy" (ignored), "gzip"
  (multi-member, Go's gzip.Reader), "deflate" (Go's compress/flate: RAW deflate, no zlib header),
  anything else `Content-Encoding "br" not supported`; Content-Type through mime.ParseMediaType (a
  missing one: `mime: no media type`); "application/json" is JSON, ANY other type is raw-snappy protobuf.
- pkg/loghttp/query.go `LogProtoStream.UnmarshalJSON` and `unmarshalHTTPToLogProtoEntry`: a value is
  [ts, line] or [ts, line, {metadata}], ts and line MUST be JSON strings (jsonparser's
  `Value is string, but can't find closing '"' symbol` otherwise), ts a decimal int64 (no leading zeros),
  metadata values strings; a null entry is skipped, elements past the third are ignored.
- pkg/loghttp/labels.go `LabelSet.String`: the JSON "stream" object becomes `{k="v", ...}` (keys sorted,
  written raw, values Go-quoted), then parsed like a protobuf stream's label string.
- pkg/push/push.proto: PushRequest{streams=1}, StreamAdapter{labels=1 string, entries=2, hash=3},
  EntryAdapter{timestamp=1 google.protobuf.Timestamp{seconds=1, nanos=2}, line=2,
  structuredMetadata=3 LabelPairAdapter{name=1, value=2}, parsed=4}; pkg/util/http.go decodes the body
  with snappy.Decode (the BLOCK format: a framed snappy stream fails with `snappy: corrupt input`).
- pkg/logql/syntax/parser.go `ParseLabels` = Prometheus' ParseMetric (promql/parser/lex.go): names
  `[a-zA-Z_][a-zA-Z0-9_]*` or quoted, values "..", '..' or `..` with Go escapes; empty values are
  dropped. A label string that does not parse fails the WHOLE push (400 `couldn't parse labels: ...`).
  The lexer's messages are reproduced (`1:5: parse error: unexpected character inside braces: '-'`);
  the grammar's are close to Prometheus' but not byte-exact.
"""

from __future__ import annotations

import datetime
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cramjam
import orjson

from tests.fakes.datadog_intake import BadPayload, PayloadTooLarge, inflate

JSON = "application/json"
_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_NOT_A_JSON_STRING = "Value is string, but can't find closing '\"' symbol"  # jsonparser.MalformedStringError
_JSON_PREFIX = "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: "


class WireError(Exception):
    """A push Loki refuses whole before validating anything (400), with Loki's text."""


class BodyTooLarge(WireError):
    """Loki's 413 `request body too large: ...`."""


@dataclass
class PushedEntry:
    ts_ns: int
    line: str
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PushedStream:
    labels: str  # the label string as pushed (protobuf) or as Loki renders a JSON "stream" object
    entries: list[PushedEntry]


def utf8_len(text: str) -> int:
    """Go's len(string): bytes, not characters."""
    return len(text.encode("utf-8", "surrogateescape"))


# ------------------------------------------------------------------ Go's text formats


_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}


def go_quote(text: str, quote: str = '"') -> str:
    """strconv.Quote: Go's escaping, printable Unicode kept as is."""
    out = [quote]
    for char in text:
        if char in (quote, "\\"):
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif ord(char) < 0x80 or 0xDC80 <= ord(char) <= 0xDCFF:  # a control byte, or an undecodable byte
            out.append(f"\\x{ord(char) & 0xFF:02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append(quote)
    return "".join(out)


def go_rune(char: str) -> str:
    """fmt's %q of a rune (strconv.QuoteRune): `'-'`."""
    return go_quote(char, "'")


def rfc3339(ts_ns: int) -> str:
    """time.Time.Format(time.RFC3339) in UTC: whole seconds (truncated), as Loki's validation errors print."""
    return datetime.datetime.fromtimestamp(ts_ns // 1_000_000_000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def go_time(ts_ns: int) -> str:
    """time.Time.String() in UTC, as the ingester's `entry with timestamp %s ignored` prints it."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return text + " +0000 UTC"


def datasize(n: int) -> str:
    """c2h5oh/datasize ByteSize.String(): the largest binary unit that divides exactly (3145728 -> 3MB)."""
    if n == 0:
        return "0B"
    for exponent, unit in ((6, "EB"), (5, "PB"), (4, "TB"), (3, "GB"), (2, "MB"), (1, "KB")):
        if n % (1024**exponent) == 0:
            return f"{n // 1024**exponent}{unit}"
    return f"{n}B"


def render_labels(pairs: list[tuple[str, str]]) -> str:
    """Prometheus labels.String(): `{a="1", b="2"}`, a name that is not a legacy identifier quoted."""
    return (
        "{"
        + ", ".join(
            f"{name if _LEGACY_NAME.match(name) else go_quote(name)}={go_quote(value)}" for name, value in pairs
        )
        + "}"
    )


# ------------------------------------------------------------------ label strings (Prometheus' ParseMetric)


class LabelSyntaxError(Exception):
    pass


_SPACE = " \t\n\r"
_ESCAPED = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _is_alpha(char: str) -> bool:
    return char == "_" or "a" <= char <= "z" or "A" <= char <= "Z"


class _LabelLexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, pos: int, message: str) -> LabelSyntaxError:
        line = 1 + self.text.count("\n", 0, pos)
        column = pos - self.text.rfind("\n", 0, pos)
        return LabelSyntaxError(f"{line}:{column}: parse error: {message}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def identifier(self, extra: str = "") -> str:
        start = self.pos
        while self.pos < len(self.text) and (
            _is_alpha(self.text[self.pos]) or self.text[self.pos].isdigit() or self.text[self.pos] in extra
        ):
            self.pos += 1
        return self.text[start : self.pos]

    def string(self) -> str:
        """A quoted string at self.pos, unquoted (Go's strconv.Unquote rules)."""
        start, quote = self.pos, self.text[self.pos]
        self.pos += 1
        if quote == "`":
            end = self.text.find("`", self.pos)
            if end < 0:
                raise self.fail(start, "unterminated raw string")
            self.pos = end + 1
            return self.text[start + 1 : end]
        out: list[str] = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.fail(start, "unterminated quoted string")
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            out.append(self.escape(start, quote))

    def escape(self, start: int, quote: str) -> str:
        char = self.peek()
        self.pos += 1
        if char == quote or char in _ESCAPED:
            return _ESCAPED.get(char, char)
        digits = {"x": 2, "u": 4, "U": 8}.get(char)
        base = 16
        if digits is None and "0" <= char <= "7":
            digits, base, self.pos = 3, 8, self.pos - 1
        if digits is None:
            raise self.fail(start, f"unknown escape sequence U+{ord(char) if char else 0:04X}")
        code = self.text[self.pos : self.pos + digits]
        try:
            value = int(code, base) if len(code) == digits else -1
        except ValueError:
            value = -1
        if value < 0 or value > 0x10FFFF or 0xD800 <= value < 0xE000:
            raise self.fail(start, f"invalid escape sequence in {code!r}")
        self.pos += digits
        return chr(value)


class _Token(NamedTuple):
    kind: str  # "identifier", "string", or the punctuation itself: "{", "}", ",", "=", "=~", "!=", "!~"
    value: str  # the name, or the string unquoted
    raw: str
    pos: int

    def desc(self) -> str:
        """Prometheus' Item.desc(): `identifier "app"`, `string "\"x\""`, `","`."""
        if self.kind == "identifier":
            return f"identifier {go_quote(self.value)}"
        if self.kind == "string":
            return "string " + (go_quote(self.raw[:10]) + "..." if len(self.raw) > 10 else go_quote(self.raw))
        return go_quote(self.kind)


def _next_token(lex: _LabelLexer) -> _Token:
    """The next token inside braces, or the lexer's error (lexInsideBraces)."""
    lex.skip_space()
    start, char = lex.pos, lex.peek()
    if not char:
        raise lex.fail(start, "unexpected end of input inside braces")
    if _is_alpha(char):
        name = lex.identifier()
        return _Token("identifier", name, name, start)
    if char in "\"'`":
        value = lex.string()
        return _Token("string", value, lex.text[start : lex.pos], start)
    if char in ",}":
        lex.pos += 1
        return _Token(char, char, char, start)
    if char in "=!":
        pair = lex.text[start : start + 2]
        if pair in ("=~", "!=", "!~"):
            lex.pos += 2
            return _Token(pair, pair, pair, start)
        if char == "!":
            raise lex.fail(start, f"unexpected character after '!' inside braces: {go_rune(pair[1:] or ' ')}")
        lex.pos += 1
        return _Token("=", "=", "=", start)
    if char == "{":
        raise lex.fail(start, "unexpected left brace '{'")
    raise lex.fail(start, f"unexpected character inside braces: {go_rune(char)}")


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Prometheus' ParseMetric as Loki's syntax.ParseLabels calls it: the pairs, sorted by name (duplicates
    kept: validation reports them), empty values dropped. Raises LabelSyntaxError with Prometheus' text."""
    lex = _LabelLexer(text)
    pairs: list[tuple[str, str]] = []
    lex.skip_space()
    if _is_alpha(lex.peek()) or lex.peek() == ":":
        pairs.append(("__name__", lex.identifier(extra=":")))
        lex.skip_space()
    if lex.peek() == "{":
        lex.pos += 1
        _label_set(lex, pairs)
        lex.skip_space()
    if lex.pos < len(text):
        raise lex.fail(lex.pos, f"unexpected character: {go_rune(text[lex.pos])}")
    pairs.sort(key=lambda pair: pair[0])
    return [(name, value) for name, value in pairs if value]


def _label_set(lex: _LabelLexer, pairs: list[tuple[str, str]]) -> None:
    """The generated parser's label_set rules, from after "{" to "}" (a trailing comma allowed)."""
    token = _next_token(lex)
    while token.kind != "}":
        if token.kind not in ("identifier", "string"):
            raise lex.fail(token.pos, f'unexpected {token.desc()} in label set, expected identifier or "}}"')
        after = _next_token(lex)
        if after.kind == "=":
            value = _next_token(lex)
            if value.kind != "string":
                raise lex.fail(value.pos, f"unexpected {value.desc()} in label set, expected string")
            pairs.append((token.value, value.value))
            after = _next_token(lex)
        elif token.kind == "string" and after.kind in (",", "}"):
            pairs.append(("__name__", token.value))  # {"metric name"}
        else:
            raise lex.fail(after.pos, f'unexpected {after.desc()} in label set, expected "="')
        if after.kind == "}":
            return
        if after.kind != ",":
            raise lex.fail(after.pos, f'unexpected {after.desc()} in label set, expected "," or "}}"')
        token = _next_token(lex)


# ------------------------------------------------------------------ the body


def decode_body(
    raw: bytes, content_type: str | None, content_encoding: str | None, max_bytes: int
) -> tuple[list[PushedStream], int]:
    """The push's streams and its size fully decoded (JSON text, or protobuf message out of its snappy);
    or WireError/BodyTooLarge with the text Loki answers."""
    encoding = content_encoding or ""
    if encoding == "gzip":
        try:
            body = inflate(raw, "gzip", max_bytes)
        except PayloadTooLarge:
            raise BodyTooLarge(
                f"request body too large: decompressed message size too large than max ({max_bytes + 1} vs {max_bytes})"
            ) from None
        except BadPayload as exc:
            raise WireError("gzip: invalid header" if "not gzip" in str(exc) else "unexpected EOF") from None
    elif encoding == "deflate":
        body = _inflate_raw(raw, max_bytes)
    elif encoding in ("", "snappy"):
        body = raw
    else:
        raise WireError(f"Content-Encoding {go_quote(encoding)} not supported")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if not media_type:
        raise WireError("mime: no media type")
    if media_type == JSON:
        return decode_json(body), len(body)
    return decode_protobuf(body, max_bytes)


def _inflate_raw(raw: bytes, max_bytes: int) -> bytes:
    """Go's compress/flate reader: a raw DEFLATE stream (a zlib-wrapped body is corrupt input to it)."""
    inflater = zlib.decompressobj(-15)
    try:
        body = inflater.decompress(raw, max_bytes + 1)
    except zlib.error:
        raise WireError("flate: corrupt input before offset 0") from None
    if len(body) > max_bytes:
        raise BodyTooLarge(
            f"request body too large: decompressed message size too large than max ({len(body)} vs {max_bytes})"
        )
    if not inflater.eof:
        raise WireError("unexpected EOF")
    return body


# ------------------------------------------------------------------ JSON


def _json_fail(message: str) -> WireError:
    return WireError(_JSON_PREFIX + message)


def decode_json(body: bytes) -> list[PushedStream]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"loghttp.PushRequest: ReadObject: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError("loghttp.PushRequest: ReadObjectCB: expect { or n")
    streams = doc.get("streams")
    if streams is None:
        return []
    if not isinstance(streams, list):
        raise WireError("loghttp.PushRequest.Streams: decode slice: expect [ or n")
    return [_json_stream(stream) for stream in streams if stream is not None]


def _json_stream(stream: Any) -> PushedStream:
    if not isinstance(stream, dict):
        raise _json_fail("Value looks like object, but can't find closing '}' symbol")
    labels = stream.get("stream") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise _json_fail(_NOT_A_JSON_STRING)
    rendered = "{" + ", ".join(f"{name}={go_quote(labels[name])}" for name in sorted(labels)) + "}"
    values = stream.get("values") or []
    if not isinstance(values, list):
        raise _json_fail("Value is array, but can't find closing ']' symbol")
    return PushedStream(rendered, [_json_entry(value) for value in values if value is not None])


def _json_entry(value: Any) -> PushedEntry:
    if not isinstance(value, list):
        raise _json_fail("Value is array, but can't find closing ']' symbol")
    if (value and not isinstance(value[0], str)) or (len(value) > 1 and not isinstance(value[1], str)):
        raise _json_fail(_NOT_A_JSON_STRING)  # a numeric timestamp lands here: the whole push fails
    entry = PushedEntry(_json_ts(value[0]) if value else 0, value[1] if len(value) > 1 else "")
    if len(value) > 2:
        metadata = value[2]
        if not isinstance(metadata, dict):
            raise _json_fail("Value looks like object, but can't find closing '}' symbol")
        if not all(isinstance(v, str) for v in metadata.values()):
            raise _json_fail(_NOT_A_JSON_STRING)
        entry.metadata = list(metadata.items())
    return entry


_GO_INT = re.compile(r"-?(0|[1-9][0-9]*)\Z")


def _json_ts(text: str) -> int:
    """jsonparser.ParseInt: decimal, optional '-', no '+', no leading zeros, int64."""
    if not _GO_INT.match(text):
        raise _json_fail("Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol")
    ts = int(text)
    if not -(2**63) <= ts < 2**63:
        raise _json_fail("Value is number, but overflowed while parsing")
    return ts


# ------------------------------------------------------------------ protobuf (hand-read, no generated code)


def decode_protobuf(body: bytes, max_bytes: int) -> tuple[list[PushedStream], int]:
    """A raw-snappy logproto.PushRequest: its streams and the message's size."""
    try:
        size, _ = _varint(body, 0)  # the block's length preamble, read first as snappy.DecodedLen does
    except WireError:
        raise WireError("snappy: corrupt input") from None
    if size > max_bytes:
        raise BodyTooLarge(
            f"request body too large: decompressed message size too large than max ({size} vs {max_bytes})"
        )
    try:
        message = bytes(cramjam.snappy.decompress_raw(body))
    except Exception:
        raise WireError("snappy: corrupt input") from None
    streams: list[PushedStream] = []
    for number, value in _fields(message, "PushRequest", {1: 2, 2: 2}):
        if number == 1:
            streams.append(_proto_stream(_bytes(value)))
    return streams, len(message)


def _proto_stream(message: bytes) -> PushedStream:
    stream = PushedStream("", [])
    for number, value in _fields(message, "StreamAdapter", {1: 2, 2: 2, 3: 0}):
        if number == 1:
            stream.labels = _text(value)
        elif number == 2:
            stream.entries.append(_proto_entry(_bytes(value)))
    return stream


def _proto_entry(message: bytes) -> PushedEntry:
    entry = PushedEntry(0, "")
    for number, value in _fields(message, "EntryAdapter", {1: 2, 2: 2, 3: 2, 4: 2}):
        if number == 1:
            entry.ts_ns = _timestamp(_bytes(value))
        elif number == 2:
            entry.line = _text(value)
        elif number == 3:
            pair = dict(_fields(_bytes(value), "LabelPairAdapter", {1: 2, 2: 2}))
            entry.metadata.append((_text(pair.get(1, b"")), _text(pair.get(2, b""))))
    return entry


def _timestamp(message: bytes) -> int:
    seconds = nanos = 0
    for number, value in _fields(message, "Timestamp", {1: 0, 2: 0}):
        number_value = _signed(value)
        if number == 1:
            seconds = number_value
        elif number == 2:
            nanos = number_value
    if not 0 <= nanos < 1_000_000_000:
        raise WireError(f"timestamp: seconds:{seconds} nanos:{nanos}: nanos not in range [0, 1e9)")
    if not -62_135_596_800 <= seconds < 253_402_300_800:
        raise WireError(f"timestamp: seconds:{seconds} nanos:{nanos}: outside the range 0001-01-01 .. 10000-01-01")
    return seconds * 1_000_000_000 + nanos


def _bytes(value: int | bytes) -> bytes:
    assert isinstance(value, bytes)
    return value


def _text(value: int | bytes) -> str:
    return _bytes(value).decode("utf-8", "surrogateescape")  # Go strings hold any bytes


def _signed(value: int | bytes) -> int:
    assert isinstance(value, int)
    return value - (1 << 64) if value >= 1 << 63 else value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # one byte: tags and short lengths, most varints of a push
        return buf[pos], pos + 1
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("unexpected EOF")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & ((1 << 64) - 1), pos
        shift += 7
        if shift >= 70:
            raise WireError("proto: integer overflow")


def _fields(buf: bytes, message: str, wire_types: dict[int, int]) -> list[tuple[int, int | bytes]]:
    """(field number, value) of each field, varints as ints and length-delimited as bytes; unknown fields
    skipped, a known field with the wrong wire type refused (as gogoproto's generated Unmarshal does)."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number <= 0:
            raise WireError(f"proto: {message}: illegal tag {number} (wire type {wire})")
        if number in wire_types and wire_types[number] != wire:
            raise WireError(f"proto: wrong wireType = {wire} for field {number} of {message}")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise WireError("unexpected EOF")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise WireError("unexpected EOF")
            continue
        else:
            raise WireError(f"proto: {message}: illegal wireType {wire}")
        fields.append((number, value))
    return fields
