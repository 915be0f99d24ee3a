"""`shipper top`: a running shipper's sources and sinks at a glance, read from its /metrics (and
`shipper health`, which asks its health endpoints).

Rates are the difference of two scrapes over the time between them, so the view needs nothing
from shipper but what Prometheus reads. On a terminal it redraws in place (the alternate screen,
q or Ctrl-C quits and restores the terminal); piped, or with `--once`, it prints plain tables.
The bearer token comes from METRICS_TOKEN or a file, never the command line (`ps` shows that).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tomllib
import tty
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from shipper import __version__
from shipper.config import ApiConfig, interpolate

BAR_WIDTH = 10
TOKEN_VARIABLE = "METRICS_TOKEN"
Labels = frozenset[tuple[str, str]]


class ScrapeError(Exception):
    """/metrics could not be read; the message says why and what to do."""


@dataclass
class Sample:
    """One scrape: every sample's value by metric name and labels, and when it was taken."""

    at: float
    values: dict[str, dict[Labels, float]] = field(default_factory=lambda: defaultdict(dict))

    def by(self, name: str, label: str) -> dict[str, float]:
        """`name` summed per value of `label` (e.g. events sent per sink)."""
        totals: dict[str, float] = defaultdict(float)
        for labels, value in self.values.get(name, {}).items():
            totals[dict(labels).get(label, "")] += value
        return totals

    def by_reason(self, name: str, label: str, owner: str) -> dict[str, float]:
        """`name` of one source or sink (`label` = `owner`) per reason."""
        totals: dict[str, float] = defaultdict(float)
        for labels, value in self.values.get(name, {}).items():
            as_dict = dict(labels)
            if as_dict.get(label) == owner:
                totals[as_dict.get("reason", "")] += value
        return totals

    def one(self, name: str) -> float | None:
        values = self.values.get(name)
        return next(iter(values.values())) if values else None


