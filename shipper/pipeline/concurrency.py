"""Adaptive request concurrency: how many requests a sink keeps in flight, found as TCP finds its
window (additive increase, multiplicative decrease), the approach of Vector's adaptive request
concurrency, between 1 and the sink's configured `concurrency`.

A sink starts at its configured maximum, so a healthy destination sees what it always saw. The
driver reports every send attempt (retries too: a batch retries while holding its slot), and:

- Back off: an answer with a Retry-After, or one whose reason says the destination is overloaded
  (429, 503, a timeout, throttling, and what a sink adds in `Sink.overload_reasons`: CloudWatch
  counts its connection failures), halves the limit at once (never below 1).
- Latency: attempts are judged in windows of `limit` completed attempts, about one round trip of
  every request in flight. A window whose mean round-trip time is more than twice the baseline
  (an exponentially weighted average of past windows' means) and at least 50 ms above it means
  the destination queues what we send: halve. Small absolute changes (a local sink's 1 ms to
  3 ms) are noise, not load.
- Increase: otherwise, a window in which every slot was taken (the limit, not the data, held
  sending back) adds one, up to the maximum.
- Each change starts a new window; what attempts begun before it report is ignored, since it
  describes the old limit (one reaction per round trip, as TCP's, so a burst of 429s answering
  the requests already in flight halves the limit once, not once per request).
"""

from __future__ import annotations

import asyncio

from shipper.sink import Outcome

BACK_OFF_REASONS = frozenset({"http_429", "http_503", "timeout", "throttled"})
DECREASE = 0.5
LATENCY_RATIO = 2.0  # a window's mean RTT over this times the baseline is rising latency...
LATENCY_FLOOR = 0.05  # ...when also this many seconds above it
BASELINE_WEIGHT = 0.3  # of the newest window's mean in the baseline


class AdaptiveLimit:
    """Slots for one sink's requests in flight, their number adapted to the destination's answers.
    `overloaded`: the reasons that mean the destination is overloaded beyond the shared ones (a
    sink's `Sink.overload_reasons`)."""

    def __init__(self, maximum: int, overloaded: frozenset[str] = frozenset()) -> None:
        self.maximum = maximum
        self.overloaded = BACK_OFF_REASONS | overloaded
        self.limit = maximum
        self.in_flight = 0
        self._freed = asyncio.Event()
        self._epoch = 0  # bumped on every change of the limit
        self._count = 0  # attempts of this window (this epoch) reported
        self._rtt_sum = 0.0
        self._saturated = False  # every slot taken at some point in this window
        self._baseline: float | None = None

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        while self.in_flight >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.in_flight += 1
        self._saturated = self._saturated or self.in_flight >= self.limit

    def release(self) -> None:
        self.in_flight -= 1
        self._freed.set()

    def begin(self) -> int:
        """An attempt starts: the token to report its outcome with."""
        return self._epoch

    def record(self, token: int, outcome: Outcome, rtt: float) -> None:
        """One attempt's outcome and round-trip time (seconds), begun at `token`."""
        if token != self._epoch:
            return
        if self.backs_off(outcome):
            self._decrease()
            return
        self._count += 1
        self._rtt_sum += rtt
        if self._count < self.limit:
            return
        mean = self._rtt_sum / self._count
        baseline = self._baseline
        self._baseline = mean if baseline is None else baseline + BASELINE_WEIGHT * (mean - baseline)
        if baseline is not None and mean > baseline * LATENCY_RATIO and mean - baseline > LATENCY_FLOOR:
            self._decrease()
        elif self._saturated and self.limit < self.maximum:
            self._change(self.limit + 1)
        else:
            self._new_window()

    def backs_off(self, outcome: Outcome) -> bool:
        """Whether an answer asks us to send less: a Retry-After, or an overloaded destination."""
        return outcome.retry_after is not None or outcome.reason in self.overloaded

    def _decrease(self) -> None:
        self._change(max(1, int(self.limit * DECREASE)))

    def _change(self, limit: int) -> None:
        self.limit = limit
        self._epoch += 1
        self._new_window()
        self._freed.set()  # a higher limit may admit a waiter at once

    def _new_window(self) -> None:
        self._count = 0
        self._rtt_sum = 0.0
        self._saturated = self.in_flight >= self.limit
