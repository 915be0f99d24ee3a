"""docs/metrics.md is what the code exports: regenerate it with `python -m shipper.metrics_reference`."""

from __future__ import annotations

import subprocess
import sys

from shipper import metrics
from shipper.metrics_reference import families, markdown, series_names
from tests.procutil import REPO


def test_the_doc_matches_the_code() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "shipper.metrics_reference"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert generated == markdown()
    assert (REPO / "docs" / "metrics.md").read_text() == generated, (
        "docs/metrics.md is out of date: python -m shipper.metrics_reference > docs/metrics.md"
    )


def test_the_reference_has_every_family_with_its_labels_as_scraped() -> None:
    """Each family's series names and labels are those /metrics really shows, once a child exists."""
    metrics.events_sent.labels("reference-test").inc(0)
    metrics.send_duration.labels("reference-test").observe(0.01)
    try:
        exposed = {
            sample.name: set(sample.labels) for family in metrics.registry.collect() for sample in family.samples
        }
    finally:  # leave the process's registry as other tests expect it
        metrics.events_sent.remove("reference-test")
        metrics.send_duration.remove("reference-test")
    documented = {family.name: family for family in families()}
    assert documented["shipper_events_sent"].series == ("shipper_events_sent_total",)
    assert documented["shipper_events_sent"].labels == ("sink",)
    assert exposed["shipper_events_sent_total"] == {"sink"}
    assert exposed["shipper_send_duration_seconds_bucket"] == {"sink", "le"}
    assert documented["shipper_events_dropped"].labels == ("sink", "reason")  # a parse-worker tally
    assert documented["shipper_build"].labels == ("version", "python")
    assert {name for name in exposed if not name.endswith("_created")} <= series_names()