def parse(text: str, at: float) -> Sample:
    sample = Sample(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            sample.values[s.name][frozenset(s.labels.items())] = s.value
    return sample


def scrape(url: str, token: str | None, timeout: float = 5.0) -> Sample:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise ScrapeError(f"{url}: 401, the token is {'wrong' if token else 'missing'} "
                              f"(set {TOKEN_VARIABLE} or --token-file)") from None  # fmt: skip
        detail = exc.read().decode(errors="replace").strip()
        raise ScrapeError(f"{url}: HTTP {exc.code}{': ' + detail if detail else ''}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"cannot reach {url}: {getattr(reason, 'strerror', None) or reason}") from None
    return parse(text, time.monotonic())


def api_url(given: str | None, config_path: Path, path: str) -> str:
    """`path` of the API at `--url` (a base URL, or one with its own path), else at the config's [api]
    address as this machine reaches it."""
    if given:
        parts = urlsplit(given if "://" in given else f"http://{given}")
        return parts._replace(path=parts.path if parts.path not in ("", "/") else path).geturl()
    address = ApiConfig.model_fields["address"].default
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        written = tomllib.loads(config_path.read_text()).get("api", {}).get("address")
        if isinstance(written, str):
            address = interpolate(written, "api.address", os.environ)
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # listening on every interface: ask over loopback
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def health(url: str) -> int:
    """`shipper health`, a container's HEALTHCHECK with no curl in the image: 0 when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            print(response.read().decode().strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"shipper health: {url}: HTTP {exc.code} {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"shipper health: cannot reach {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return 1


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            return token_file.read_text().strip() or None
        except OSError as exc:
            raise ScrapeError(f"cannot read --token-file {str(token_file)!r}: {exc.strerror}") from None
    return os.environ.get(TOKEN_VARIABLE) or None


# ---------------------------------------------------------------------------------- rendering


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _rate(before: Sample, now: Sample, name: str, label: str, key: str) -> float:
    elapsed = now.at - before.at
    if elapsed <= 0:
        return 0.0
    return max(0.0, now.by(name, label).get(key, 0.0) - before.by(name, label).get(key, 0.0)) / elapsed


def _reasons(totals: dict[str, float]) -> str:
    shown = [f"{reason}={_count(value)}" for reason, value in sorted(totals.items()) if value]
    return " ".join(shown) or "-"


def _bar(used: float, capacity: float) -> str:
    if capacity <= 0:
        return "-"
    fill = min(1.0, used / capacity)
    filled = round(fill * BAR_WIDTH)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fill * 100:3.0f}%"


def _health(value: float | None) -> str:
    return "-" if value is None else ("ok" if value == 1 else "FAILING")


def _table(header: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def render(before: Sample, now: Sample, url: str) -> list[str]:
    """The view of two scrapes: a title line, the sources' table and the sinks' table."""
    title = f"shipper top {__version__} - {url}"
    started = now.one("process_start_time_seconds")
    if started:
        up = int(time.time() - started)
        title += f" - up {up // 3600}h{up % 3600 // 60:02d}m{up % 60:02d}s"
    sources = sorted(
        set(now.by("shipper_events_received_total", "source")) | set(now.by("shipper_bytes_received_total", "source"))
    )
    source_rows = []
    for name in sources:
        dropped = now.by_reason("shipper_source_events_dropped_total", "source", name)
        health = now.values.get("shipper_source_healthy", {}).get(frozenset({("source", name)}))
        source_rows.append([
            name,
            f"{_rate(before, now, 'shipper_events_received_total', 'source', name):,.1f}",
            f"{_size(_rate(before, now, 'shipper_bytes_received_total', 'source', name))}/s",
            _count(now.by("shipper_events_received_total", "source").get(name, 0)),
            _reasons(dropped),
            _health(health),
        ])  # fmt: skip
    sinks = sorted(now.by("shipper_buffer_capacity_bytes", "sink"))
    sink_rows = []
    for name in sinks:
        buffered = now.by("shipper_buffer_bytes", "sink").get(name, 0.0)
        on_disk = _on_disk(now.by("shipper_buffer_disk_bytes", "sink").get(name))
        capacity = now.by("shipper_buffer_capacity_bytes", "sink").get(name, 0.0)
        sink_rows.append([
            name,
            f"{_rate(before, now, 'shipper_events_sent_total', 'sink', name):,.1f}",
            f"{_size(_rate(before, now, 'shipper_bytes_sent_total', 'sink', name))}/s",
            _count(now.by("shipper_events_sent_total", "sink").get(name, 0)),
            f"{_bar(buffered, capacity)} {_size(buffered)}{on_disk}",
            _count(now.by("shipper_inflight_requests", "sink").get(name, 0)),
            _reasons(now.by_reason("shipper_retries_total", "sink", name)),
            _reasons(now.by_reason("shipper_events_dropped_total", "sink", name)),
            _health(now.by("shipper_sink_healthy", "sink").get(name)),
        ])  # fmt: skip
    return [
        title,
        "",
        *_table(["SOURCE", "EVENTS/S IN", "BYTES/S IN", "EVENTS IN", "DROPPED", "HEALTH"], source_rows, {1, 2, 3}),
        "",
        *_table(
            ["SINK", "EVENTS/S OUT", "BYTES/S OUT", "EVENTS OUT", "BUFFER", "INFLIGHT", "RETRIES", "DROPPED", "HEALTH"],
            sink_rows,
            {1, 2, 3, 5},
        ),
    ]


def _on_disk(nbytes: float | None) -> str:
    """What waits in a sink's disk buffer, when anything does."""
    return f" +{_size(nbytes)} on disk" if nbytes else ""


# ---------------------------------------------------------------------------------- modes


def print_tables(url: str, token: str | None, interval: float, once: bool, out: TextIO) -> int:
    """Plain tables, one per interval (`once`: a single one, rates over `interval`); exit 1 when unreachable."""
    try:
        before = scrape(url, token)
        while True:
            time.sleep(interval)
            now = scrape(url, token)
            out.write("\n".join(render(before, now, url)) + "\n")
            out.flush()
            if once:
                return 0
            out.write("\n")
            before = now
    except ScrapeError as exc:
        print(f"shipper top: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _screen(out: TextIO) -> Iterator[None]:
    """The alternate screen, no cursor and keys read one by one; all restored on the way out."""
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    out.write("\x1b[?1049h\x1b[?25l")
    out.flush()
    try:
        if fd is not None:
            tty.setcbreak(fd)
        yield
    finally:
        if fd is not None and saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()


def _quit_within(seconds: float) -> bool:
    """Wait `seconds` for q (or Q) on the terminal."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not sys.stdin.isatty():
            time.sleep(left)
            return False
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q"):
            return True
    return False


def live(url: str, token: str | None, interval: float, out: TextIO) -> int:
    """Redraw in place until q or Ctrl-C; an unreachable shipper is shown, and tried again."""
    with _screen(out):
        try:
            before: Sample | None = None
            while True:
                try:
                    now = scrape(url, token)
                    lines = render(before or now, now, url)
                    before = now
                except ScrapeError as exc:
                    lines, before = [f"shipper top {__version__} - {url}", "", str(exc)], None
                rows, columns = os.get_terminal_size(out.fileno())
                shown = [line[:columns] for line in [*lines, "", "q: quit"][:rows]]
                out.write("\x1b[H\x1b[2J" + "\r\n".join(shown))
                out.flush()
                if _quit_within(interval):
                    return 0
        except KeyboardInterrupt:
            return 0


def top(url: str, token_file: Path | None, interval: float, once: bool) -> int:
    try:
        token = read_token(token_file)
    except ScrapeError as exc:
        print(f"shipper top: {exc}", file=sys.stderr)
        return 2
    if once or not sys.stdout.isatty():
        return print_tables(url, token, interval, once, sys.stdout)
    return live(url, token, interval, sys.stdout)
