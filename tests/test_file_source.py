"""The file source end to end, through the real `shipper` process: a file sink's NDJSON is read back
and every line (unique ids) must arrive at least once; duplicates are printed (`pytest -s`)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import orjson
import pytest

from shipper.checkpoint import CheckpointStore
from tests.conftest import free_port
from tests.procutil import (
    ShipperProcess,
    check_delivery,
    delivered_ids,
    line_id,
    pino_lines,
    read_events,
    wait_for,
    write_config,
)

FAST = 'glob_interval = "100ms"\npoll_interval = "50ms"\nrotate_wait = "1s"\n'


def file_source(include: list[Path | str], start_at: str = "beginning", extra: str = "") -> str:
    patterns = ", ".join(f'"{p}"' for p in include)
    return f'type = "file"\ninclude = [{patterns}]\nstart_at = "{start_at}"\n{FAST}{extra}'


def append(path: Path, ids: range) -> None:
    with open(path, "ab") as handle:
        handle.write(pino_lines(ids))


def wait_delivered(out: Path, ids: range, shipper: ShipperProcess, timeout: float = 30) -> None:
    want = set(ids)

    def arrived() -> bool:
        assert shipper.proc.poll() is None, f"shipper exited early:\n{shipper.stderr[-3000:]}"
        return want <= set(delivered_ids(out))

    wait_for(arrived, timeout, f"lines {ids.start}..{ids.stop - 1}")


def messages(shipper: ShipperProcess) -> list[str]:
    return [str(entry.get("msg")) for entry in shipper.logs()]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


def test_rename_rotation_reads_the_rotated_file_to_its_end(tmp_path: Path, logs: Path) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    shipper = ShipperProcess(write_config(tmp_path, file_source([app]), out), tmp_path)
    try:
        writer = open(app, "ab")  # noqa: SIM115 - the "application" keeps its handle across the rename
        writer.write(pino_lines(range(1000)))
        writer.flush()
        wait_delivered(out, range(1000), shipper)
        for start in range(1000, 3000, 500):
            writer.write(pino_lines(range(start, start + 500)))
            writer.flush()
            time.sleep(0.02)
        os.rename(app, logs / "app.log.1")
        writer.write(pino_lines(range(3000, 3500)))  # still writing to the renamed file, not reopened yet
        writer.flush()
        writer.close()
        append(app, range(3500, 6000))  # reopened: a new app.log
        wait_delivered(out, range(6000), shipper)
        assert shipper.stop() == 0
        duplicates = check_delivery("rename rotation", range(6000), delivered_ids(out))
        assert duplicates == 0
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"], ids=["copy-not-matched", "copy-matched"])
def test_copytruncate_reads_the_unread_rest_from_the_copy(tmp_path: Path, logs: Path, pattern: str) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    source = file_source([logs / pattern]).replace('poll_interval = "50ms"', 'poll_interval = "1s"')
    shipper = ShipperProcess(write_config(tmp_path, source, out), tmp_path)
    try:
        append(app, range(2000))
        wait_delivered(out, range(2000), shipper)
        # logrotate copytruncate, right after a burst the reader has not seen yet (it polls every second)
        append(app, range(2000, 4000))
        shutil.copyfile(app, logs / "app.log.1")
        os.truncate(app, 0)
        append(app, range(4000, 4100))  # the application goes on writing, into the truncated file
        wait_delivered(out, range(4100), shipper)
        assert any("from the copy" in m for m in messages(shipper)), shipper.stderr[-3000:]
        assert shipper.stop() == 0
        duplicates = check_delivery(f"copytruncate ({pattern})", range(4100), delivered_ids(out))
        assert duplicates == 0
    finally:
        shipper.ensure_stopped()


def test_truncation_restarts_at_zero_and_is_counted(tmp_path: Path, logs: Path) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    port = free_port()
    api = f'[api]\nenabled = true\naddress = "127.0.0.1:{port}"\n'
    shipper = ShipperProcess(write_config(tmp_path, file_source([app]), out, extra=api), tmp_path)
    try:
        append(app, range(1000))
        wait_delivered(out, range(1000), shipper)
        app.write_bytes(pino_lines(range(1000, 1100)))  # truncated and rewritten, shorter than before
        wait_delivered(out, range(1100), shipper)
        app.write_bytes(pino_lines(range(1100, 3000)))  # truncated and rewritten at once, longer than before
        wait_delivered(out, range(3000), shipper)
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        counted = [line for line in scrape.splitlines() if line.startswith("shipper_file_truncations_total")]
        assert counted and float(counted[0].split()[-1]) >= 2, counted
        assert shipper.stop() == 0
        check_delivery("truncation", range(3000), delivered_ids(out))
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize("same_head", [False, True], ids=["other_lines", "same_first_kib"])
def test_rewrite_in_place_with_the_same_length_is_read_again(tmp_path: Path, logs: Path, same_head: bool) -> None:
    """A file read to its end, then rewritten with other content of exactly its length: the size
    says nothing, the mtime does (before, the new lines were never read). Its first KiB may be kept
    (a header): the last bytes read tell the rewrite."""
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    header = pino_lines(range(20)) if same_head else b""  # more than the 1 KiB fingerprint
    first, second = range(1000, 1500), range(2000, 2500)  # ids of equal length: equal lengths of lines
    app.write_bytes(header + pino_lines(first))
    shipper = ShipperProcess(write_config(tmp_path, file_source([app]), out), tmp_path)
    try:
        wait_delivered(out, first, shipper)
        app.write_bytes(header + pino_lines(second))
        assert app.stat().st_size == len(header + pino_lines(first))
        wait_delivered(out, second, shipper)
        assert shipper.stop() == 0
        assert any("file truncated" in m for m in messages(shipper)), shipper.stderr[-3000:]
    finally:
        shipper.ensure_stopped()
    header_ids = range(20) if same_head else range(0)
    delivered = [i for i in delivered_ids(out) if i not in header_ids]
    assert check_delivery("rewritten in place", [*first, *second], delivered) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_restart_mid_stream_resumes_from_the_checkpoint(tmp_path: Path, logs: Path, sig: int) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    config = write_config(tmp_path, file_source([app]), out)
    total = 40_000
    done = threading.Event()

    def write() -> None:  # a steady writer, about 13k lines/s, across both shipper runs
        for start in range(0, total, 200):
            append(app, range(start, start + 200))
            time.sleep(0.015)
        done.set()

    writer = threading.Thread(target=write, daemon=True)
    first = ShipperProcess(config, tmp_path)
    second: ShipperProcess | None = None
    try:
        writer.start()
        wait_for(lambda: len(delivered_ids(out)) > 8000, 30, "first lines delivered")
        checkpoint = tmp_path / "state" / "checkpoints" / "api.json"
        wait_for(checkpoint.exists, 10, "a first checkpoint (saved every second)")
        code = first.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        delivered_before = len(delivered_ids(out))
        second = ShipperProcess(config, tmp_path)
        assert done.wait(30)
        wait_delivered(out, range(total), second)
        assert second.stop() == 0
        assert delivered_before < total  # the restart really happened mid-stream
        duplicates = check_delivery(f"restart after {signal.Signals(sig).name}", range(total), delivered_ids(out))
        assert any("resuming file" in m for m in messages(second)), second.stderr[-3000:]
        if sig == signal.SIGTERM:
            assert duplicates == 0  # drained and checkpointed before exiting
    finally:
        first.ensure_stopped()
        if second is not None:
            second.ensure_stopped()


def test_rotation_while_stopped_is_finished_at_start(tmp_path: Path, logs: Path) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    config = write_config(tmp_path, file_source([app], start_at="end"), out)
    first = ShipperProcess(config, tmp_path)
    try:
        wait_for(lambda: '"started"' in first.stderr, 20, "shipper to start")
        time.sleep(0.5)
        append(app, range(1000))
        wait_delivered(out, range(1000), first)
        assert first.stop() == 0
    finally:
        first.ensure_stopped()
    append(app, range(1000, 1500))  # written while shipper is stopped...
    os.rename(app, logs / "app.log.1")  # ...then rotated out of `include`
    append(app, range(1500, 2000))  # and a new file at the path
    second = ShipperProcess(config, tmp_path)
    try:
        wait_delivered(out, range(2000), second)
        assert any("rotated while stopped" in m for m in messages(second)), second.stderr[-3000:]
        assert second.stop() == 0
        duplicates = check_delivery("rotation while stopped", range(2000), delivered_ids(out))
        assert duplicates == 0
    finally:
        second.ensure_stopped()


def test_files_created_while_running_are_read_from_their_beginning(tmp_path: Path, logs: Path) -> None:
    out = tmp_path / "out.ndjson"
    old = logs / "old.log"
    append(old, range(100))  # there before shipper: start_at = "end" skips these
    shipper = ShipperProcess(write_config(tmp_path, file_source([logs / "*.log"], start_at="end"), out), tmp_path)
    try:
        wait_for(lambda: '"started"' in shipper.stderr, 20, "shipper to start")

        def followed() -> bool:  # line 100 (repeated until seen) proves the initial scan is done
            append(old, range(100, 101))
            return 100 in delivered_ids(out)

        wait_for(followed, 20, "the existing file to be followed")
        append(logs / "new.log", range(1000, 1500))
        (logs / "ignored.txt").write_bytes(pino_lines(range(5000, 5010)))
        (logs / "archived.log").write_bytes(gzip.compress(pino_lines(range(6000, 6100))))  # compressed: skipped
        append(logs / "later.log", range(2000, 2100))
        append(old, range(200, 300))
        wait_delivered(out, range(1000, 1500), shipper)
        wait_delivered(out, range(2000, 2100), shipper)
        wait_delivered(out, range(200, 300), shipper)
        assert shipper.stop() == 0
        ids = [i for i in delivered_ids(out) if i != 100]
        check_delivery("glob discovery", [*range(1000, 1500), *range(2000, 2100), *range(200, 300)], ids)
        assert len(read_events(out)) == len(delivered_ids(out))  # nothing else: no binary garbage
        files = {line_id(e): e.get("file") for e in read_events(out)}
        assert files[1000] == str(logs / "new.log") and files[2000] == str(logs / "later.log")
    finally:
        shipper.ensure_stopped()


def test_nul_filled_checkpoint_is_set_aside_not_trusted(tmp_path: Path, logs: Path) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    append(app, range(500))
    checkpoint = tmp_path / "state" / "checkpoints" / "api.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"\0" * 4096)  # what a crash mid-write left behind in loki#6268
    shipper = ShipperProcess(write_config(tmp_path, file_source([app]), out), tmp_path)
    try:
        wait_delivered(out, range(500), shipper)
        assert any("corrupt" in m for m in messages(shipper)), shipper.stderr[-3000:]
        assert (checkpoint.parent / "api.json.corrupt").read_bytes() == b"\0" * 4096
        assert shipper.stop() == 0
        check_delivery("corrupt checkpoint", range(500), delivered_ids(out))
        state = orjson.loads(checkpoint.read_bytes())["state"]
        assert [entry["offset"] for entry in state.values()] == [app.stat().st_size]
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize("lines", [3, 300], ids=["short-file", "fingerprinted-file"])
def test_checkpoint_of_a_reused_inode_is_not_trusted(tmp_path: Path, logs: Path, lines: int) -> None:
    """vector#23076: a new file that gets a deleted file's inode must not inherit its offset."""
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    config = write_config(tmp_path, file_source([app], start_at="end"), out)
    append(app, range(lines))
    store_path = tmp_path / "state" / "checkpoints" / "api.json"
    first = ShipperProcess(config, tmp_path)
    try:
        wait_for(lambda: '"started"' in first.stderr, 20, "shipper to start")
        time.sleep(0.5)  # the initial scan: the existing lines are skipped (start_at = "end")
        append(app, range(lines, 2 * lines))
        wait_delivered(out, range(lines, 2 * lines), first)
        assert first.stop() == 0
    finally:
        first.ensure_stopped()
    # A different file takes the old one's place. Filesystems reuse a freed inode for the next file
    # created; make that certain by pointing the checkpoint at the new file's inode.
    app.unlink()
    app.write_bytes(pino_lines(range(10_000, 10_000 + 3 * lines)))  # longer than the old offset
    new = app.stat()
    store = CheckpointStore(store_path)
    (old_key, entry), *others = store.load().items()
    assert not others and entry["offset"] > 0
    head = app.read_bytes()[:1024]
    assert zlib.crc32(head[: entry["head"]]) != entry["crc"]  # really different content
    store.remove(old_key)
    store.update(old_key.replace(f":{entry['ino']}:", f":{new.st_ino}:"), {**entry, "ino": new.st_ino})
    store.save()
    second = ShipperProcess(config, tmp_path)
    try:
        wait_delivered(out, range(10_000, 10_000 + 3 * lines), second)
        assert any("not trusted" in m for m in messages(second)), second.stderr[-3000:]
        assert second.stop() == 0
        ids = delivered_ids(out)
        check_delivery("reused inode", [*range(lines, 2 * lines), *range(10_000, 10_000 + 3 * lines)], ids)
    finally:
        second.ensure_stopped()


