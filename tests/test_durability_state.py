"""Durability scenario 5 (issue #15): corrupted state between two runs is detected, reported, recovered.

The state files shipper writes under `state_dir` are checkpoint files: a source's
(`checkpoints/<source>.json`: the file source's offsets, the Supabase source's cursors) and a disk
buffer's (`buffers/<sink>/position.json`; its segments' own damage is tests/test_disk_buffer.py's).
The lock files (`locks/*.lock`) only say who holds them and are rewritten on start: garbled, they
change nothing. Between two runs each is truncated, zeroed (as many NULs),
garbled in the middle or emptied: the second run must say so in an error line naming the file,
move it aside (`.corrupt`), count it in `shipper_state_corrupt_total`, exit 0 when stopped, and
start from the configured `start_at`: everything again with "beginning" (duplicates counted), nothing
older with "end". A checkpoint that is well formed and checksummed but holds impossible values (an
offset beyond the file, a negative one, a cursor in the future) is not trusted either.

One run of shipper has a source per kind of damage, each with a checkpoint file of its own: the
four corruptions cost two runs, not eight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.checkpoint import CheckpointStore
from sources.supabase_logs import iso_micros
from tests.durability import DurabilityRun, Figures
from tests.fakes.supabase_api import US, LogRow, SupabaseLogsApi, now_us, rows
from tests.procutil import ShipperProcess, pino_lines, read_events, wait_for
from tests.test_disk_buffer import half_delivered, ids, read_all, spill_log
from tests.test_driver_acks import sample
from tests.test_supabase_e2e import ENV, TOKEN, supabase_source

Damage = Callable[[Path], bytes | None]  # hits a checkpoint file; what it left there, when it broke it


def garbled(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(byte ^ 0x5A for byte in data[middle : middle + 16]) + data[middle + 16 :]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "zeroed": lambda data: bytes(len(data)),
    "garbled": garbled,
    "emptied": lambda data: b"",
}
FIRST, SECOND = range(1000), range(1000, 1500)  # each file's lines before the first run, and between the runs
SPAN = 10_000  # a file's ids: its index * SPAN + FIRST, then + SECOND


def corrupted(how: Callable[[bytes], bytes]) -> Damage:
    def damage(checkpoint: Path) -> bytes:
        damaged = how(checkpoint.read_bytes())
        checkpoint.write_bytes(damaged)
        return damaged

    return damage


def rewritten(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Damage:
    """Every entry replaced by `change(entry)`, saved as shipper saves it: checksummed, well formed."""

    def damage(checkpoint: Path) -> None:
        store = CheckpointStore(checkpoint)
        for key, entry in list(store.load().items()):
            store.update(key, change(entry))
        store.save()

    return damage


def errors_about(shipper: ShipperProcess, checkpoint: Path) -> list[dict[str, Any]]:
    return [line for line in shipper.logs() if line["level"] == "error" and line.get("path") == str(checkpoint)]


def assert_set_aside(shipper: ShipperProcess, checkpoint: Path, damaged: bytes) -> None:
    """One error line naming the file, and the file moved aside as it was."""
    [error] = errors_about(shipper, checkpoint)
    assert error["msg"] == "checkpoint file is corrupt; starting without it"
    assert checkpoint.with_name(checkpoint.name + ".corrupt").read_bytes() == damaged


def assert_rejected(shipper: ShipperProcess, checkpoint: Path, why: str) -> None:
    [error] = errors_about(shipper, checkpoint)
    assert error["msg"] == "checkpoint entry is invalid; not trusted"
    assert why in error["error"], error


# ------------------------------------------------------------------ the file source


def file_runs(
    tmp_path: Path, durability: DurabilityRun, damages: dict[str, Damage]
) -> tuple[ShipperProcess, Figures, dict[str, bytes | None]]:
    """A source per damage, tailing a file of its own from the beginning. A first run ships FIRST;
    each damage hits its source's checkpoint; SECOND is appended; the second run ships until every
    line is there at least once. The second run's process, the figures and what each damage left."""
    files = {name: tmp_path / f"{name}.log" for name in damages}
    ids = {name: index * SPAN for index, name in enumerate(damages)}
    for name, path in files.items():
        path.write_bytes(pino_lines(range(ids[name], ids[name] + len(FIRST))))
    sources = {name: f'type = "file"\ninclude = ["{path}"]\nstart_at = "beginning"' for name, path in files.items()}
    config = durability.config(sources)
    durability.start(config)
    durability.wait_delivered(len(FIRST) * len(files))
    assert durability.stop() == 0
    left = {name: damage(tmp_path / "state" / "checkpoints" / f"{name}.json") for name, damage in damages.items()}
    for name, path in files.items():
        with open(path, "ab") as handle:
            handle.write(pino_lines(range(ids[name] + SECOND.start, ids[name] + SECOND.stop)))
    second = durability.start(config)
    durability.wait_delivered(SECOND.stop * len(files))
    assert durability.stop() == 0, second.stderr[-3000:]
    written = [first + line for first in ids.values() for line in range(SECOND.stop)]
    found = durability.report(written, group=lambda line: line // SPAN)
    # No checkpoint trusted and start_at = "beginning": each file read again from its start, nothing
    # lost, the first run's lines sent once more at most.
    assert not found.missing and not found.unexpected and found.order_violations == 0
    assert found.duplicated <= len(FIRST) * len(files)
    return second, found, left


def test_corrupt_file_checkpoints_are_set_aside_and_the_files_read_from_start_at(
    tmp_path: Path, durability: DurabilityRun
) -> None:
    damages = {name: corrupted(how) for name, how in CORRUPTIONS.items()}
    second, found, left = file_runs(tmp_path, durability, damages)
    for name, damaged in left.items():
        assert damaged is not None
        assert_set_aside(second, tmp_path / "state" / "checkpoints" / f"{name}.json", damaged)
    assert found.drops == {"state_corrupt:corrupt": len(CORRUPTIONS)}


def test_file_checkpoints_with_impossible_offsets_are_not_trusted(tmp_path: Path, durability: DurabilityRun) -> None:
    beyond = 10 * len(pino_lines(range(SPAN, SPAN + SECOND.stop)))
    damages = {
        "negative": rewritten(lambda entry: {**entry, "offset": -5}),
        "beyond_its_size": rewritten(lambda entry: {**entry, "offset": 10**9}),
        # An offset (and size) past the file's end: as if it had been truncated while shipper was stopped.
        "beyond_the_file": rewritten(lambda entry: {**entry, "offset": beyond, "size": beyond}),
    }
    second, found, _ = file_runs(tmp_path, durability, damages)
    checkpoints = tmp_path / "state" / "checkpoints"
    assert_rejected(second, checkpoints / "negative.json", "offset is not a whole number")
    assert_rejected(second, checkpoints / "beyond_its_size.json", "is beyond the size")
    assert not errors_about(second, checkpoints / "beyond_the_file.json")
    [warning] = [line for line in second.logs() if line.get("path") == str(tmp_path / "beyond_the_file.log")]
    assert warning["msg"].startswith("file is shorter than its checkpoint")
    assert found.drops == {"state_corrupt:invalid_entry": 2}


def test_corrupt_file_checkpoint_with_start_at_end_sends_nothing_older(
    tmp_path: Path, durability: DurabilityRun
) -> None:
    """No checkpoint to trust and start_at = "end": the file is taken up at its end, as on a first
    start (lines written while shipper was stopped are not sent: that is what "end" means)."""
    app = tmp_path / "app.log"
    app.write_bytes(pino_lines(FIRST))
    checkpoint = tmp_path / "state" / "checkpoints" / "api.json"
    config = durability.config(f'type = "file"\ninclude = ["{app}"]\nstart_at = "end"')
    for run, lines in enumerate((SECOND, range(1500, 2000))):
        durability.start(config)
        if run:  # the damaged file set aside, then a checkpoint of the new start saved
            wait_for(lambda: checkpoint.with_name("api.json.corrupt").exists() and checkpoint.exists(), 15, "a start")
        else:
            durability.wait_following()
        with open(app, "ab") as handle:
            handle.write(pino_lines(lines))
        wait_for(lambda lines=lines: set(lines) <= set(durability.delivered()), 30, f"lines from {lines.start}")
        assert durability.stop() == 0
        if not run:
            corrupted(CORRUPTIONS["zeroed"])(checkpoint)
    found = durability.report(range(1000, 2000))
    assert not found.missing and not found.unexpected and found.duplicated == 0
    assert found.drops == {"state_corrupt:corrupt": 1}


# ------------------------------------------------------------------ the Supabase source


def test_corrupt_or_impossible_supabase_checkpoints_fall_back_to_start_at(
    tmp_path: Path, durability: DurabilityRun
) -> None:
    """A source per damage, each polling a project (a fake API) of its own. Trusted, the cursor a
    day ahead would have skipped every row until tomorrow (the rows added between the runs)."""
    tomorrow = iso_micros(now_us() + 86400 * US)
    damages = {name: corrupted(how) for name, how in CORRUPTIONS.items()}
    damages["future"] = rewritten(lambda entry: {**entry, "cursor": tomorrow, "floor": tomorrow})
    with contextlib.ExitStack() as stack:
        apis = {
            name: stack.enter_context(SupabaseLogsApi(TOKEN, ref=chr(ord("a") + index) * 20, limit=10_000).threaded())
            for index, name in enumerate(damages)
        }
        owner: dict[str, int] = {}  # row id: the index of its project, whose rows come in order

        def add(api: SupabaseLogsApi, count: int, first_us: int, step_us: int, prefix: str = "") -> list[LogRow]:
            added = api.add(rows("edge_logs", count, first_us, step_us, prefix=prefix))
            owner.update((row.id, list(apis.values()).index(api)) for row in added)
            return added

        table = [row for api in apis.values() for row in add(api, 300, now_us() - 600 * US, US)]
        config = durability.config({name: supabase_source(api, ["edge_logs"]) for name, api in apis.items()})
        durability.start(config, env=ENV)
        wait_for(lambda: len(delivered_rows(durability)) >= len(table), 30, "the backlogs")
        assert durability.stop() == 0
        left = {name: damage(tmp_path / "state" / "checkpoints" / f"{name}.json") for name, damage in damages.items()}
        for lock in (tmp_path / "state" / "locks").iterdir():  # no state: who holds it, rewritten on start
            lock.write_bytes(garbled(lock.read_bytes()))
        for api in apis.values():
            table += add(api, 50, now_us() - 2 * US, 10_000, prefix="between")
        second = durability.start(config, env=ENV)
        wanted = {row.id for row in table}
        wait_for(lambda: wanted <= set(delivered_rows(durability)), 30, "every row after the restart")
        assert durability.stop() == 0, second.stderr[-3000:]
    index = {row.id: position for position, row in enumerate(table)}
    project = [owner[row.id] for row in table]
    delivered = [index[key] for key in delivered_rows(durability)]
    found = durability.report(len(table), group=project.__getitem__, delivered=delivered)
    assert not found.missing and not found.unexpected
    assert found.duplicated <= 300 * len(apis)  # the first run's rows, once more at most (start_at is before them)
    checkpoints = tmp_path / "state" / "checkpoints"
    for name, damaged in left.items():
        if damaged is not None:
            assert_set_aside(second, checkpoints / f"{name}.json", damaged)
    assert_rejected(second, checkpoints / "future.json", "is in the future")
    assert len([line for line in second.logs() if line["level"] == "error"]) == len(damages)  # nothing about locks
    assert found.drops == {"state_corrupt:corrupt": len(CORRUPTIONS), "state_corrupt:invalid_entry": 1}


def delivered_rows(durability: DurabilityRun) -> list[str]:
    return [event["id"] for event in read_events(durability.out)]


# ------------------------------------------------------------------ a disk buffer's position


@pytest.mark.parametrize("how", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_disk_buffer_position_is_counted_as_such_and_the_buffer_replayed(
    tmp_path: Path, how: Callable[[bytes], bytes]
) -> None:
    """The disk buffer's `position.json` is a checkpoint file too: set aside and counted under its
    own kind, and what the buffer holds is sent again (tests/test_disk_buffer.py: never a loss)."""
    log = half_delivered(tmp_path)
    before = sample("shipper_state_corrupt_total", file_kind="buffer_position", reason="corrupt")
    damaged = corrupted(how)(log.store.path)
    again = spill_log(tmp_path)
    assert [ids(events)[0] for events, _ in read_all(again)] == [0, 100]
    again.close()
    assert sample("shipper_state_corrupt_total", file_kind="buffer_position", reason="corrupt") == before + 1
    assert log.store.path.with_name("position.json.corrupt").read_bytes() == damaged
