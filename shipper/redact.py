"""Secret and PII redaction, applied by the parsers before an event leaves the process.

Most lines hold no secret, so a prefilter decides which records are walked at all. It runs over
a whole chunk of lines at once, because Python's per-call overhead, not the scanning, is what
costs. It looks for the trigger words some rule needs in any case and with any `-` or `_` between
their letters (a key's rule is judged on its name without them: `pass_word` is a password
field), for Stripe's `_live_`/`_test_` as written, and for `@` (URL passwords, emails; `+` too
with phones). Only lines with a hit are walked field by field. The compiled scanner
(shipper/_speedups.c `trigger_lines`) does it in one pass. Its Python twin: one
`bytes.translate` drops `-` and `_`, lowercases the text and turns each letter that some trigger
word cannot do without (the `z` of authorization, the `k` of cookie/token/key, the `w` of
password, the `b` of bearer/sbp, capital `J` of a JWT and `S` of an AWS `ASIA` id) into byte
0x80 and `@` into 0x81; then one regex with the literal prefix 0x80 checks the trigger words
around each anchor (random ids such as pino's base-36 `req-k7` hold these letters too), a plain
search finds `secret`, the one trigger word without a rare letter, and two more the Stripe
markers. Property tests check, for both, that the prefilter never passes a line that some rule
would change.

Rules (metric label in brackets): header values of Authorization/Proxy-Authorization/Cookie/
Set-Cookie/X-Api-Key at any depth and in any case [header]; values of fields named like
password/secret/token/api key [secret_field]; 32-hex values in key-ish fields [datadog_api_key];
`Bearer x` [bearer]; JWTs [jwt]; `sb_secret_`/`sbp_` [supabase]; `sk_/rk_ live/test` [stripe];
AWS `AKIA`/`ASIA` ids [aws]; `scheme://user:PASS@` [url_password]; `?password=&token=&key=`
[query_secret]; `password: x` / `token=x` in free text [secret_kv]; optional [email], [phone];
configured field paths [field] and patterns [their name]. pino's own `[Redacted]` is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from shipper.speedups import SPEEDUPS
from shipper.tally import redactions

if TYPE_CHECKING:
    from shipper.config import RedactConfig

REDACTED = "[REDACTED]"
_ALREADY = ("[REDACTED]", "[Redacted]")  # ours, and pino's own `redact` marker
_ALREADY_PREFIX = ("[REDACTED", "[Redacted")  # what a value pattern may capture of them

# Anchors: bytes the prefilter table maps to 0x80. Both cases of z/k/w/b are anchors; only the
# capital of J (`eyJ`) and S (`ASIA`, `Secret`), since lowercase j/s are everywhere.
_ANCHORS = b"zZkKwWbBJS"
# Separators the prefilter ignores inside trigger words (the table's translate drops them).
_SEPARATORS = b"-_"
# Trigger words whose underscores are part of them: searched for as written.
_STRIPE = (b"_live_", b"_test_")
# Every trigger word some rule needs (lowercase `secret` is searched for on its own).
_TRIGGERS = (
    "authorization", "cookie", "token", "key", "akia", "asia", "password", "passwd", "pwd", "bearer", "eyJ",
    "sbp", "secret",
)  # fmt: skip


def _confirm_pattern() -> re.Pattern[bytes]:
    """One regex with the literal prefix 0x80 that finds any trigger word around an anchor.

    A word is matched at one of its anchor letters: the rest of the word first (so the regex
    engine skips a branch on its first byte), then a look-behind over the whole word; each letter
    is written as it can read after translation (0x80 where it is an anchor in that case).
    """

    def reads(char: str) -> str:
        lower, upper = char.lower().encode(), char.upper().encode()
        if char == "J" or lower in (b"z", b"k", b"w", b"b"):
            return r"\x80"
        if upper in (b"J", b"S"):
            return rf"[{char}\x80]"
        return re.escape(char)

    branches = []
    for word in _TRIGGERS:
        # Prefer a letter that is an anchor in both cases; else the capital of j/s.
        always = [i for i, char in enumerate(word) if reads(char) == r"\x80"]
        index = always[0] if always else next(i for i, char in enumerate(word) if char in "js")
        before = "".join(reads(char) for char in word[:index])
        after = "".join(reads(char) for char in word[index + 1 :])
        behind = f"(?<={before}\\x80{after})" if before else ""
        branches.append(after + behind if after else behind)
    return re.compile(("\\x80(?:" + "|".join(dict.fromkeys(branches)) + ")").encode())


_CONFIRM = _confirm_pattern()

_HEADER_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_SECRET_SUFFIXES = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
)
_KEYISH = ("key", "token", "secret")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")

# (rule, trigger substrings of the lowercased value, regex with the secret in group "s", and the
# characters of which the regex needs one: a value with none of them cannot match, and skipping
# the regex then saves its backtracking, 4-8 us a value for secret_kv)
_VALUE_RULES: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...]], ...] = (
    (
        "header",
        ("authorization", "cookie", "x-api-key"),
        r"""(?i)\b(?:authorization|cookie|x-api-key)["']?\s*[:=]\s*["']?(?P<s>[^"'\r\n]+)""",
        (":", "="),
    ),
    ("bearer", ("bearer",), r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9._~+/=-]{8,})", ()),
    ("jwt", ("eyj",), r"(?P<s>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)", (".",)),
    (
        "supabase",
        ("sb_secret_", "sbp_"),
        r"(?<![A-Za-z0-9])(?P<s>sb_secret_[A-Za-z0-9_-]{8,}|sbp_[A-Za-z0-9]{20,})",
        (),
    ),
    ("stripe", ("_live_", "_test_"), r"(?<![A-Za-z0-9])(?P<s>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,})", ()),
    ("aws", ("akia", "asia"), r"(?<![A-Za-z0-9])(?P<s>(?:AKIA|ASIA)[A-Z0-9]{16})(?![A-Za-z0-9])", ()),
    ("url_password", ("@",), r"(?<=://)[^\s/:@]*:(?P<s>[^\s/@]+)@", ("://",)),
    (
        "query_secret",
        ("password", "passwd", "pwd", "secret", "token", "key"),
        r"""(?i)[?&;][\w.-]*?(?:password|passwd|pwd|secret|token|key)=(?P<s>[^&#\s"']+)""",
        ("=",),
    ),
    (
        "secret_kv",
        ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "api-key"),
        r"""(?i)\b[\w-]*?(?:password|passwd|pwd|secret|token|api[_-]?key)["']?\s*[:=]\s*["']?(?P<s>[^\s"',;&}\]]+)""",
        (":", "="),
    ),
)

