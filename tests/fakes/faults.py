"""Answers a fake gives on command instead of judging a request: the next N, or for T seconds."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class Fault:
    """One commanded answer: `status` for the next `remaining` requests, or until `until`
    (monotonic seconds), with the headers and scope a service's fault carries."""

    status: int
    remaining: int | None
    until: float | None
    retry_after: str | None = None
    rate_limit_reset: str | None = None  # Datadog's X-RateLimit-Reset
    streams: dict[str, str] | None = None  # Loki: a per-stream rate limit on the streams with these labels

    def active(self, now: float) -> bool:
        if self.remaining is not None:
            return self.remaining > 0
        return self.until is not None and now < self.until


class Faults:
    """Commanded faults in order; requests from any thread take them one at a time."""

    def __init__(self) -> None:
        self._queue: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._queue.append(fault)

    def next(self) -> Fault | None:
        """The fault that answers this request, counted down; None: judge it as the service would."""
        with self._lock:
            now = time.monotonic()
            self._queue = [fault for fault in self._queue if fault.active(now)]
            if not self._queue:
                return None
            fault = self._queue[0]
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault
