"""The metrics reference (docs/metrics.md), generated from the metrics shipper really registers.

Written from the code so that it cannot drift: tests/test_metrics_reference.py fails when the doc and
this output differ, and the alert rules and the Grafana dashboard are checked against `series_names()`.
Regenerate with `python -m shipper.metrics_reference > docs/metrics.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase

from shipper import metrics
from shipper.tally import TALLIES

# The sample names Prometheus stores for one family of each type, as the text exposition writes them.
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
    "gauge": ("",),
}


@dataclass(frozen=True)
class MetricFamily:
    """One metric family as an operator queries it."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def series(self) -> tuple[str, ...]:
        """The names a PromQL query uses: `shipper_events_sent_total`, `..._seconds_bucket`, ..."""
        return tuple(self.name + suffix for suffix in _SUFFIXES[self.type])


def _declared_labels() -> dict[str, tuple[str, ...]]:
    """Label names as declared by each metric (a family with no samples yet still has its labels)."""
    labels = {tally.name: tally.labelnames for tally in TALLIES}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels[next(iter(value.describe())).name] = tuple(value._labelnames)
    return labels


def families() -> list[MetricFamily]:
    """Every family on shipper's /metrics, sorted by name: shipper's own, its tallies, the process's."""
    declared = _declared_labels()
    found = []
    for family in metrics.registry.collect():
        labels = declared.get(family.name) or ()
        if not labels:  # an info's labels, and the process collector's (none), are known from its samples
            labels = tuple(dict.fromkeys(key for sample in family.samples for key in sample.labels))
        found.append(MetricFamily(family.name, family.type, labels, family.documentation))
    return sorted(found, key=lambda family: family.name)


def series_names() -> set[str]:
    """Every sample name shipper exports: what alert rules and dashboards may query."""
    return {name for family in families() for name in family.series}


def markdown() -> str:
    """docs/metrics.md."""
    lines = [
        "# Metrics reference",
        "",
        "Every metric on shipper's `/metrics` (`[api] enabled = true`; `Authorization: Bearer $METRICS_TOKEN`",
        "when `METRICS_TOKEN` is set). Generated from the code by `python -m shipper.metrics_reference >",
        "docs/metrics.md`; a test fails when this file and the code disagree. Label values are bounded: source",
        "and sink names from the config, reasons from the code. A histogram is queried as `NAME_bucket`",
        "(with `le`), `NAME_sum` and `NAME_count`. Alert rules and a Grafana dashboard built on these metrics",
        "are in [deploy/](../deploy/) (see [deploy.md](deploy.md#monitoring-prometheus-alerts-grafana)).",
        "",
        "| Metric | Type | Labels | Help |",
        "|---|---|---|---|",
    ]
    for family in families():
        names = "<br>".join(f"`{name}`" for name in family.series)
        labels = ", ".join(f"`{label}`" for label in family.labels) or "-"
        help_text = family.help.replace("|", r"\|")
        lines.append(f"| {names} | {family.type} | {labels} | {help_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
