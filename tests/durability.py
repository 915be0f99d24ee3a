"""The durability suite's harness (issue #15): a writer at a steady rate, shipper runs, and the figures.

A scenario appends pino lines with consecutive ids to a tailed file (`Writer`, in bursts, 20 a
second, as an API writes), runs shipper one or more times (`DurabilityRun`: started, killed,
restarted, stopped; its peak RSS sampled; its drop counters scraped from /metrics before each run
ends), then reads the file sink's output back into `Figures`: written, delivered, distinct,
duplicated, missing, order violations, peak RSS and drops by reason. `DurabilityRun.report` prints
them as one line in pytest's summary (tests/conftest.py) and returns them for the test to assert on.

`SHIPPER_DURABILITY_SCALE` (default 1) multiplies every scenario's duration and rate: the short
versions run in CI, `SHIPPER_DURABILITY_SCALE=10` is the long run (docs/durability.md).
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port
from tests.procutil import RssSampler, ShipperProcess, pino_lines, wait_for, write_config

SCALE = float(os.environ.get("SHIPPER_DURABILITY_SCALE", "1"))
BURSTS_PER_SECOND = 20
USER_PROPERTY = "durability"  # how a test's figures reach the summary, also from an xdist worker


def scaled(value: float) -> int:
    """A duration (s) or a rate (lines/s) of the short version, for this run's scale."""
    return max(1, round(value * SCALE))


class Writer:
    """Appends pino lines with consecutive ids to `path` at `rate` lines a second for `seconds`,
    opening the file for each burst (as an app that reopens its log after a rotation would).

    `rotate` runs a rotation between two bursts and starts a new generation: the ids each physical
    file was written with, so that order is checked per file."""

    def __init__(self, path: Path, rate: int, seconds: float) -> None:
        self.path = path
        self.rate = rate
        self.seconds = seconds
        self.written = 0
        self.generations = [0]  # the first id written after each rotation
        self._lock = threading.Lock()  # held by a burst, and by a rotation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _write(self) -> None:
        per_burst = self.rate // BURSTS_PER_SECOND
        started = time.monotonic()
        for burst in range(round(self.seconds * BURSTS_PER_SECOND)):
            if self._stop.is_set():
                return
            with self._lock, open(self.path, "ab", buffering=0) as handle:
                handle.write(pino_lines(range(self.written, self.written + per_burst)))
                self.written += per_burst
            time.sleep(max(0.0, started + (burst + 1) / BURSTS_PER_SECOND - time.monotonic()))

    def rotate(self, action: Callable[[], None]) -> None:
        """Run `action` (rename, copy and truncate, ...) with no burst half written."""
        with self._lock:
            action()
            self.generations.append(self.written)

    def rotate_every(self, seconds: float, action: Callable[[], None]) -> None:
        """Rotate with `action` every `seconds` until the writer is done (in the caller's thread)."""
        while not self.done:
            self._thread.join(seconds)
            if not self.done:
                self.rotate(action)

    def join(self) -> None:
        self._thread.join(self.seconds + 30)
        assert self.done, "the writer did not finish"

    def stop(self) -> None:
        self._stop.set()

    def generation(self, line: int) -> int:
        return bisect.bisect_right(self.generations, line) - 1


@dataclass
class Figures:
    """What one scenario wrote and what reached the sink."""

    scenario: str
    written: int
    delivered: int
    distinct: int
    duplicated: int
    missing: list[int]
    unexpected: list[int]
    order_violations: int  # a line delivered (first) after a later line of the same file
    peak_rss_mib: float
    drops: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        drops = ", ".join(f"{reason} {count:g}" for reason, count in sorted(self.drops.items())) or "none"
        return (
            f"{self.scenario}: written {self.written}, delivered {self.delivered}, distinct {self.distinct}, "
            f"duplicated {self.duplicated}, missing {len(self.missing)}, order violations {self.order_violations}, "
            f"peak RSS {self.peak_rss_mib:.0f} MiB, drops: {drops}"
        )


def figures(
    scenario: str,
    written: Collection[int],
    ids: list[int],
    group: Callable[[int], int],
    peak_rss_kib: int,
    drops: dict[str, float],
) -> Figures:
    """The figures of `ids` (as delivered, in order) against the lines `written`; order is checked
    on each line's first delivery, among the lines of the same `group` (the file it was written to)."""
    counts = Counter(ids)
    last: dict[int, int] = {}
    violations = 0
    seen: set[int] = set()
    for line in ids:
        if line in seen:
            continue
        seen.add(line)
        key = group(line)
        if line < last.get(key, -1):
            violations += 1
        last[key] = max(line, last.get(key, -1))
    return Figures(
        scenario=scenario,
        written=len(written),
        delivered=len(ids),
        distinct=len(counts),
        duplicated=sum(count - 1 for count in counts.values()),
        missing=sorted(set(written) - counts.keys()),
        unexpected=sorted(counts.keys() - set(written)),
        order_violations=violations,
        peak_rss_mib=peak_rss_kib / 1024,
        drops=drops,
    )


