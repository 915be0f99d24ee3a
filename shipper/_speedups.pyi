from collections.abc import Callable
from typing import Any, Literal, overload

from shipper.event import Event

def configure(
    levels: dict[int, str],
    level_from_number: Callable[[int], str],
    http_fields: Callable[[dict[str, Any]], dict[str, Any] | None],
    second_prefix: Callable[[int], str],
    event_type: type[Event],
) -> None: ...
def normalize_records(
    records: list[Any], raws: list[bytes], service: str, source: str, stream: str | None, second: int, prefix: str
) -> tuple[list[Event | None], list[int], list[int], int, int, str]: ...
def trigger_lines(data: bytes, phones: bool) -> list[int]: ...
def suspect_slots(record: dict[str, Any], phones: bool) -> list[tuple[dict[str, Any] | list[Any], str | int]]: ...
def direct_lines(
    lines: list[bytes],
    flagged: bytes,
    forbidden: tuple[bytes, ...],
    constants: bytes,
    extra: bytes,
    second: int,
    prefix: str,
    datadog: tuple[bytes, dict[int, bytes], int, int, str | None, int] | None = None,
) -> tuple[Any, ...]: ...
def set_level_words(words: dict[int, bytes]) -> None: ...
def encoded_events(kind: type[Event], fields: dict[str, Any], body: bytes, stamps: list[Any] | None) -> list[Event]: ...
@overload
def wire_ends(kind: type[Event], events: list[Event], ends: Literal[True]) -> list[int]: ...
@overload
def wire_ends(kind: type[Event], events: list[Event], ends: Literal[False]) -> int: ...
def distinct_times(entries: list[Event], stream: str, newest: int, same_ns: int) -> None: ...
