"""`shipper check`, the command an operator runs right after deploying: a line for every source and
sink, and an exit code a deploy script can stop on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_port


def check(config: Path) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    return result.returncode, rows


def config_text(tmp_path: Path, logs: Path, extra: str = "") -> str:
    return (
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[sources.app]\ntype = "file"\ninclude = ["{logs}/*.log"]\n'
        f'[sources.piped]\ntype = "stdin"\n'
        f'[sinks.out]\ntype = "file"\ninputs = ["app", "piped"]\npath = "{tmp_path / "out.ndjson"}"\n' + extra
    )


def test_check_lists_every_source_and_sink_and_exits_0_when_all_pass(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("a.log", "b.log"):
        (logs / name).write_text('{"level":30,"msg":"hi"}\n')
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, logs))
    code, rows = check(config)
    assert code == 0, rows
    assert set(rows) == {"app", "piped", "out"}
    assert " OK " in rows["app"] and rows["app"].endswith("2 file(s) readable")
    assert " OK " in rows["piped"] and "nothing to verify" in rows["piped"]
    assert " OK " in rows["out"]


def test_check_says_when_no_file_matches_yet(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text(tmp_path, tmp_path / "empty"))
    code, rows = check(config)
    assert code == 0
    assert rows["app"].endswith(f"no file matches {tmp_path}/empty/*.log yet")


def test_check_exits_1_when_any_sink_fails(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()  # nothing listens there
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(
            tmp_path, logs, f'[sinks.hook]\ntype = "http"\ninputs = ["app"]\nurl = "http://127.0.0.1:{port}/"\n'
        )
    )
    code, rows = check(config)
    assert code == 1
    assert " FAIL " in rows["hook"] and f"connection refused to 127.0.0.1:{port}" in rows["hook"]
    assert " OK " in rows["out"] and " OK " in rows["app"]  # the others are still checked and shown
