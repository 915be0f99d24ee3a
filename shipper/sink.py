"""What a sink module implements, and the outcome vocabulary the driver acts on.

A sink module stays small (DESIGN.md): its config model, a pure `encode(events) -> requests` that
respects the destination's limits, an async `send(request) -> Outcome`, and an optional `check()`
for `shipper check`. Batching, retries, splitting, concurrency, acknowledgements and metrics live
once, in `shipper.pipeline.driver`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from shipper.event import Encoded, Event, Preparer, PreparerSpec
from shipper.lines import events_of

if TYPE_CHECKING:
    from shipper.config import SinkConfig

OutcomeKind = Literal["delivered", "retry", "split", "reject", "unhealthy"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event of a request the destination refused for good: its index in `request.events`,
    why (a metric label, such as `too_old`) and the destination's own words about it."""

    index: int
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended.

    - delivered: accepted, except the events named by index into `request.events`:
      `rejected` ones were refused for good (Loki's partial 400, CloudWatch's
      rejectedLogEventsInfo, OTLP's partialSuccess): counted by reason, dead-lettered, never
      retried; `resend` ones must be sent again (Loki's partial 429): only those are, after the
      retry backoff or `retry_after` seconds. The rest were accepted.
    - retry: transient; try the same request again after backoff, or after `retry_after` seconds.
    - split: too large; re-encode each half of the request's events and send those.
    - reject: permanent for this data; drop every event with `reason`.
    - unhealthy: the destination refuses us (bad credentials); keep the data, mark the sink
      unhealthy, retry slowly, so fixing the key loses nothing.
    """

    kind: OutcomeKind
    reason: str = ""
    retry_after: float | None = None
    detail: str = ""
    rejected: Sequence[Rejection] = ()
    resend: Sequence[int] = ()

    def __post_init__(self) -> None:
        if (self.rejected or self.resend) and self.kind != "delivered":
            raise ValueError(f"only a delivered outcome names rejected or resent events, not {self.kind!r}")


DELIVERED = Outcome("delivered")


@dataclass(slots=True)
class Request:
    """One unit of sending: the encoded body plus the events it carries (for splitting and acks)."""

    body: bytes
    events: Sequence[Event]
    meta: dict[str, Any] = field(default_factory=dict)
    wire: bytes | None = None  # the body as sent (compressed), cached across retries


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """A destination's hard per-request limits, and the batch size we aim for beneath them.

    `goal_bytes` leaves headroom for encoding growth (JSON escaping, envelopes); `encode` is still
    responsible for never exceeding `max_bytes`. A batch leaves when it is full, when its oldest
    event has waited `timeout`, or when no new event came for `idle`: input paused, and waiting
    for the rest of `timeout` would only delay what is there.
    """

    max_events: int
    max_bytes: int
    goal_bytes: int | None = None
    timeout: float = 1.0
    idle: float = 0.2


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str


class Sink(ABC):
    """A destination. Subclasses set `limits` and implement `encode` and `send`."""

    limits: ClassVar[BatchLimits] = BatchLimits(max_events=1000, max_bytes=1024 * 1024)
    # Outcome reasons of this destination that mean it is overloaded, beyond the shared ones
    # (429, 503, timeouts, throttling: shipper/pipeline/concurrency.py): they lower the concurrency.
    overload_reasons: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, config: SinkConfig) -> None:
        self.name = name
        self.config = config
        self._own_preparer: Preparer | None = None

    async def start(self) -> None:
        """Open connections or files; called once before the first send."""

    async def stop(self) -> None:
        """Release resources; called once after the last send."""

    def encode_runs(self, events: Sequence[Event]) -> list[Request]:
        """`encode` for a batch as the driver holds it: the runs it was cut from, prepared logs as
        they arrived among them (shipper/lines.py). A sink that frames those from their bytes
        overrides it; the others get a list of events."""
        return self.encode(events_of(events))

    @abstractmethod
    def encode(self, events: list[Event]) -> list[Request]:
        """Turn a batch into one or more requests, each within the destination's limits.

        Events are shared with every other sink they were routed to: read them, never mutate them.
        """

    def preparer(self) -> PreparerSpec | None:
        """This sink's per-event encoding, run where the events are parsed (a parse worker, or the
        agent: shipper/pipeline/routing.py): which `Preparer` class to build there, and with what. The
        sink's `encode` then gets `Encoded` events and only frames them into requests. None: the
        sink encodes from `fields` in `encode`. A preparer counts its per-event changes
        (truncations, re-stamps)."""
        return None

    def encoded(self, events: list[Event]) -> list[Event]:
        """`events` in this sink's wire form: those not prepared where they were parsed (a direct
        call, a test) are prepared here, in order."""
        if all(map(isinstance, events, repeat(Encoded))):
            return events
        if self._own_preparer is None:
            from shipper.pipeline.routing import build_preparer

            spec = self.preparer()
            if spec is None:
                raise TypeError(f"sink {self.name} has no preparer")
            self._own_preparer = build_preparer(self.name, spec)
        preparer = self._own_preparer
        out: list[Event] = []
        for event in events:
            if isinstance(event, Encoded):
                out.append(event)
                continue
            lines, stamps = preparer.prepare([event])
            if lines:  # a preparer may drop an event (and counts it)
                out.append(Encoded(event.fields, lines[:-1], stamps[0] if stamps else None))
        return out

    @abstractmethod
    async def send(self, request: Request) -> Outcome:
        """Send one request and classify the response. Connection errors may raise OSError."""

    async def check(self) -> CheckResult:
        """Verify credentials and reachability without shipping logs (`shipper check`)."""
        return CheckResult(True, "nothing to check")
