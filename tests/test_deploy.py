"""The deploy examples agree with shipper: every config they embed or mount validates, their probes,
paths and ports are the API's, and the image's default config runs as a sidecar does (tails the
shared volume, health answers, /metrics refused without the token on 0.0.0.0)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.procutil import ShipperProcess, pino_lines, wait_for
from tests.test_api import get, wait_until_up

DEPLOY = REPO / "deploy"
CONTAINER_CONFIG = DEPLOY / "container" / "config.toml"
COMPOSE_SIDECAR = DEPLOY / "compose" / "sidecar.yml"
COMPOSE_WRAP = DEPLOY / "compose" / "wrap.yml"
KUBERNETES = DEPLOY / "kubernetes" / "sidecar.yaml"
DOCKERFILES = [REPO / "Dockerfile", DEPLOY / "compose" / "wrap.Dockerfile"]
TOKEN = "deploy-token-61f0a2"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def instructions(dockerfile: Path) -> dict[str, list[str]]:
    """The final stage's instructions (continuation lines joined), by keyword."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    found: dict[str, list[str]] = {}
    for line in stages[-1].splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword, []).append(rest.strip())
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_build_the_compiled_hot_path(dockerfile: Path) -> None:
    """Without setup.py or a compiler where pip installs, an image silently runs the slower Python
    twin of shipper/_speedups.c."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    copied = " ".join(re.findall(r"^COPY (.*)$", text, flags=re.MULTILINE))
    assert "setup.py" in copied
    [install] = [line for line in text.splitlines() if "pip install" in line]
    stage_before = text[: text.index(install)].rpartition("FROM ")[2]
    assert re.search(r"apt-get install [^\n]*\bgcc\b", stage_before + install), "no C compiler where pip installs"


def api_port(config_text: str) -> int:
    address = re.search(r'^address = "(?:\$\{[A-Z_]+:-)?([^"}]+)\}?"', config_text, re.MULTILINE)
    assert address, "no [api] address"
    return int(address.group(1).rpartition(":")[2])


def kubernetes_parts() -> tuple[str, dict[str, Any], dict[str, Any]]:
    docs = documents(KUBERNETES)
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [shipper] = [c for c in pod["containers"] if c["name"] == "shipper"]
    return config_map["data"]["config.toml"], pod, shipper


def embedded_configs() -> dict[str, str]:
    """Every config the examples embed or mount, by where it comes from."""
    configs = {str(CONTAINER_CONFIG.relative_to(REPO)): CONTAINER_CONFIG.read_text()}
    configs[f"{KUBERNETES.relative_to(REPO)} ConfigMap"] = kubernetes_parts()[0]
    for compose in (COMPOSE_SIDECAR, COMPOSE_WRAP):
        for service in documents(compose)[0]["services"].values():
            for volume in service.get("volumes", []):
                source, _, target = volume.partition(":")
                if source.startswith(".") and target.startswith("/etc/shipper/"):
                    path = (compose.parent / source).resolve()
                    configs[str(path.relative_to(REPO))] = path.read_text()
    return configs


def test_examples_are_yaml_and_mount_the_configs_they_name() -> None:
    for path in (COMPOSE_SIDECAR, COMPOSE_WRAP, KUBERNETES):
        assert documents(path), path
    assert "deploy/compose/wrap.toml" in embedded_configs()  # the wrap example mounts its config


@pytest.mark.parametrize("name", sorted(embedded_configs()))
def test_every_embedded_config_validates(name: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(embedded_configs()[name])
    # Only these variables (none of the machine's DD_*): what the examples set or the image sets.
    env = {"SHIPPER_STATE_DIR": str(tmp_path / "state"), "DD_API_KEY": "dd-key-for-validate"}
    result = validate(config, env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_kubernetes_probes_ports_token_and_user_agree_with_shipper() -> None:
    config, pod, shipper = kubernetes_parts()
    port = api_port(config)
    ports = {p["name"]: p["containerPort"] for p in shipper["ports"]}
    assert shipper["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert shipper["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[shipper[probe]["httpGet"]["port"]] == port
    env = {e["name"]: e for e in shipper["env"]}
    assert "secretKeyRef" in env["METRICS_TOKEN"]["valueFrom"] and "value" not in env["METRICS_TOKEN"]
    assert "secretKeyRef" in env["DD_API_KEY"]["valueFrom"]
    mounts = {m["mountPath"]: m["name"] for m in shipper["volumeMounts"]}
    config_path = Path(shipper["args"][shipper["args"].index("--config") + 1])
    assert mounts[str(config_path.parent)] == "shipper-config" and config_path.name == "config.toml"
    include = re.search(r'include = \["([^"]+)"\]', config)
    assert include and str(Path(include.group(1)).parent) in mounts  # it tails the shared volume
    [api] = [c for c in pod["containers"] if c["name"] == "api"]
    assert {m["name"] for m in api["volumeMounts"]} & {mounts[str(Path(include.group(1)).parent)]}
    user = instructions(REPO / "Dockerfile")["USER"][0]
    assert shipper["securityContext"]["runAsUser"] == int(user)


def test_compose_examples_agree_with_the_images() -> None:
    sidecar = documents(COMPOSE_SIDECAR)[0]["services"]
    shipper, api = sidecar["shipper"], sidecar["api"]
    port = api_port(CONTAINER_CONFIG.read_text())
    assert any(p.endswith(f":{port}") for p in shipper["ports"])
    assert "METRICS_TOKEN" in shipper["environment"]
    shared = {v.split(":")[0] for v in shipper["volumes"]} & {v.split(":")[0] for v in api["volumes"]}
    assert any("/var/log/app" in v for v in shipper["volumes"] if v.split(":")[0] in shared)
    healthcheck = instructions(REPO / "Dockerfile")["HEALTHCHECK"][0]
    assert json.loads(healthcheck.partition("CMD ")[2]) == shipper["healthcheck"]["test"][1:]
    wrap = documents(COMPOSE_WRAP)[0]["services"]["api"]
    assert wrap["command"][:2] == ["run", "--"]
    assert any(p.endswith(f":{api_port((COMPOSE_WRAP.parent / 'wrap.toml').read_text())}") for p in wrap["ports"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_shipper_as_entrypoint_unprivileged_with_a_healthcheck(dockerfile: Path) -> None:
    found = instructions(dockerfile)
    assert json.loads(found["ENTRYPOINT"][-1]) == ["shipper"]
    assert json.loads(found["CMD"][-1])[0] == "run"
    assert found["USER"][-1] not in ("root", "0")
    assert json.loads(found["HEALTHCHECK"][-1].partition("CMD ")[2]) == ["shipper", "health"]
    copied = [c.split() for c in found["COPY"] if c.split()[0].endswith(".toml")]
    assert copied and copied[-1][1] == "/etc/shipper/config.toml"
    assert "SHIPPER_CONFIG=/etc/shipper/config.toml" in " ".join(found["ENV"])


def test_the_image_config_runs_as_a_sidecar(tmp_path: Path) -> None:
    """deploy/container/config.toml itself, with the volume and port moved by the variables it reads."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "api.log").write_bytes(pino_lines(range(3)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"SHIPPER_LOG_DIR": str(logs), "SHIPPER_API_ADDRESS": f"0.0.0.0:{port}", "SHIPPER_STATE_DIR": str(tmp_path)}
    shipper = ShipperProcess(CONTAINER_CONFIG, tmp_path, env={**env, "METRICS_TOKEN": ""})
    try:
        wait_until_up(f"{base}/health/live")
        wait_for(lambda: shipper.stdout.count(b"\n") >= 3, 20, "the shared volume's lines on stdout")
        assert b'"line 2"' in shipper.stdout
        status, body = get(f"{base}/metrics")
        assert status == 403 and b"METRICS_TOKEN" in body  # no token: nothing served on 0.0.0.0
        for path in ("/health/live", "/health/ready"):
            assert get(f"{base}{path}")[0] == 200
        health = subprocess.run(
            [sys.executable, "-m", "shipper", "health", "--config", str(CONTAINER_CONFIG)],
            capture_output=True,
            cwd=REPO,
            env=env,
            timeout=30,
        )
        assert health.returncode == 0, health.stderr  # the HEALTHCHECK: 0.0.0.0 asked over loopback
        assert shipper.stop() == 0
    finally:
        shipper.ensure_stopped()
    assert any(line.get("msg", "").startswith("METRICS_TOKEN is not set") for line in shipper.logs())

    shipper = ShipperProcess(CONTAINER_CONFIG, tmp_path, env={**env, "METRICS_TOKEN": TOKEN})
    try:
        wait_until_up(f"{base}/health/live")
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", TOKEN)[0] == 200
    finally:
        shipper.ensure_stopped()
    assert TOKEN not in shipper.stderr


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_works(), reason="no docker daemon on this machine")
def test_image_builds_runs_as_a_sidecar_and_is_healthy(tmp_path: Path) -> None:
    tag = f"shipper-test:{int(time.time())}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(REPO)], check=True, timeout=900)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    (logs / "api.log").write_bytes(pino_lines(range(3)))
    (logs / "api.log").chmod(0o644)
    name = f"shipper-test-{int(time.time())}"
    port = free_port()
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "-e", f"METRICS_TOKEN={TOKEN}", "-p", f"127.0.0.1:{port}:8686",
             "-v", f"{logs}:/var/log/app:ro", tag],
            check=True, timeout=60,
        )  # fmt: skip
        wait_until_up(f"http://127.0.0.1:{port}/health/live")
        wait_for(lambda: b'"line 2"' in _docker_logs(name), 30, "the volume's lines in the container's log")
        assert get(f"http://127.0.0.1:{port}/metrics", TOKEN)[0] == 200
        wait_for(lambda: _health_status(name) == "healthy", 60, "the HEALTHCHECK", interval=1)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def _docker_logs(name: str) -> bytes:
    return subprocess.run(["docker", "logs", name], capture_output=True, timeout=30).stdout


def _health_status(name: str) -> str:
    result = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def test_health_fails_when_shipper_does_not_answer() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "health", "--ready", "--url", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}/health/ready" in result.stderr


def test_the_image_configs_commented_sinks_validate_once_uncommented(tmp_path: Path) -> None:
    text = CONTAINER_CONFIG.read_text()
    blocks = re.findall(r"^# (\[sinks\.\w+\]\n(?:# .*\n)+)", text, re.MULTILINE)
    assert len(blocks) == 3
    config = tmp_path / "config.toml"
    config.write_text(text + "\n" + "\n".join(re.sub(r"^# ", "", block, flags=re.MULTILINE) for block in blocks))
    env = {
        "SHIPPER_STATE_DIR": str(tmp_path / "state"),
        "DD_API_KEY": "dd-key-for-validate",
        "LOKI_URL": "http://loki:3100",
        "AWS_REGION": "eu-west-1",
    }
    result = validate(config, env)
    assert result.returncode == 0, result.stderr
    assert "4 sink(s)" in result.stdout


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`shipper validate` with only `env` (none of the machine's variables)."""
    return subprocess.run(
        [sys.executable, "-m", "shipper", "validate", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )  # fmt: skip
