"""Durability scenario 3 (issue #15): rotation storms under load, nothing lost and nothing read twice.

A writer appends 2,000 lines a second to app.log while it is rotated every second: renamed away
(app.log -> app.log.1 -> ...), copied and truncated in place (logrotate's copytruncate), renamed
away and deleted so that the next app.log gets the freed inode, or truncated and rewritten with other
content. No shipper is killed, so every line must arrive exactly once, in order within its file,
whether the include glob covers only app.log or the rotated files too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.durability import DurabilityRun, Figures, Writer, scaled
from tests.procutil import pino_lines

RATE = 2000
SECONDS = 4
GLOBS = {"only_app_log": "app.log", "rotated_files_too": "app.log*"}
# Rotated files are let go soon after they went idle, and the glob is scanned often: rotations race
# with discovery and with the end of the previous file's reader, where re-reads and losses hide.
TUNING = 'glob_interval = "250ms"\nrotate_wait = "500ms"'


def shift_rotated(app: Path) -> None:
    """app.log.N -> app.log.N+1 for every rotated file, the newest first (logrotate's numbering)."""
    rotated = sorted(app.parent.glob(f"{app.name}.*"), key=lambda p: int(p.suffix[1:]), reverse=True)
    for path in rotated:
        path.rename(app.with_name(f"{app.name}.{int(path.suffix[1:]) + 1}"))


def assert_exactly_once_in_order(found: Figures) -> None:
    assert not found.missing, f"{len(found.missing)} lines lost, first ones: {found.missing[:20]}"
    assert not found.unexpected
    assert found.duplicated == 0, "lines read twice"
    assert found.order_violations == 0
    assert not found.drops


def run_storm(durability: DurabilityRun, tmp_path: Path, glob: str, rotation: Callable[[Path], None]) -> Figures:
    """Write under load while `rotation` runs every second; every line delivered; the figures."""
    app = tmp_path / "app.log"
    app.touch()
    writer = Writer(app, rate=scaled(RATE), seconds=scaled(SECONDS))
    config = durability.config(f'type = "file"\ninclude = ["{tmp_path / glob}"]\nstart_at = "beginning"\n{TUNING}')
    durability.start(config)
    durability.wait_following()
    try:
        writer.start()
        writer.rotate_every(1.0, lambda: rotation(app))
        writer.join()
        durability.wait_delivered(writer.written)
        time.sleep(0.6)  # a re-read would come with the next scans of the glob (every 250 ms): give it two
        assert durability.stop() == 0
    finally:
        writer.stop()
    return durability.report(writer.written, group=writer.generation)


@pytest.mark.parametrize("glob", GLOBS.values(), ids=GLOBS.keys())
def test_rename_rotation_every_second(tmp_path: Path, durability: DurabilityRun, glob: str) -> None:
    def rename(app: Path) -> None:
        shift_rotated(app)
        app.rename(app.with_name(app.name + ".1"))  # the writer's next burst creates a new app.log

    assert_exactly_once_in_order(run_storm(durability, tmp_path, glob, rename))


@pytest.mark.parametrize("glob", GLOBS.values(), ids=GLOBS.keys())
def test_copytruncate_every_second(tmp_path: Path, durability: DurabilityRun, glob: str) -> None:
    def copy_truncate(app: Path) -> None:
        shift_rotated(app)
        shutil.copyfile(app, app.with_name(app.name + ".1"))
        os.truncate(app, 0)

    assert_exactly_once_in_order(run_storm(durability, tmp_path, glob, copy_truncate))


def test_inode_of_a_deleted_rotated_file_reused_by_the_new_file(tmp_path: Path, durability: DurabilityRun) -> None:
    """app.log renamed to app.log.1, the previous app.log.1 deleted first: once shipper let go of it
    (`rotate_wait` after it went idle), its inode is free, and the new app.log, created at once, gets it."""
    inodes: list[int] = []

    def rename_and_recreate(app: Path) -> None:
        app.with_name(app.name + ".1").unlink(missing_ok=True)
        inodes.append(app.stat().st_ino)
        app.rename(app.with_name(app.name + ".1"))
        app.touch()

    found = run_storm(durability, tmp_path, "app.log", rename_and_recreate)
    assert_exactly_once_in_order(found)
    inodes.append((tmp_path / "app.log").stat().st_ino)
    if len(set(inodes)) == len(inodes):
        pytest.skip(f"this filesystem gave every new app.log a fresh inode ({len(inodes)} files): no reuse to test")


@pytest.mark.parametrize("longer", [False, True], ids=["same_length", "longer"])
def test_file_truncated_and_rewritten_with_other_content(
    tmp_path: Path, durability: DurabilityRun, longer: bool
) -> None:
    """A file read to its end, then replaced in place (truncated and written again) by other lines of
    the same length, or more: the new lines are read from the start, the old ones not again."""
    app = tmp_path / "app.log"
    first, second = range(1000, 2000), range(2000, 3000 if not longer else 3500)
    old, new = pino_lines(first), pino_lines(second)
    assert len(new) == len(old) or longer
    app.write_bytes(old)
    durability.start(durability.config(f'type = "file"\ninclude = ["{app}"]\nstart_at = "beginning"'))
    durability.wait_delivered(len(first))
    app.write_bytes(new)  # open with O_TRUNC, then one write
    durability.wait_delivered(len(first) + len(second))
    time.sleep(0.6)  # a re-read of either content would follow within the next polls (every 250 ms)
    assert durability.stop() == 0
    found = durability.report(range(first.start, second.stop), group=lambda line: line >= second.start)
    assert not found.missing, "lines lost"
    assert found.duplicated == 0, "lines read twice"
    assert found.order_violations == 0
