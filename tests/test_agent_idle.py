"""An idle agent stays idle: one source that has ended must not turn the agent's wait into a spin."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procutil import ShipperProcess, delivered_ids, pino_lines, wait_for

IDLE_SECONDS = 5.0
MAX_CPU_SECONDS = 0.1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (/proc/PID/stat, fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ShipperProcess]:
    """shipper reading stdin (at EOF at once: /dev/null) and a file, into a file sink; always ended."""
    log = tmp_path / "app.log"
    log.write_bytes(pino_lines([0]))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "5s"\n'
        '[sources.piped]\ntype = "stdin"\n'
        f'[sources.api]\ntype = "file"\ninclude = ["{log}"]\nstart_at = "beginning"\n'
        f'[sinks.out]\ntype = "file"\ninputs = ["piped", "api"]\npath = "{tmp_path / "out.ndjson"}"\n'
        'batch = { timeout = "50ms" }\n'
    )
    shipper = ShipperProcess(config, tmp_path)
    try:
        yield shipper
    finally:
        shipper.ensure_stopped()


def test_an_agent_whose_stdin_ended_idles_while_a_file_source_runs(agent: ShipperProcess, tmp_path: Path) -> None:
    out, log = tmp_path / "out.ndjson", tmp_path / "app.log"
    wait_for(lambda: delivered_ids(out) == [0], 20, "the file's first line to be shipped")
    time.sleep(0.5)  # past startup; stdin hit EOF long ago
    before = cpu_seconds(agent.proc.pid)
    time.sleep(IDLE_SECONDS)
    used = cpu_seconds(agent.proc.pid) - before
    assert agent.proc.poll() is None, agent.stderr[-3000:]  # idle, not gone
    assert used < MAX_CPU_SECONDS, f"{used:.2f} CPU seconds in {IDLE_SECONDS:.0f} idle seconds"
    with open(log, "ab") as handle:  # the file source still runs
        handle.write(pino_lines([1]))
    wait_for(lambda: delivered_ids(out) == [0, 1], 20, "a line appended afterwards to be shipped")
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr[-3000:]