# The cache of values the rules leave unchanged (`Redactor._value`): what a value may weigh to be
# kept, and how many are kept before it starts over (at most ~1 MiB).
CLEAN_VALUE_CHARS = 256
CLEAN_VALUES = 4096

_EMAIL = (
    "email",
    ("@",),
    r"(?<![\w.%+-])(?P<s>[\w.%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
    (".",),
)
_PHONE = ("phone", ("+",), r"(?<![\w+])(?P<s>\+[1-9](?:[ .()-]{0,2}\d){6,14})(?!\d)", ())


class _Rule:
    """One value rule: cheap substring triggers and marks (characters the regex needs one of), then
    the regex that finds the secret."""

    __slots__ = ("marks", "name", "regex", "triggers")

    def __init__(self, name: str, triggers: tuple[str, ...], regex: str, marks: tuple[str, ...] = ()) -> None:
        self.name = name
        self.triggers = triggers
        self.regex = re.compile(regex)
        self.marks = marks


class Redactor:
    """Applies one RedactConfig to records and text, counting each redaction by rule."""

    def __init__(self, config: RedactConfig) -> None:
        self.enabled = config.enabled
        self.table = _table(phones=config.phones)
        self._phones = config.phones
        self._confirm = _CONFIRM.finditer
        rules = [_Rule(*rule) for rule in _VALUE_RULES]
        if config.emails:
            rules.append(_Rule(*_EMAIL))
        if config.phones:
            rules.append(_Rule(*_PHONE))
        for pattern in config.patterns:
            rules.append(_Rule(pattern.name, (), pattern.regex))
        self._rules = rules
        # Rules without triggers (patterns) run on every value; the others only on a value the
        # prefilter passes (see `_value`).
        self._untriggered = any(not rule.triggers for rule in rules)
        self._paths = [tuple(path.split(".")) for path in config.fields]
        # Configured paths and patterns can match anything, so every event is walked.
        self.always = bool(self._paths or config.patterns)
        self._counters = {rule.name: redactions.labels(rule.name) for rule in rules}
        for name in ("header", "secret_field", "datadog_api_key", "field"):
            self._counters[name] = redactions.labels(name)
        self._keys: dict[str, str | None] = {}
        # Values the rules were run on and left unchanged: a trigger word in a value that repeats
        # (`/v1/auth/token`, an error message) costs the rules once, not on every line. Only
        # unchanged values: a redaction is counted each time it happens.
        self._clean: set[str] = set()

    def suspect(self, data: bytes) -> bool:
        """Whether `data` may hold something a rule redacts (False means: certainly clean)."""
        return self.always or bool(self._trigger_lines(data))

    def suspects(self, joined: bytes) -> set[int] | None:
        """Indexes of the lines of `joined` (lines joined by newlines) that may hold something a
        rule redacts; None means all of them.

        One pass over the whole chunk (see the module docstring): only real trigger words come
        back to Python.
        """
        return None if self.always else self._trigger_lines(joined)

    def _trigger_lines(self, text: bytes) -> set[int]:
        """The prefilter: indexes of the lines of `text` with a trigger word, compiled or its twin."""
        if SPEEDUPS is not None:
            return set(SPEEDUPS.trigger_lines(text, self._phones))
        lowered = text.translate(self.table, _SEPARATORS)
        found = _lines_at(lowered, self._hits(lowered))
        for marker in _STRIPE:
            if marker in text:
                found |= _lines_at(text, _positions(text, marker))
        return found

    def _hits(self, lowered: bytes) -> list[int]:
        """Positions in a translated text where some rule may match."""
        hits = _positions(lowered, b"secret")
        if not lowered.isascii():
            hits += _positions(lowered, b"\x81")
            hits.extend(match.start() for match in self._confirm(lowered))
        return hits

    def record(self, record: dict[str, Any]) -> list[str] | None:
        """Redact a parsed record in place; the removed strings, or None when nothing changed."""
        found: list[str] = []
        for path in self._paths:
            _redact_path(record, path, found, self._counters["field"])
        if SPEEDUPS is None or self._untriggered:
            self._walk(record, found)
        else:
            # The compiled walk finds the values the walk would judge (a key or a string with a
            # trigger word); every other value, under a key with no rule, no rule would change.
            for container, slot in SPEEDUPS.suspect_slots(record, self._phones):
                rule = self._key_rule(slot) if isinstance(slot, str) else None
                value = container[slot]
                new = self._visit(rule, value, found)
                if new is not value:
                    container[slot] = new
        return found if found else None

    def text(self, text: str) -> str:
        """Apply the value rules to free text without counting (for a raw line whose fields counted)."""
        return self._value(text, None)

    def _key_rule(self, key: str) -> str | None:
        rule = self._keys.get(key, "")
        if rule == "":
            lowered = key.lower()
            squashed = lowered.replace("-", "").replace("_", "")
            if lowered in _HEADER_KEYS:
                rule = "header"
            elif squashed.endswith(_SECRET_SUFFIXES):
                rule = "secret_field"
            elif any(word in lowered for word in _KEYISH):
                rule = "keyish"
            else:
                rule = None
            if len(self._keys) < 10_000:
                self._keys[key] = rule
        return rule

    def _walk(self, node: dict[str, Any], found: list[str]) -> None:
        for key, value in node.items():  # only existing keys are reassigned: safe while iterating
            rule = self._key_rule(key) if isinstance(key, str) else None
            new = self._visit(rule, value, found)
            if new is not value:
                node[key] = new

    def _visit(self, rule: str | None, value: Any, found: list[str]) -> Any:
        """The redacted form of one value found under a key classified as `rule`."""
        if isinstance(value, str):
            if rule is None:
                return self._value(value, found)
            if rule == "keyish":
                if _HEX32.fullmatch(value) is None:
                    return self._value(value, found)
                rule = "datadog_api_key"
            if not value or value in _ALREADY:
                return value
            found.append(value)
            self._counters[rule].inc()
            return REDACTED
        if isinstance(value, dict):
            self._walk(value, found)
        elif isinstance(value, list):
            item_rule = "header" if rule == "header" else None  # Set-Cookie arrives as a list
            for index, item in enumerate(value):
                new = self._visit(item_rule, item, found)
                if new is not item:
                    value[index] = new
        elif rule is not None and rule != "keyish" and isinstance(value, int | float) and not isinstance(value, bool):
            found.append(str(value))
            self._counters[rule].inc()
            return REDACTED
        return value

    def _value(self, value: str, found: list[str] | None) -> str:
        # The line's prefilter again, on this value alone (an encode, a translate, a scan): as
        # cheap as a regex over every rule's trigger words on a short value, and 6x cheaper on a
        # long one (a 1.3 KB stack trace: 8 us instead of 46), which that regex tries at every position.
        if value in self._clean:
            return value
        if not self._untriggered and not self._trigger_lines(value.encode("utf-8", "surrogatepass")):
            return value
        new = self._rules_on(value, found)
        if new == value and len(value) <= CLEAN_VALUE_CHARS:
            if len(self._clean) >= CLEAN_VALUES:
                self._clean.clear()
            self._clean.add(value)
        return new

    def _rules_on(self, value: str, found: list[str] | None) -> str:
        """Every value rule on a value the prefilter passed."""
        lowered = value.lower()
        for rule in self._rules:
            if rule.marks and not any(mark in value for mark in rule.marks):  # one or two `in`: first
                continue
            if rule.triggers:
                for trigger in rule.triggers:
                    if trigger in lowered:
                        break
                else:
                    continue
            new = rule.regex.sub(self._replacer(rule.name, found), value)
            if new != value:
                value = new
                lowered = value.lower()
        return value

    def _replacer(self, name: str, found: list[str] | None) -> Callable[[re.Match[str]], str]:
        counter = self._counters[name]

        def replace(match: re.Match[str]) -> str:
            group = "s" if "s" in match.re.groupindex else 0
            secret = match.group(group)
            if not secret or secret.startswith(_ALREADY_PREFIX):
                return match.group(0)
            if found is not None:
                found.append(secret)
                counter.inc()
            start, end = match.span(group)
            whole_start, whole_end = match.span()
            text = match.string
            return text[whole_start:start] + REDACTED + text[end:whole_end]

        return replace


def _redact_path(record: dict[str, Any], path: tuple[str, ...], found: list[str], counter: Any) -> None:
    """Redact the value at a dotted path (`*` matches any key at that level)."""
    head, rest = path[0], path[1:]
    keys = list(record) if head == "*" else [head] if head in record else []
    for key in keys:
        value = record[key]
        if rest:
            if isinstance(value, dict):
                _redact_path(value, rest, found, counter)
        elif value != REDACTED and value is not None:
            found.append(value if isinstance(value, str) else orjson.dumps(value).decode())
            counter.inc()
            record[key] = REDACTED


def _positions(text: bytes, word: bytes) -> list[int]:
    """Where `word` starts in `text`."""
    found = []
    position = text.find(word)
    while position >= 0:
        found.append(position)
        position = text.find(word, position + 1)
    return found


def _lines_at(text: bytes, positions: list[int]) -> set[int]:
    """The indexes of the lines (split at newlines) of `text` holding these positions."""
    lines: set[int] = set()
    line = last = 0
    for position in sorted(positions):
        line += text.count(b"\n", last, position)
        last = position
        lines.add(line)
    return lines


def _table(phones: bool) -> bytes:
    """Lowercase ASCII; anchors to 0x80; `@` (and `+` for phones) to 0x81; other non-ASCII to DEL."""
    table = bytearray(range(256))
    for byte in range(65, 91):
        table[byte] = byte + 32
    for byte in range(128, 256):
        table[byte] = 0x7F
    for byte in _ANCHORS:
        table[byte] = 0x80
    table[ord("@")] = 0x81
    if phones:
        table[ord("+")] = 0x81
    return bytes(table)
