"""Durability scenario 5 (issue #15): corrupted state between two runs is detected, reported, recovered.

Every state file shipper writes under `state_dir` is a source's checkpoint file
(`checkpoints/<source>.json`: the file source's offsets, the Supabase source's cursors; the
Supabase lock file holds no state). Between two runs each is truncated, zeroed (as many NULs),
garbled in the middle or emptied: the second run must say so in an error line naming the file,
move it aside (`.corrupt`), count it in `shipper_state_corrupt_total`, exit 0 when stopped, and
start from the configured `start_at`: everything again with "beginning" (duplicates counted), nothing
older with "end". A checkpoint that is well formed and checksummed but holds impossible values (an
offset beyond the file, a negative one, a cursor in the future) is not trusted either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shipper.checkpoint import CheckpointStore
from sources.supabase_logs import iso_micros
from tests.durability import DurabilityRun, Figures
from tests.fakes.supabase_api import US, LogRow, SupabaseLogsApi, now_us, rows
from tests.procutil import ShipperProcess, pino_lines, read_events, wait_for
from tests.test_supabase_e2e import ENV, TOKEN
from tests.test_supabase_e2e import write_config as supabase_config


def garbled(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(byte ^ 0x5A for byte in data[middle : middle + 16]) + data[middle + 16 :]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],
    "zeroed": lambda data: bytes(len(data)),
    "garbled": garbled,
    "emptied": lambda data: b"",
}
FIRST, SECOND = range(1000), range(1000, 1500)  # lines before the first run, and between the runs


def corrupt(checkpoint: Path, how: Callable[[bytes], bytes]) -> bytes:
    damaged = how(checkpoint.read_bytes())
    checkpoint.write_bytes(damaged)
    return damaged


def rewrite_entries(checkpoint: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Every entry replaced by `change(entry)`, saved as shipper saves it: checksummed, well formed."""
    store = CheckpointStore(checkpoint)
    for key, entry in list(store.load().items()):
        store.update(key, change(entry))
    store.save()


def errors(shipper: ShipperProcess) -> list[dict[str, Any]]:
    return [line for line in shipper.logs() if line["level"] == "error"]


def assert_set_aside(shipper: ShipperProcess, checkpoint: Path, damaged: bytes) -> None:
    """One error line naming the file, the file moved aside as it was, and the count."""
    [error] = errors(shipper)
    assert error["msg"] == "checkpoint file is corrupt; starting without it"
    assert error["path"] == str(checkpoint)
    assert checkpoint.with_name(checkpoint.name + ".corrupt").read_bytes() == damaged


def assert_rejected(shipper: ShipperProcess, checkpoint: Path, why: str) -> None:
    [error] = errors(shipper)
    assert error["msg"] == "checkpoint entry is invalid; not trusted"
    assert error["path"] == str(checkpoint) and why in error["error"], error


# ------------------------------------------------------------------ the file source


def file_runs(
    tmp_path: Path, durability: DurabilityRun, damage: Callable[[Path], None], start_at: str = "beginning"
) -> ShipperProcess:
    """A first run ships FIRST; `damage` hits its checkpoint; SECOND is appended; the second run
    ships until every line is there at least once. The second run's process."""
    app = tmp_path / "app.log"
    app.write_bytes(pino_lines(FIRST))
    config = durability.config(f'type = "file"\ninclude = ["{app}"]\nstart_at = "{start_at}"')
    durability.start(config)
    durability.wait_delivered(len(FIRST))
    assert durability.stop() == 0
    damage(tmp_path / "state" / "checkpoints" / "api.json")
    with open(app, "ab") as handle:
        handle.write(pino_lines(SECOND))
    second = durability.start(config)
    durability.wait_delivered(len(FIRST) + len(SECOND))
    assert durability.stop() == 0, second.stderr[-3000:]
    return second


def assert_all_delivered_again_at_most(found: Figures) -> None:
    """With start_at = "beginning" and no trusted checkpoint, the file is read again from its start:
    nothing lost, the first run's lines sent once more at most."""
    assert not found.missing and not found.unexpected
    assert found.duplicated <= len(FIRST)


