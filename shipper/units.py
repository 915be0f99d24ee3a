"""Human-friendly durations ("500ms", "5s", "2m") and sizes ("4MiB", "1MB") for the config."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_SCALE = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as "500ms", "5s", "2m", "1h"."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 5, "500ms", "5s" or "2m"')
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_SCALE[match.group(2)]
    raise ValueError(f'expected a duration such as 5, "500ms", "5s" or "2m", got {value!r}')


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as "4MiB", "512KiB", "1MB"."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as 1048576 or "4MiB"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "b").lower()
            return int(float(match.group(1)) * _SIZE_SCALE[unit])
    raise ValueError(f'expected a size such as 1048576, "512KiB" or "4MiB", got {value!r}')


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