def test_checkpoints_of_deleted_files_are_forgotten(tmp_path: Path, logs: Path) -> None:
    app, out = logs / "app.log", tmp_path / "out.ndjson"
    source = file_source([app], extra='forget_after = "1s"\n').replace('rotate_wait = "1s"', 'rotate_wait = "100ms"')
    shipper = ShipperProcess(write_config(tmp_path, source, out), tmp_path)
    store = tmp_path / "state" / "checkpoints" / "api.json"
    try:
        append(app, range(100))
        wait_delivered(out, range(100), shipper)
        wait_for(lambda: store.exists() and len(orjson.loads(store.read_bytes())["state"]) == 1, 10, "a checkpoint")
        app.unlink()
        wait_for(lambda: orjson.loads(store.read_bytes())["state"] == {}, 15, "the checkpoint to be forgotten")
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize("cached", [True, False], ids=["page-cache", "evicted"])
async def test_reads_give_the_same_bytes_from_the_page_cache_or_the_disk(tmp_path: Path, cached: bool) -> None:
    """A chunk in the page cache is read at once; one that is not (evicted here) is read in a
    thread so the loop never waits for the disk: the bytes are the same either way, short read at
    the end of the file included."""
    from sources.file import _pread

    path = tmp_path / "app.log"
    data = os.urandom(300_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        if not cached:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert await _pread(fd, 256 * 1024, 0) == data[: 256 * 1024]
        assert await _pread(fd, 256 * 1024, 256 * 1024) == data[256 * 1024 :]
        assert await _pread(fd, 256 * 1024, len(data)) == b""
    finally:
        os.close(fd)
