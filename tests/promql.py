"""The metric names a PromQL expression reads, for checking dashboards and alert rules against the code.

Not a PromQL parser: strings, label matchers, ranges and label lists (`by (...)`, `on (...)`) are cut
out first, then every remaining identifier that is neither a function call nor a keyword is a metric
name. That covers the expressions a dashboard or rules file holds (promtool checks their syntax).
"""

from __future__ import annotations

import re

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIERS = re.compile(r"(?<![\w$.])[a-zA-Z_:][\w:]*(?!\s*\()(?![\w:])")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """`sum by (sink) (rate(shipper_events_sent_total{sink=~"$sink"}[5m])) > 0` -> {"shipper_events_sent_total"}."""
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _LABEL_LISTS):
        expr = pattern.sub(" ", expr)
    return {name for name in _IDENTIFIERS.findall(expr) if name.lower() not in _KEYWORDS}
