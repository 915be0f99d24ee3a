"""A sink's health state (shipper/health.py) on a clock the test moves: degraded, then failing."""

from __future__ import annotations

from shipper.health import Health, worst
from shipper.sink import DELIVERED, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_sends_degrade_then_fail_with_time_alone_and_a_success_clears_them() -> None:
    clock = Clock()
    health = Health("dd", unhealthy_after=30.0, monotonic=clock)
    assert health.state == "ok" and health.report()["last_error"] is None
    health.record(Outcome("retry", reason="connection", detail="ClientConnectorError"))
    health.record(Outcome("retry", reason="http_503", detail="upstream down"))
    assert health.state == "degraded" and health.healthy and health.consecutive_failures == 2
    clock.now += 29.5
    assert health.state == "degraded"
    clock.now += 1.0  # no attempt in between (a backoff): the clock alone makes it failing
    assert health.state == "failing" and not health.healthy
    assert health.report()["failing_for_seconds"] == 30.5
    health.record(DELIVERED)
    assert health.state == "ok" and health.consecutive_failures == 0 and health.last_success is not None
    error = health.report()["last_error"]
    assert error["reason"] == "http_503" and error["detail"] == "upstream down"  # kept as evidence after recovery


def test_a_refusal_fails_at_once_and_stays_failing_until_a_success() -> None:
    clock = Clock()
    health = Health("dd", unhealthy_after=30.0, monotonic=clock)
    health.record(Outcome("unhealthy", reason="http_403", detail="Datadog refused the API key"))
    assert health.state == "failing"
    health.record(Outcome("retry", reason="connection"))  # then the network drops too
    assert health.state == "failing"
    health.record(DELIVERED)
    assert health.state == "ok"


def test_a_rejected_batch_is_shown_but_is_no_outage() -> None:
    health = Health("http", unhealthy_after=0.0, monotonic=Clock())
    health.record(Outcome("reject", reason="http_400", detail="bad field"))
    health.record(Outcome("split", reason="payload_too_large"))
    assert health.state == "ok" and health.consecutive_failures == 0
    assert health.report()["last_error"]["reason"] == "http_400"


def test_details_never_show_a_urls_credentials() -> None:
    health = Health("http", unhealthy_after=30.0, monotonic=Clock())
    health.record(Outcome("retry", reason="http_502", detail="via http://shipper:hunter2@proxy:3128/ failed"))
    detail = health.report()["last_error"]["detail"]
    assert "hunter2" not in detail and "proxy:3128" in detail


def test_the_overall_status_is_the_worst_sinks() -> None:
    assert worst([]) == "ok"
    assert worst(["ok", "degraded"]) == "degraded"
    assert worst(["failing", "ok", "degraded"]) == "failing"
