"""Values templated from an event's fields: `"{service}"`, `"{host}/{source}"`, `"env:prod"`.

Sinks name labels, tags and stream names this way. A template is compiled once; rendering it runs
per event on the hot path, so the common shapes (a constant, one whole field) skip formatting.
"""

from __future__ import annotations

import re
from typing import Any

from shipper.when import field_value

PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def template_error(text: str) -> str | None:
    """Why `text` is not a template (unbalanced or empty braces), or None when it is one."""
    rest = PLACEHOLDER.sub("", text)
    if "{" in rest or "}" in rest:
        return f"invalid template {text!r}: use {{field}} or {{dotted.path}}"
    return None


class Template:
    """A compiled template. `render` gives None when a field it names is missing or is not a
    scalar (an object or a list makes no label, tag or name)."""

    __slots__ = ("constant", "field", "paths", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.paths: list[str] = PLACEHOLDER.findall(text)
        self.constant: str | None = text if not self.paths else None
        # The whole template is one field: its value is the rendering, no formatting needed.
        self.field: str | None = self.paths[0] if text.startswith("{") and PLACEHOLDER.fullmatch(text) else None

    def render(self, fields: dict[str, Any]) -> str | None:
        if self.constant is not None:
            return self.constant
        if self.field is not None:
            return scalar_text(field_value(fields, self.field))
        values: dict[str, str] = {}
        for path in self.paths:
            text = scalar_text(field_value(fields, path))
            if text is None:
                return None
            values[path] = text
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], self.text)


def scalar_text(value: Any) -> str | None:
    """A field value as template text: strings as they are, numbers and booleans as JSON writes
    them; None for a missing value, an object or a list."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if value is True or value is False:
        return "true" if value else "false"
    return value if value.__class__ is str else str(value)