@pytest.mark.parametrize("how", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_file_checkpoint_falls_back_to_start_at_beginning(
    tmp_path: Path, durability: DurabilityRun, how: Callable[[bytes], bytes]
) -> None:
    damaged: list[bytes] = []
    second = file_runs(tmp_path, durability, lambda checkpoint: damaged.append(corrupt(checkpoint, how)))
    found = durability.report(len(FIRST) + len(SECOND))
    assert_all_delivered_again_at_most(found)
    assert_set_aside(second, tmp_path / "state" / "checkpoints" / "api.json", damaged[0])
    assert found.drops == {"state_corrupt:corrupt": 1}


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
            corrupt(checkpoint, CORRUPTIONS["zeroed"])
    found = durability.report(range(1000, 2000))
    assert not found.missing and not found.unexpected and found.duplicated == 0
    assert found.drops == {"state_corrupt:corrupt": 1}


def test_file_checkpoint_with_a_negative_offset_is_rejected(tmp_path: Path, durability: DurabilityRun) -> None:
    second = file_runs(tmp_path, durability, lambda path: rewrite_entries(path, lambda e: {**e, "offset": -5}))
    found = durability.report(len(FIRST) + len(SECOND))
    assert_all_delivered_again_at_most(found)
    assert_rejected(second, tmp_path / "state" / "checkpoints" / "api.json", "offset is not a whole number")
    assert found.drops == {"state_corrupt:invalid_entry": 1}


def test_file_checkpoint_with_an_offset_beyond_the_file_is_not_trusted(
    tmp_path: Path, durability: DurabilityRun
) -> None:
    """An offset (and size) past the file's end: as if it had been truncated while shipper was stopped."""
    beyond = 10 * len(pino_lines(FIRST) + pino_lines(SECOND))
    second = file_runs(
        tmp_path, durability, lambda path: rewrite_entries(path, lambda e: {**e, "offset": beyond, "size": beyond})
    )
    found = durability.report(len(FIRST) + len(SECOND))
    assert_all_delivered_again_at_most(found)
    assert any(line["msg"].startswith("file is shorter than its checkpoint") for line in second.logs())
    assert not errors(second)


def test_file_checkpoint_with_an_offset_beyond_its_own_size_is_rejected(
    tmp_path: Path, durability: DurabilityRun
) -> None:
    second = file_runs(tmp_path, durability, lambda path: rewrite_entries(path, lambda e: {**e, "offset": 10**9}))
    found = durability.report(len(FIRST) + len(SECOND))
    assert_all_delivered_again_at_most(found)
    assert_rejected(second, tmp_path / "state" / "checkpoints" / "api.json", "is beyond the size")


# ------------------------------------------------------------------ the Supabase source


def supabase_runs(
    tmp_path: Path, durability: DurabilityRun, damage: Callable[[Path], None]
) -> tuple[ShipperProcess, Figures]:
    """A first run ships a backlog; `damage` hits its checkpoint; rows are added; the second run
    ships until every row is there. The second run's process, and the figures (rows by index)."""
    with SupabaseLogsApi(TOKEN, limit=10_000).threaded() as api:
        table: list[LogRow] = api.add(rows("edge_logs", 300, now_us() - 600 * US, US))
        config = supabase_config(tmp_path, api, ["edge_logs"], extra=durability.api_table)
        durability.start(config, env=ENV)
        wait_for(lambda: len(delivered_rows(durability)) >= len(table), 30, "the backlog")
        assert durability.stop() == 0
        damage(tmp_path / "state" / "checkpoints" / "sb.json")
        table += api.add(rows("edge_logs", 50, now_us() - 2 * US, 10_000, prefix="between"))
        second = durability.start(config, env=ENV)
        wanted = {row.id for row in table}
        wait_for(lambda: wanted <= set(delivered_rows(durability)), 30, "every row after the restart")
        assert durability.stop() == 0, second.stderr[-3000:]
    index = {row.id: position for position, row in enumerate(table)}
    found = durability.report(len(table), delivered=[index[key] for key in delivered_rows(durability)])
    assert not found.missing and not found.unexpected
    assert found.duplicated <= 300  # the first run's rows, once more at most (start_at is before them)
    return second, found


def delivered_rows(durability: DurabilityRun) -> list[str]:
    return [event["id"] for event in read_events(durability.out)]


@pytest.mark.parametrize("how", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_supabase_checkpoint_falls_back_to_start_at(
    tmp_path: Path, durability: DurabilityRun, how: Callable[[bytes], bytes]
) -> None:
    damaged: list[bytes] = []
    second, found = supabase_runs(tmp_path, durability, lambda checkpoint: damaged.append(corrupt(checkpoint, how)))
    assert_set_aside(second, tmp_path / "state" / "checkpoints" / "sb.json", damaged[0])
    assert found.drops == {"state_corrupt:corrupt": 1}


def test_supabase_cursor_in_the_future_is_rejected(tmp_path: Path, durability: DurabilityRun) -> None:
    """Trusted, a cursor a day ahead would skip every row until tomorrow (the rows added between the runs)."""
    tomorrow = iso_micros(now_us() + 86400 * US)
    second, found = supabase_runs(
        tmp_path, durability, lambda path: rewrite_entries(path, lambda e: {**e, "cursor": tomorrow, "floor": tomorrow})
    )
    assert_rejected(second, tmp_path / "state" / "checkpoints" / "sb.json", "is in the future")
    assert found.drops == {"state_corrupt:invalid_entry": 1}
