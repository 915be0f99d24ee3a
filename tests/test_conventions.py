"""What users bring from elsewhere: Datadog's `DD_*` variables, and systemd credentials as `${credential:NAME}`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipper.config import config_from_dict
from shipper.errors import ConfigError
from sinks.datadog import DatadogConfig
from tests.conftest import Shipper
from tests.fakes.datadog_intake import DatadogIntake

KEY = "dd-conventions-secret-5f4e3d2c1b0a99887766554433221100"


def sink(environ: dict[str, str], **table: Any) -> DatadogConfig:
    doc = {
        "agent": {"state_dir": "/tmp/unused"},
        "sources": {"api": {"type": "stdin"}},
        "sinks": {"dd": {"type": "datadog", "inputs": ["api"], **table}},
    }
    config = config_from_dict(doc, None, environ=environ)
    dd = config.sinks["dd"]
    assert isinstance(dd, DatadogConfig)
    return dd


def test_dd_variables_fill_what_the_table_leaves_out() -> None:
    environ = {
        "DD_API_KEY": KEY,
        "DD_SITE": "datadoghq.eu",
        "DD_SERVICE": "orders",
        "DD_ENV": "prod",
        "DD_TAGS": "team:pay region:eu,tier:1",
    }
    dd = sink(environ)
    assert dd.api_key.get_secret_value() == KEY
    assert dd.site == "EU1" and dd.service == "orders"
    assert dd.tags == ["team:pay", "region:eu", "tier:1", "env:prod"]
    assert KEY not in repr(dd)


def test_the_table_wins_over_dd_variables() -> None:
    environ = {"DD_API_KEY": "from-env", "DD_SITE": "US5", "DD_SERVICE": "env-svc", "DD_ENV": "prod", "DD_TAGS": "a:b"}
    dd = sink(environ, api_key=KEY, site="AP1", service="orders", tags=["team:pay", "env:staging"])
    assert dd.api_key.get_secret_value() == KEY
    assert (dd.site, dd.service, dd.tags) == ("AP1", "orders", ["team:pay", "env:staging"])
    # DD_ENV still tags a table whose own tags name no env
    assert sink(environ, api_key=KEY, tags=["team:pay"]).tags == ["team:pay", "env:prod"]


def test_no_key_anywhere_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        sink({})
    assert caught.value.key == "sinks.dd.api_key"


def test_credential_reads_the_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "dd_api_key").write_text(KEY + "\n")
    dd = sink({"CREDENTIALS_DIRECTORY": str(tmp_path)}, api_key="${credential:dd_api_key}")
    assert dd.api_key.get_secret_value() == KEY


@pytest.mark.parametrize(
    ("environ", "name", "expected"),
    [
        (
            {},
            "dd_api_key",
            "needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with LoadCredential=dd_api_key",
        ),
        ({"CREDENTIALS_DIRECTORY": "."}, "missing_one", "no credential 'missing_one' in '.'"),
        ({"CREDENTIALS_DIRECTORY": "."}, "../etc/passwd", "invalid credential name '../etc/passwd'"),
    ],
)
def test_credential_errors_name_the_key(environ: dict[str, str], name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sink(environ, api_key=f"${{credential:{name}}}")
    assert caught.value.key == "sinks.dd.api_key"
    assert expected in caught.value.message


def test_agent_ships_with_a_credential_key_and_dd_tags(tmp_path: Path) -> None:
    """The real agent, as systemd runs it: the key from $CREDENTIALS_DIRECTORY, service and tags from DD_*."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dd_api_key").write_text(KEY)
    with DatadogIntake([KEY]).threaded() as intake:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{tmp_path / "state"}"\nparse_workers = 0\n[sources.api]\ntype = "stdin"\n'
            f'[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "${{credential:dd_api_key}}"\n'
            f'endpoint = "{intake.url}"\nbatch = {{ timeout = "50ms" }}\n'
        )
        env = {
            "CREDENTIALS_DIRECTORY": str(credentials),
            "DD_SERVICE": "orders",
            "DD_ENV": "prod",
            "DD_TAGS": "team:pay,region:eu",
        }
        env = {**env, **{k: "" for k in os.environ if k.startswith("DD_") and k not in env}}
        line = orjson.dumps({"level": 30, "time": int(time.time() * 1000), "msg": "paid"}) + b"\n"
        shipper = Shipper(["run", "--config", str(config)], env=env)
        assert shipper.wait(30, line) == 0, shipper.stderr.decode()[-3000:]
        [log] = intake.logs
        assert log["service"] == "orders"
        assert {"env:prod", "team:pay", "region:eu"} <= set(log["ddtags"].split(","))
    assert KEY.encode() not in shipper.stderr + shipper.stdout
