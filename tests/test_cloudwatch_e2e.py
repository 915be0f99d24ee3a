"""The real `shipper` process shipping the Fastify/pino corpus to CloudWatch Logs (moto behind the
SigV4-checking, limit-enforcing, fault-injecting front of tests/fakes/cloudwatch.py) over loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import CORPUS, REPO, Shipper, clock_env, needs_corpus
from tests.fakes.cloudwatch import CloudWatchFront
from tests.procutil import moved_to_recent

KEY_ID, SECRET = "AKIDCWE2ETEST0000001", "cw-e2e-secret/9f8e7d6c5b4a39281706f5e4d3c2b1a0"
REGION = "us-east-1"
Key = tuple[Any, ...]


def aws_env(tmp_path: Path) -> dict[str, str]:
    """Fake static keys for the standard chain, and nothing of the machine's own AWS setup."""
    return {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }


@pytest.fixture
def front(moto: str) -> Iterator[CloudWatchFront]:
    with CloudWatchFront(moto, {KEY_ID: SECRET}).threaded() as served:
        yield served


def write_config(tmp_path: Path, front: CloudWatchFront, group: str, extra: str = "", workers: int = 1) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "10s"\nparse_workers = {workers}\n\n'
        '[sources.api]\ntype = "stdin"\n\n'
        f'[sinks.cw]\ntype = "cloudwatch"\ninputs = ["api"]\nregion = "{REGION}"\nlog_group = "{group}"\n'
        f'endpoint_url = "{front.url}"\nretention_days = 7\n'
        'retry = { initial_backoff = "50ms", max_backoff = "500ms" }\n'
        f"{extra}\n"
    )
    return path


def corpus() -> tuple[bytes, Counter[Key]]:
    data = moved_to_recent((CORPUS / "fastify-pino.ndjson").read_bytes())  # inside CloudWatch's window on any date
    keys: Counter[Key] = Counter()
    for line in data.splitlines():
        doc = orjson.loads(line)
        keys[(doc["time"], doc["msg"], doc.get("reqId"))] += 1
    return data, keys


def compare(expected: Counter[Key], logs: list[dict[str, Any]]) -> tuple[int, int]:
    """(lost, duplicated) corpus lines among the log events read back."""
    got = Counter((log["time"], log["message"], log.get("reqId")) for log in logs)
    return sum((expected - got).values()), sum((got - expected).values())


def assert_clean(shipper: Shipper, front: CloudWatchFront, logs: list[dict[str, Any]]) -> None:
    assert SECRET.encode() not in shipper.stdout + shipper.stderr, "the secret key leaked into shipper's output"
    assert front.calls and front.violations == []  # every PutLogEvents call within CloudWatch's limits
    assert not [log for log in logs if "shipper.original_timestamp" in log], "logs were re-stamped"
    assert all(log["@stream"] == f"{log['host']}/api" for log in logs)  # the default "{host}/{source}"


@needs_corpus
@pytest.mark.parametrize("workers", [0, 1], ids=["in-agent", "parse-worker"])
def test_the_corpus_arrives_exactly_once_within_every_limit(
    tmp_path: Path, front: CloudWatchFront, workers: int
) -> None:
    data, expected = corpus()
    group = f"/e2e/{time.monotonic_ns()}"
    shipper = Shipper(
        ["run", "--config", str(write_config(tmp_path, front, group, workers=workers))], env=aws_env(tmp_path)
    )
    assert shipper.wait(60, data) == 0, shipper.stderr.decode()[-3000:]
    logs = front.messages(group)
    assert compare(expected, logs) == (0, 0)
    assert_clean(shipper, front, logs)
    assert all(log["@timestamp"] == log["time"] for log in logs)  # each event at its own time, in ms
    assert front.targets["CreateLogGroup"] == front.targets["PutRetentionPolicy"] == 1


@needs_corpus
def test_a_throttling_storm_loses_nothing(tmp_path: Path, front: CloudWatchFront) -> None:
    data, expected = corpus()
    group = f"/e2e/{time.monotonic_ns()}"
    config = write_config(tmp_path, front, group, 'batch = { max_events = 200, timeout = "100ms" }')
    front.throttle_next(8)
    front.unavailable_next(3)
    front.drop_next(2)
    shipper = Shipper(["run", "--config", str(config)], env=aws_env(tmp_path))
    cut = data.index(b"\n", len(data) // 2) + 1
    shipper.feed(data[:cut], close=False)
    time.sleep(1.0)
    front.throttle_next(10)  # a second storm on the second half
    assert shipper.wait(60, data[cut:]) == 0, shipper.stderr.decode()[-3000:]
    logs = front.messages(group)
    lost, duplicated = compare(expected, logs)
    print(f"storm: {len(front.calls)} calls {dict(front.answers)}; lost {lost}, duplicated {duplicated}")
    assert lost == 0
    assert duplicated == 0  # every fault is answered before moto stores anything
    assert front.answers["ThrottlingException"] == 18 and front.answers["dropped"] == 2
    assert_clean(shipper, front, logs)


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "shipper", "check", "--config", str(config)],
        capture_output=True, cwd=REPO, env={**clock_env(), **env, "PATH": "/usr/bin:/bin"}, timeout=60, check=False,
    )  # fmt: skip


def test_shipper_check_says_who_and_where_without_writing(tmp_path: Path, front: CloudWatchFront) -> None:
    env = {**aws_env(tmp_path), "AWS_ENDPOINT_URL_STS": front.url}
    config = write_config(tmp_path, front, f"/e2e/{time.monotonic_ns()}")
    result = check(config, env)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    assert "credentials from env (arn:aws:" in output and "created on the first send" in output
    assert SECRET not in output
    assert {"PutLogEvents", "CreateLogGroup", "CreateLogStream"}.isdisjoint(front.targets)
    refused = check(config, {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert refused.returncode == 1 and b"refused by STS" in refused.stdout
