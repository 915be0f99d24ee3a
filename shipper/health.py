"""A sink's (or a polling source's) health as an operator reads it: ok, degraded, or failing.

One failed send is not an outage (the retry usually works), so failing sends first make a sink
`degraded`; it turns `failing` after `unhealthy_after` of failed sends with no success in between,
or at once when the destination refuses shipper (401/403: retrying will not fix a bad key). The
driver records every attempt's outcome here; /health and the metrics read the state when asked,
so it follows the clock even while a request waits out its backoff. A source that calls an API
(the Supabase poller) records its requests' outcomes the same way, as `kind="source"`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from shipper.sink import Outcome

log = logging.getLogger("shipper.health")

SinkState = Literal["ok", "degraded", "failing"]
STATES: tuple[SinkState, ...] = ("ok", "degraded", "failing")  # from best to worst

MAX_DETAIL = 300
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@]+@")


def public_detail(detail: str) -> str:
    """An outcome's detail as /health may show it: short, and no `user:password@` of a URL."""
    return _URL_CREDENTIALS.sub("[REDACTED]@", detail)[:MAX_DETAIL]


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class SendError:
    reason: str
    detail: str
    at: float  # epoch seconds


# What keeps happening while a component is failing, as its log line says it.
_WHILE_FAILING = {
    "sink": "data stays buffered and requests are retried",
    "source": "its logs wait at the source and requests are retried",
}


class Health:
    """Outcomes of one sink's send attempts (or one source's requests), turned into a state with
    the evidence behind it."""

    def __init__(
        self,
        name: str,
        unhealthy_after: float,
        monotonic: Callable[[], float] = time.monotonic,
        kind: Literal["sink", "source"] = "sink",
    ) -> None:
        self.name = name
        self.kind = kind
        self.unhealthy_after = unhealthy_after
        self._monotonic = monotonic
        self.consecutive_failures = 0
        self.last_success: float | None = None  # epoch seconds
        self.last_error: SendError | None = None
        self._failing_since: float | None = None  # monotonic, first failure since the last success
        self._refused = False  # a failure since the last success was the destination refusing us
        self._logged_failing = False

    def record(self, outcome: Outcome) -> None:
        """Note one attempt's outcome. A rejected batch (a 400) is shown as the last error but is no
        health failure: the destination is up and answering, and the drop is counted elsewhere."""
        if outcome.kind == "delivered":
            if self.state == "failing":
                log.info(
                    f"{self.kind} is healthy again",
                    extra={self.kind: self.name, "failed_for_seconds": round(self.failing_for, 3)},
                )
            self.consecutive_failures = 0
            self._failing_since = None
            self._refused = False
            self._logged_failing = False
            self.last_success = time.time()
            return
        if outcome.kind == "split":
            return
        self.last_error = SendError(outcome.reason or outcome.kind, public_detail(outcome.detail), time.time())
        if outcome.kind == "reject":
            return
        if not self.consecutive_failures:
            self._failing_since = self._monotonic()
        self.consecutive_failures += 1
        self._refused = self._refused or outcome.kind == "unhealthy"
        if self.state == "failing" and not self._logged_failing:
            self._logged_failing = True
            log.error(
                f"{self.kind} is unhealthy; {_WHILE_FAILING[self.kind]}",
                extra={
                    self.kind: self.name,
                    "reason": self.last_error.reason,
                    "detail": self.last_error.detail,
                    "consecutive_failures": self.consecutive_failures,
                    "failing_for_seconds": round(self.failing_for, 3),
                },
            )

    @property
    def failing_for(self) -> float:
        """Seconds since the first failed attempt with no success after it (0 when none)."""
        return 0.0 if self._failing_since is None else self._monotonic() - self._failing_since

    @property
    def state(self) -> SinkState:
        if not self.consecutive_failures:
            return "ok"
        if self._refused or self.failing_for >= self.unhealthy_after:
            return "failing"
        return "degraded"

    @property
    def healthy(self) -> bool:
        return self.state != "failing"

    def report(self) -> dict[str, object]:
        """What /health shows of this sink or source (names, counts, reasons and times: nothing secret)."""
        error = self.last_error
        last_error = None if error is None else {"reason": error.reason, "detail": error.detail, "at": iso(error.at)}
        return {
            "state": self.state,
            "healthy": self.healthy,
            "consecutive_failures": self.consecutive_failures,
            "failing_for_seconds": round(self.failing_for, 3),
            "unhealthy_after_seconds": self.unhealthy_after,
            "last_success": iso(self.last_success),
            "last_error": last_error,
        }


def worst(states: list[SinkState]) -> SinkState:
    return max(states, key=STATES.index, default="ok")
