"""The disk fills up under the disk buffer (the durability suite's fourth case, issue #15).

A size-capped tmpfs holds the state directory, nearly filled by another file. stdin is piped in while
the destination is down: memory fills, the rest spills to disk until the disk refuses. Then a clear
error, counted drops, the producer never blocked, no crash; and once space returns and the
destination recovers, everything after that is delivered and the books balance (delivered +
dropped = written). Needs root to mount a tmpfs (CI runs as root); skipped otherwise, with the reason.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Shipper, free_port
from tests.durability import figures, reported
from tests.fakes.collector import Collector
from tests.procutil import line_id, page_sample, pino_lines, wait_for

DISK = 12 * 1024 * 1024
LEFT_FREE = 512 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-capped tmpfs needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all of `disk` but `leave` bytes."""
    ballast = disk / "ballast"
    stat = os.statvfs(disk)
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return ballast


def scrape(port: int, name: str, **labels: str) -> float:
    return page_sample(
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode(), name, **labels
    )


def answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1).read()
    except OSError:
        return False
    return True


def test_a_full_disk_drops_counted_never_blocks_and_recovers(small_disk: Path, request: pytest.FixtureRequest) -> None:
    collector = Collector().start()
    collector.fail_status = 503
    api = free_port()
    config = small_disk.parent / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{small_disk / "state"}"\n[api]\nenabled = true\naddress = "127.0.0.1:{api}"\n'
        '[sources.api]\ntype = "stdin"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{collector.url}"\n'
        'retry = { initial_backoff = "50ms", max_backoff = "200ms" }\n'
        'buffer = { max_bytes = "256KiB", spill_max_bytes = "1GiB" }\n'  # a bound the disk cannot hold
    )
    (small_disk / "state").mkdir()
    ballast = fill(small_disk, LEFT_FREE)
    shipper = Shipper(["run", "--config", str(config)])
    before = 300_000
    try:
        wait_for(lambda: answers(api), 30, "shipper's API")
        started = time.monotonic()
        feeding = threading.Thread(target=shipper.feed, args=(pino_lines(range(before)), False), daemon=True)
        feeding.start()
        feeding.join(60)
        assert not feeding.is_alive(), "the producer blocked on a full disk"
        print(f"\n[disk full] {before} lines piped in {time.monotonic() - started:.1f}s while the disk filled")
        wait_for(lambda: scrape(api, "shipper_events_received_total", source="api") >= before, 60, "every line read")
        time.sleep(0.5)  # the last chunk's events reach the channel
        dropped = {
            reason: scrape(api, "shipper_events_dropped_total", sink="collector", reason=reason)
            for reason in ("disk_error", "buffer_full")
        }
        assert shipper.proc.poll() is None  # no crash

        ballast.unlink()  # space returns, and so does the destination
        collector.fail_status = None
        after = range(before, before + 2000)
        code = shipper.wait(120, data=pino_lines(after))
    finally:
        if shipper.proc.poll() is None:
            shipper.proc.kill()
            shipper.proc.wait()
        collector.stop()
    assert code == 0, shipper.stderr.decode()[-3000:]
    ids = [i for e in collector.events if (i := line_id(e)) is not None]
    drops = {f"events_dropped:{reason}": count for reason, count in dropped.items() if count}
    found = reported(
        request,
        figures(request.node.name, range(before + len(after)), ids, lambda line: 0, shipper.peak_rss_kib, drops),
    )
    assert set(after) <= set(ids) and not found.duplicated  # after recovery, nothing is lost
    assert found.distinct + sum(dropped.values()) == found.written  # every line accounted for
    assert dropped["disk_error"] > 0
    errors = [line for line in shipper.stderr.decode().splitlines() if "cannot write to the disk buffer" in line]
    assert errors and "No space left on device" in errors[0]
    assert not list((small_disk / "state" / "buffers" / "collector").glob("*.seg"))  # delivered, deleted
