"""`buffer.type = "disk"` with the real process: an outage, a kill -9 in the middle of it, recovery.

With a disk buffer a tailed file's checkpoint moves as soon as its lines are in the buffer, so the
file itself may be rotated away during an outage; what the buffer holds survives kill -9 and is
delivered after the restart, in the order it was written.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.fakes.collector import Collector
from tests.procutil import ShipperProcess, check_delivery, line_id, pino_lines, wait_for
from tests.test_top import top

RATE = 2000  # lines a second


@pytest.fixture
def collector() -> Iterator[Collector]:
    served = Collector().start()
    try:
        yield served
    finally:
        served.stop()


def config(tmp_path: Path, log: Path, url: str, api: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "1s"\n'
        f'[api]\nenabled = true\naddress = "127.0.0.1:{api}"\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{log}"]\nstart_at = "beginning"\npoll_interval = "50ms"\n'
        f'[sinks.collector]\ntype = "http"\ninputs = ["api"]\nurl = "{url}"\nconcurrency = 1\n'
        'batch = { timeout = "50ms" }\nretry = { initial_backoff = "50ms", max_backoff = "200ms" }\n'
        'buffer = { type = "disk", max_bytes = "64MiB" }\n'
    )
    return path


def file_checkpoint(tmp_path: Path) -> int:
    path = tmp_path / "state" / "checkpoints" / "api.json"
    if not path.exists():
        return 0
    return max([entry["offset"] for entry in orjson.loads(path.read_bytes())["state"].values()], default=0)


def test_an_outage_with_a_kill_9_in_it_loses_nothing_and_keeps_the_order(tmp_path: Path, collector: Collector) -> None:
    log = tmp_path / "app.log"
    log.touch()
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with open(log, "ab", buffering=0) as handle:
            while not stop.is_set():
                handle.write(pino_lines(range(written[0], written[0] + RATE // 20)))
                written[0] += RATE // 20
                time.sleep(0.05)

    collector.fail_status = 503
    api = free_port()
    path = config(tmp_path, log, collector.url, api)
    writer = threading.Thread(target=write, daemon=True)
    shipper = ShipperProcess(path, tmp_path)
    try:
        writer.start()
        wait_for(lambda: file_checkpoint(tmp_path) > 100_000, 30, "the file's checkpoint to move during the outage")
        assert collector.events == []  # nothing delivered: the checkpoint moved because the lines are on disk
        assert list((tmp_path / "state" / "buffers" / "collector").glob("*.seg"))
        health = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{api}/health", timeout=5).read())
        on_disk = health["sinks"]["collector"]
        assert 0 < on_disk["disk_buffer_bytes"] <= on_disk["disk_buffer_max_bytes"] == 64 << 20
        assert on_disk["disk_buffer_events"] > 0
        shown = top("--config", str(path), "--once", "--interval", "0.2s")
        assert "on disk" in next(line for line in shown.stdout.splitlines() if line.startswith("collector"))
        shipper.proc.send_signal(signal.SIGKILL)
        shipper.proc.wait(10)
        shipper = ShipperProcess(path, tmp_path)
        time.sleep(1.0)  # still down: the new run buffers on top of what the last one left
        collector.fail_status = None
        time.sleep(1.0)
        stop.set()
        writer.join(10)
        total = written[0]
        wait_for(lambda: {line_id(e) for e in collector.events} >= set(range(total)), 60, "every line delivered")
        assert shipper.stop() == 0, shipper.stderr[-3000:]
    finally:
        stop.set()
        shipper.ensure_stopped()
    ids = [i for e in collector.events if (i := line_id(e)) is not None]
    duplicates = check_delivery("disk buffer, outage + kill -9", range(total), ids)
    # Sent twice: only lines written to the buffer but not yet in a saved checkpoint when the kill
    # came (saved within `checkpoint_interval`, 50 ms, of moving): well under 200 ms of writing.
    assert duplicates <= RATE * 0.2
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == sorted(first_seen)  # one request at a time: delivered in the order written
    assert not list((tmp_path / "state" / "buffers" / "collector").glob("*.seg"))  # all delivered, all deleted