# Counters that say a log was dropped or is at risk, summed by this label (the others are summed over).
_DROP_COUNTERS = {
    "shipper_events_dropped_total": "reason",
    "shipper_source_events_dropped_total": "reason",
    "shipper_file_bytes_lost_total": None,
    "shipper_state_corrupt_total": "reason",
}
_LINE_ID = re.compile(rb'"message":"line (\d+)"')  # a delivered pino line of the writer's (procutil.pino_lines)
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? ([0-9.e+-]+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def drops_by_reason(exposition: str) -> Counter[str]:
    """Drops and losses on one /metrics page, keyed `metric` or `metric:reason` (short names)."""
    out: Counter[str] = Counter()
    for text in exposition.splitlines():
        match = _SAMPLE.match(text)
        if match is None or match.group(1) not in _DROP_COUNTERS:
            continue
        name, labels, value = match.groups()
        label = _DROP_COUNTERS[name]
        short = name.removeprefix("shipper_").removesuffix("_total")
        reason = dict(_LABEL.findall(labels or "")).get(label) if label else None
        if float(value):
            out[f"{short}:{reason}" if reason else short] += float(value)
    return out


def reported(request: object, found: Figures) -> Figures:
    """Show `found` in pytest's summary (and the test's output), for a scenario that runs shipper
    its own way (a stdin pipe, a wrapped process, an HTTP destination) rather than with `DurabilityRun`."""
    request.node.user_properties.append((USER_PROPERTY, found.line()))  # type: ignore[attr-defined]
    print(found.line())
    return found


class DurabilityRun:
    """The shipper runs of one scenario on one config: every process ends with the test, each
    one's drops are scraped from its /metrics before it is stopped or killed."""

    def __init__(self, tmp_path: Path, scenario: str, report: Callable[[str], None]) -> None:
        self.tmp_path = tmp_path
        self.scenario = scenario
        self.out = tmp_path / "out.ndjson"
        self.api_port = free_port()
        self.rss = RssSampler()
        self.drops: Counter[str] = Counter()
        self._ids: list[int] = []  # what `delivered` has read of the sink's output so far
        self._read_to = 0
        self.shipper: ShipperProcess | None = None
        self._started: list[ShipperProcess] = []
        self._report = report

    @property
    def api_table(self) -> str:
        """The config's `[api]` table: /metrics on loopback, where the drops are read."""
        return f'\n[api]\nenabled = true\naddress = "127.0.0.1:{self.api_port}"\n'

    def config(self, source: str | Mapping[str, str], extra: str = "") -> Path:
        """A config with a source (`source`: its table's body; or bodies by name), a file sink reading
        every source, and the API on loopback."""
        # Never rotated: the long version writes millions of lines, and every one is read back.
        never_rotated = 'max_size = "1TiB"\n'
        return write_config(self.tmp_path, source, self.out, extra=self.api_table + extra, sink_options=never_rotated)

    def start(self, config: Path, env: dict[str, str] | None = None) -> ShipperProcess:
        self.shipper = ShipperProcess(config, self.tmp_path, env=env)
        self._started.append(self.shipper)
        self.rss.watch(self.shipper.proc)
        return self.shipper

    def metrics(self) -> str:
        """The running shipper's /metrics page (waiting for its API to answer)."""
        assert self.shipper is not None
        page: list[str] = []

        def scraped() -> bool:
            assert self.shipper is not None and self.shipper.proc.poll() is None, self.shipper.stderr[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/metrics", timeout=2) as response:
                    page.append(response.read().decode())
            except OSError:
                return False
            return True

        wait_for(scraped, 15, "shipper's /metrics")
        return page[0]

    def kill(self) -> None:
        """kill -9 the running shipper (its drops counted first)."""
        assert self.shipper is not None
        self.drops += drops_by_reason(self.metrics())
        self.shipper.proc.send_signal(signal.SIGKILL)
        self.shipper.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM the running shipper; its exit code."""
        assert self.shipper is not None
        self.drops += drops_by_reason(self.metrics())
        return self.shipper.stop()

    def delivered(self) -> list[int]:
        """The ids the file sink has written so far, in order: read on from where the last call
        stopped, by a regex over the bytes (the long version's millions of lines, polled)."""
        try:
            with open(self.out, "rb") as handle:
                handle.seek(self._read_to)
                data = handle.read()
        except FileNotFoundError:
            return self._ids
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._ids.extend(map(int, _LINE_ID.findall(data, 0, end)))
        self._read_to += end
        return self._ids

    def wait_delivered(self, count: int, timeout: float = 60) -> None:
        """Until `count` distinct lines arrived (the timeout grows with the scale: so does the work)."""
        wait_for(lambda: len(set(self.delivered())) >= count, timeout * SCALE, f"{count} distinct lines delivered")

    def wait_following(self, source: str = "api") -> None:
        """Until the source has saved its first checkpoint: it found its files (a rotation before
        that would take a file away that shipper never saw)."""
        checkpoints = self.tmp_path / "state" / "checkpoints" / f"{source}.json"
        wait_for(checkpoints.exists, 15, f"source {source}'s first checkpoint")

    def report(
        self,
        written: int | Collection[int],
        group: Callable[[int], int] = lambda line: 0,
        delivered: list[int] | None = None,
    ) -> Figures:
        """The figures of this scenario (lines 0..`written`-1, or those in `written`; `delivered`: the
        ids that arrived, when they are not pino lines'), shown in pytest's summary."""
        lines = range(written) if isinstance(written, int) else written
        arrived = self.delivered() if delivered is None else delivered
        found = figures(self.scenario, lines, arrived, group, self.rss.peak_kib, dict(self.drops))
        self._report(found.line())
        print(found.line())
        return found

    def ensure_stopped(self) -> None:
        for shipper in self._started:
            shipper.ensure_stopped()
