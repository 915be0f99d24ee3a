"""A source's transforms (drop, sample, set, remove, rename): in order, counted, in the agent and in
a parse worker alike, and never a way around redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.config import parse_config
from shipper.errors import ConfigError

# ---------------------------------------------------------------------------------- config errors

BASE = """\
[sources.api]
type = "stdin"

[[sources.api.transforms]]
type = "drop"
when = {{ level = "debug" }}

[[sources.api.transforms]]
{second}

[sinks.out]
type = "file"
inputs = ["api"]
path = "/tmp/unused"
"""


@pytest.mark.parametrize(
    ("second", "key", "line", "words"),
    [
        ('type = "sample"\nrate = 0', "sources.api.transforms[1].rate", 10, "greater than or equal to 1"),
        ('type = "sample"\nrate = 5\nkeep_level = "loud"', "sources.api.transforms[1].keep_level", 11, "'none'"),
        ('type = "rename"\nfrom = "a"\ntoo = "b"', "sources.api.transforms[1].too", 11, "did you mean to?"),
        ('type = "rename"\nto = "b"', "sources.api.transforms[1].from", 8, "required key is missing"),
        ('type = "rename"\nfrom = "a"\nto = "a.b"', "sources.api.transforms[1].to", 11, "into itself"),
        ('type = "set"\nfield = "a..b"\nvalue = 1', "sources.api.transforms[1].field", 10, "dotted path"),
        ('type = "remove"\nfields = []', "sources.api.transforms[1].fields", 10, "at least 1"),
        ('type = "drop"\nwhen = {}', "sources.api.transforms[1].when", 10, "drop every event"),
        ('type = "keep"', "sources.api.transforms[1].type", 9, "unknown type 'keep' (one of: drop, sample, set"),
        ('field = "a"', "sources.api.transforms[1].type", 8, "required key is missing (one of: drop"),
    ],
)
def test_config_errors_name_the_transform_by_its_key_path_and_line(
    second: str, key: str, line: int, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.format(second=second), Path("config.toml"), {})
    assert (info.value.key, info.value.line) == (key, line), str(info.value)
    assert words in info.value.message


def test_toml_dates_are_set_as_text() -> None:
    config = parse_config(BASE.format(second='type = "set"\nfield = "released"\nvalue = 2026-11-23'), None, {})
    assert config.sources["api"].transforms[1].value == "2026-11-23"  # type: ignore[union-attr]
