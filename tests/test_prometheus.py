"""shipper's alert rules (deploy/prometheus/), run by promtool, and a real Prometheus scraping a real shipper."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipper.metrics_reference import series_names
from tests.conftest import free_port
from tests.procutil import REPO, ShipperProcess, pino_lines, read_events, wait_for, write_config
from tests.promql import metric_names

RULES = REPO / "deploy" / "prometheus" / "shipper-rules.yml"
RULES_TEST = RULES.with_name("shipper-rules.test.yml")
TOKEN = "prom-scrape-token-51f9"
EVENTS = 37

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)


@needs_promtool
def test_the_rules_are_valid_prometheus_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_rule_fires_and_stays_quiet_in_its_unit_tests() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == rules, f"rules with no test where they fire: {rules - firing}"
    assert quiet == rules, f"rules with no test where they stay quiet: {rules - quiet}"


def test_the_rules_query_only_metrics_shipper_exports() -> None:
    exported = series_names() | {"up"}  # `up`: Prometheus's own, per scrape target
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
            assert names <= exported, f"{rule['alert']} queries metrics shipper does not export: {names - exported}"


def test_metric_names_are_read_out_of_promql() -> None:
    """The check above is only as good as this extraction: labels, ranges, functions and keywords are no names."""
    expr = (
        'sum without (reason) (increase(shipper_retries_total{sink=~"d.*"}[10m])) > 0 '
        "unless on (job, instance, sink) increase(shipper_events_sent_total[10m] offset 5m) > bool 0 "
        "or histogram_quantile(0.9, sum by (le) (rate(shipper_send_duration_seconds_bucket[$__rate_interval]))) "
        'and absent(up{job="shipper"}) / (shipper_not_a_metric > 1e3)'
    )
    assert metric_names(expr) == {
        "shipper_retries_total",
        "shipper_events_sent_total",
        "shipper_send_duration_seconds_bucket",
        "up",
        "shipper_not_a_metric",
    }


def api_get(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class PrometheusProcess:
    """A real Prometheus with its own config and storage under `workdir`, in its own process group."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's result: {labels: value}."""
        body = api_get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", body
        return {tuple(sorted(item["metric"].items())): float(item["value"][1]) for item in body["data"]["result"]}

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(f"{self.base}/-/ready", timeout=1)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def shipper(tmp_path: Path) -> Iterator[tuple[ShipperProcess, int, Path]]:
    """A real `shipper run` reading a file of EVENTS lines into a file sink, /metrics behind TOKEN."""
    log = tmp_path / "app.log"
    log.write_bytes(pino_lines(range(EVENTS)))
    port = free_port()
    sink = tmp_path / "out.ndjson"
    config = write_config(
        tmp_path,
        f'type = "file"\ninclude = ["{log}"]\nstart_at = "beginning"',
        sink,
        extra=f'[api]\nenabled = true\naddress = "127.0.0.1:{port}"\n',
    )
    process = ShipperProcess(config, tmp_path, env={"METRICS_TOKEN": TOKEN})
    try:
        yield process, port, sink
    finally:
        process.ensure_stopped()


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], PrometheusProcess]]:
    """Starts Prometheus processes that end with the test, also when it fails."""
    started: list[PrometheusProcess] = []

    def start(config: dict[str, Any]) -> PrometheusProcess:
        started.append(PrometheusProcess(tmp_path, config))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@needs_prometheus
def test_a_real_prometheus_scrapes_shipper_with_the_token_and_sees_the_events_it_sent(
    tmp_path: Path,
    shipper: tuple[ShipperProcess, int, Path],
    start_prometheus: Callable[[dict[str, Any]], PrometheusProcess],
) -> None:
    """Prometheus reads the token from a credentials file, stores the events-sent counter with the
    value this test caused, and evaluates the alert rules on real data; the same target scraped
    without the token is down (up == 0)."""
    process, port, sink = shipper
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")  # Prometheus trims the newline a secret file usually ends with
    target = {"static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    prometheus = start_prometheus(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "shipper", "authorization": {"credentials_file": str(token_file)}, **target},
                {"job_name": "shipper-without-token", **target},
            ],
        },
    )
    wait_for(lambda: len(read_events(sink)) == EVENTS, 15, "shipper to deliver every event")
    wait_for(prometheus.ready, 15, "prometheus to be ready")

    sent = 'shipper_events_sent_total{job="shipper", sink="out"}'
    wait_for(lambda: list(prometheus.query(sent).values()) == [EVENTS], 15, f"Prometheus to store {sent} {EVENTS}")
    assert list(prometheus.query('shipper_events_received_total{job="shipper", source="api"}').values()) == [EVENTS]
    assert list(prometheus.query('shipper_sink_healthy{job="shipper", sink="out"}').values()) == [1]
    assert list(prometheus.query('up{job="shipper"}').values()) == [1]
    wait_for(lambda: bool(prometheus.query('up{job="shipper-without-token"}')), 10, "the scrape without the token")
    assert list(prometheus.query('up{job="shipper-without-token"}').values()) == [0]
    assert not prometheus.query('{job="shipper-without-token", __name__=~"shipper_.*"}')
    targets = api_get(f"{prometheus.base}/api/v1/targets")["data"]["activeTargets"]
    refused = [target for target in targets if target["labels"]["job"] == "shipper-without-token"]
    assert "401" in refused[0]["lastError"]  # down because /metrics refused it, not for another reason

    def rules_evaluated() -> bool:
        groups = api_get(f"{prometheus.base}/api/v1/rules")["data"]["groups"]
        return bool(groups) and all(rule["lastEvaluation"] > "0001-01-01T00:00:00Z" for rule in groups[0]["rules"])

    wait_for(rules_evaluated, 10, "the alert rules to be evaluated")
    for group in api_get(f"{prometheus.base}/api/v1/rules")["data"]["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule

    # A healthy shipper that delivered everything: none of its alerts fire, even pending (once the rules
    # have been evaluated after the first scrape: before it, ShipperAbsent is rightly pending).
    def alerts() -> list[Any]:
        return list(api_get(f"{prometheus.base}/api/v1/alerts")["data"]["alerts"])

    try:
        wait_for(lambda: alerts() == [], 5, "no alert (pending or firing) on a healthy shipper")
    except AssertionError:
        raise AssertionError(f"alerts on a healthy shipper: {alerts()}") from None

    # What shipper exposes passes Prometheus's own lint (names, units, suffixes, help).
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        exposition = response.read().decode()
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    assert process.stop() == 0
    assert TOKEN not in process.stderr + process.stdout.decode(errors="replace")
    assert TOKEN not in prometheus.log_path.read_text()
