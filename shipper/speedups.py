"""The compiled hot path (shipper/_speedups.c), when it was built and not turned off.

`pip install` compiles it where a C compiler and Python's headers are; elsewhere shipper runs the
Python twins of its functions, with the same results, slower. `SHIPPER_PURE_PYTHON=1` turns it
off (the tests run both ways).
"""

from __future__ import annotations

import os
from types import ModuleType


def compiled() -> ModuleType | None:
    """shipper._speedups, or None where it is missing or turned off."""
    if os.environ.get("SHIPPER_PURE_PYTHON"):
        return None
    try:
        from shipper import _speedups
    except ImportError:
        return None
    return _speedups


SPEEDUPS = compiled()
