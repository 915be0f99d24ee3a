"""The Grafana dashboard (deploy/grafana/) queries only what shipper exports, through its datasource variable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipper.metrics_reference import series_names
from tests.procutil import REPO
from tests.promql import metric_names

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "shipper.json").read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # a collapsed row holds its panels


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in panels(DASHBOARD["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            label_values = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert label_values, variable
            found.append((f"variable {variable['name']}", label_values[1]))
    return found


def test_every_query_names_only_metrics_shipper_exports() -> None:
    exported = series_names() | {"up"}  # `up`: Prometheus's own, per scrape target
    found = queries()
    assert len(found) >= 15
    queried: set[str] = set()
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= exported, f"{where} queries metrics shipper does not export: {names - exported}"
        queried |= names
    # What the issue asks the dashboard to show.
    for name in (
        "shipper_events_received_total",
        "shipper_events_sent_total",
        "shipper_events_dropped_total",
        "shipper_retries_total",
        "shipper_buffer_bytes",
        "shipper_buffer_capacity_bytes",
        "shipper_send_duration_seconds_bucket",
        "shipper_checkpoint_lag_chunks",
        "shipper_sink_healthy",
    ):
        assert name in queried, f"the dashboard does not show {name}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), with Grafana's variables given values."""
    variables = {"$__rate_interval": "1m", "$job": "shipper", "$instance": ".+"}
    rules = []
    for index, (_, expr) in enumerate(queries()):
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_is_importable_and_asks_for_its_datasource() -> None:
    """Every panel and query reads `${datasource}`, a variable of Prometheus data sources: the dashboard
    imports into any Grafana without editing, and the provisioning example loads it from a folder."""
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(DASHBOARD["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
    assert DASHBOARD["uid"] and DASHBOARD["title"] and "id" not in DASHBOARD  # no instance-specific id
    ids = [panel["id"] for panel in panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids))

    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shipper.yaml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
