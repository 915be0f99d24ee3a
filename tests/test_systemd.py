"""The systemd unit passes systemd-analyze, and shipper speaks sd_notify (READY, WATCHDOG, STOPPING)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Shipper

UNIT = REPO / "systemd" / "shipper.service"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def unit_with_real_binary(tmp_path: Path) -> Path:
    """systemd-analyze verify checks that ExecStart exists: point it at this environment's shipper."""
    binary = Path(sys.executable).with_name("shipper")
    if not binary.exists():
        pytest.skip("shipper is not installed in this environment (pip install .)")
    unit = tmp_path / "shipper.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/shipper", str(binary)))
    return unit


@needs_systemd
def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_with_real_binary(tmp_path))], capture_output=True, text=True
    )
    problems = [line for line in result.stderr.splitlines() if "shipper.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


@needs_systemd
def test_unit_hardening_is_rated_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_with_real_binary(tmp_path))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for shipper.service: ([\d.]+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0  # systemd rates 0-2 "OK"


def test_unit_runs_notify_with_watchdog_and_state_dir() -> None:
    text = UNIT.read_text()
    for directive in ("Type=notify", "WatchdogSec=", "StateDirectory=shipper", "DynamicUser=yes", "ExecReload="):
        assert directive in text


def test_sd_notify_ready_watchdog_reloading_stopping(tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(address))
        server.settimeout(10)
        config = tmp_path / "config.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{tmp_path}/state"\n[sources.api]\ntype = "stdin"\n'
            f'[sinks.out]\ntype = "file"\ninputs = ["api"]\npath = "{tmp_path}/out.ndjson"\n'
        )
        shipper = Shipper(
            ["run", "--config", str(config)],
            env={"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"},
        )
        messages = []
        try:
            while len([m for m in messages if m == "WATCHDOG=1"]) < 3:
                messages.append(server.recv(1024).decode())
            assert "READY=1" in messages
            shipper.proc.send_signal(signal.SIGHUP)  # ExecReload: RELOADING=1 with the time, then READY=1
            reload = []
            while "READY=1" not in reload:
                reload.append(server.recv(1024).decode())
            reloading = [m for m in reload if m.startswith("RELOADING=1\n")]
            assert len(reloading) == 1 and re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading[0])
            assert reload.index(reloading[0]) < reload.index("READY=1")
        finally:
            shipper.wait(20, b'{"level":30,"msg":"bye"}\n')
        server.settimeout(2)
        tail = []
        try:
            while True:
                tail.append(server.recv(1024).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in tail
    assert shipper.proc.returncode == 0


def test_load_credential_is_live_and_what_the_docs_and_config_name() -> None:
    """The unit loads the Datadog key as a credential, the config reads it as ${credential:NAME}, and
    the install steps create the file it loads (else the service would not start)."""
    loaded = re.findall(r"^LoadCredential=([\w.-]+):(\S+)$", UNIT.read_text(), re.MULTILINE)
    assert loaded, "no live LoadCredential= line"
    deploy = (REPO / "docs" / "deploy.md").read_text()
    reference = (REPO / "config.toml").read_text()
    for name, path in loaded:
        assert f"${{credential:{name}}}" in reference
        assert f"${{credential:{name}}}" in deploy
        assert f"install -D -m 0600 /dev/stdin {path}" in deploy
