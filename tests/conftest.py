"""Shared test helpers: locating the corpus, running the real `shipper` process, free ports."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.procutil import RssSampler

if TYPE_CHECKING:
    from tests.durability import DurabilityRun

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"

# The real-framework corpus lives in shared/ beside the repository (as CI lays it out). A user who
# cloned the repository alone gets these tests skipped with the reason; under CI they must run.
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir() and not os.environ.get("CI"), reason="shared/corpus is not beside the repository"
)


# tests/timeshift/run-shifted runs the suite with the wall clock moved N days ahead, so that no test
# depends on today's date. It exports these two variables; a session that claims to be shifted but whose
# clock is not (libfaketime not loaded, a wrong offset) must fail rather than pass as an ordinary run.
SHIFT_DAYS = os.environ.get("SHIPPER_TEST_CLOCK_SHIFT_DAYS")


def pytest_configure(config: pytest.Config) -> None:
    if SHIFT_DAYS is None:
        return
    real_start = float(os.environ["SHIPPER_TEST_REAL_START"])
    ahead = time.time() - real_start - int(SHIFT_DAYS) * 86400
    if not -60 <= ahead <= 3600:
        raise pytest.UsageError(
            f"SHIPPER_TEST_CLOCK_SHIFT_DAYS={SHIFT_DAYS} but the clock is {ahead:+.0f}s off that shift"
            " (run the suite through tests/timeshift/run-shifted)"
        )


def pytest_report_header() -> str | None:
    if SHIFT_DAYS is None:
        return None
    return f"clock moved {SHIFT_DAYS} days ahead by libfaketime: now {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"


def clock_env() -> dict[str, str]:
    """The variables that move the clock, for a child started with an environment of its own."""
    names = ("LD_PRELOAD", "SHIPPER_TEST_CLOCK_SHIFT_DAYS", "SHIPPER_TEST_REAL_START")
    return {k: v for k, v in os.environ.items() if k in names or k.startswith("FAKETIME")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Shipper:
    """A real `python -m shipper` process, with its stderr collected and its peak RSS sampled."""

    def __init__(self, args: list[str], stdin: int | None = subprocess.PIPE, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self._rss = RssSampler()
        self._rss.watch(self.proc)
        self.stdout = b""
        self.stderr = b""

    @property
    def peak_rss_kib(self) -> int:
        return self._rss.peak_kib

    def feed(self, data: bytes, close: bool = True) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        if close:
            self.proc.stdin.close()
            self.proc.stdin = None

    def wait(self, timeout: float = 60, data: bytes | None = None) -> int:
        """Wait for exit (writing `data` to stdin and closing it first, if given), collecting output."""
        try:
            self.stdout, self.stderr = self.proc.communicate(input=data, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate()
            raise AssertionError(
                f"shipper did not exit within {timeout}s; stderr:\n{self.stderr.decode()[-3000:]}"
            ) from None
        return self.proc.returncode


def run_shipper(args: list[str], data: bytes = b"", timeout: float = 60, env: dict[str, str] | None = None) -> Shipper:
    shipper = Shipper(args, env=env)
    shipper.wait(timeout, data)
    return shipper


@pytest.fixture
def durability(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DurabilityRun]:
    """A durability scenario's shipper runs (tests/durability.py), all ended with the test; its
    figures go to the session's summary."""
    from tests.durability import USER_PROPERTY, DurabilityRun

    def report(line: str) -> None:
        request.node.user_properties.append((USER_PROPERTY, line))

    run = DurabilityRun(tmp_path, request.node.name, report)
    yield run
    run.ensure_stopped()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The durability scenarios' figures, one line each (reported by the tests, from any xdist worker)."""
    from tests.durability import USER_PROPERTY

    lines = sorted(
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == USER_PROPERTY
    )
    if lines:
        terminalreporter.write_sep("-", "durability figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def collector() -> Iterator[object]:
    from tests.fakes.collector import Collector

    server = Collector().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(request: pytest.FixtureRequest) -> str:
    """moto's server (CloudWatch Logs, STS) on loopback for the whole session: its base URL.
    Tests put a `tests.fakes.cloudwatch.CloudWatchFront` in front of it."""
    from tests.fakes.cloudwatch import moto_url, start_moto

    server = start_moto()
    request.addfinalizer(server.stop)
    return moto_url(server)


@pytest.fixture(autouse=True, scope="module")
def _long_lived_objects_frozen() -> Iterator[None]:
    """After each test module, what survives a collection (imported modules, botocore's and moto's
    service models, caches) is frozen out of the garbage collector's way. Without it, every test
    after the CloudWatch ones ran up to 4x slower: each full collection walked moto's heap."""
    yield
    gc.collect()
    gc.freeze()
