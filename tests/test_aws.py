"""sinks/aws.py against botocore itself: the same signatures, the same endpoints for every region
botocore knows, and botocore left unimported when the config and the environment say it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.endpoint_provider import EndpointProvider
from botocore.loaders import create_loader

from sinks.aws import Keys, logs_endpoint, signed_headers

REPO = Path(__file__).resolve().parents[1]
HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Logs_20140328.PutLogEvents"}


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("https://logs.eu-west-1.amazonaws.com", None),
        ("https://logs.eu-west-1.amazonaws.com", "FwoGZXIvYXdzEJr//session+token=="),
        ("http://127.0.0.1:4566", None),
    ],
)
def test_a_signature_is_the_one_botocore_makes(url: str, token: str | None) -> None:
    keys = Keys("AKIDEXAMPLE000000001", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"logGroupName":"/app","logStreamName":"s","logEvents":[{"timestamp":1,"message":"caf\xc3\xa9"}]}'
    now = time.time()
    ours = signed_headers(keys, "eu-west-1", url.split("://")[1], body, {**HEADERS, "X-Extra": "  a   b "}, now)

    request = AWSRequest("POST", url, data=body, headers={**HEADERS, "X-Extra": "  a   b "})
    signer = SigV4Auth(Credentials(keys.access_key_id, keys.secret_access_key, token), "logs", "eu-west-1")
    request.context["timestamp"] = ours["X-Amz-Date"]  # the same second: botocore takes it from here
    signer.add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")
    assert keys.secret_access_key not in repr(keys) and (token is None or token not in repr(keys))


def botocore_endpoint(provider: EndpointProvider, region: str, fips: bool, dual_stack: bool) -> str:
    return str(provider.resolve_endpoint(Region=region, UseFIPS=fips, UseDualStack=dual_stack).url)


def test_every_region_botocore_knows_resolves_to_botocores_endpoint() -> None:
    loader = create_loader()
    partitions = loader.load_data("partitions")
    provider = EndpointProvider(loader.load_service_model("logs", "endpoint-rule-set-1"), partitions)
    regions = [region for partition in partitions["partitions"] for region in partition["regions"]]
    regions += ["us-west-9", "cn-southwest-7", "us-gov-south-3", "xx-nowhere-1"]  # by each partition's pattern
    assert len(regions) > 40
    for region in regions:
        for fips in (False, True):
            for dual_stack in (False, True):
                expected = botocore_endpoint(provider, region, fips, dual_stack)
                assert logs_endpoint(region, fips, dual_stack) == expected, (region, fips, dual_stack)


def resolved_in_a_fresh_process(environ: dict[str, str], options: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Which provider, region and endpoint the sink resolves, and whether botocore got imported, in
    a process of its own (this one imported botocore already)."""
    script = f"""
import json, sys
from shipper.config import config_from_dict
from sinks import build_sink
table = {{"type": "cloudwatch", "inputs": ["app"], "log_group": "/app", **{options!r}}}
config = config_from_dict({{"sources": {{"app": {{"type": "stdin"}}}}, "sinks": {{"cw": table}}}}, environ={{}})
config.sinks["cw"].preflight("sinks.cw")
sink = build_sink("cw", config.sinks["cw"])
aws = sink._connect()
signed = sink._signed(b"{{}}")
print(json.dumps({{"provider": aws.provider, "region": aws.region, "endpoint": aws.endpoint,
    "botocore": "botocore" in sys.modules, "authorization": signed["Authorization"][:49]}}))
"""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base |= {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
             "AWS_EC2_METADATA_DISABLED": "true", **environ}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=base, capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_keys_and_a_region_from_the_environment_need_no_botocore(tmp_path: Path) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE000000001", "AWS_SECRET_ACCESS_KEY": "secret"}
    env_only = resolved_in_a_fresh_process({**keys, "AWS_DEFAULT_REGION": "eu-central-1"}, {}, tmp_path)
    assert env_only == {
        "provider": "env",
        "region": "eu-central-1",
        "endpoint": "https://logs.eu-central-1.amazonaws.com",
        "botocore": False,
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE000000001/",
    }
    fips = resolved_in_a_fresh_process(
        {**keys, "AWS_REGION": "us-gov-west-1", "AWS_USE_FIPS_ENDPOINT": "true"}, {}, tmp_path
    )
    assert fips["endpoint"] == "https://logs.us-gov-west-1.amazonaws.com" and not fips["botocore"]


def test_a_profile_or_an_aws_config_file_goes_through_botocores_chain(tmp_path: Path) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile ops]\nregion = ap-southeast-2\n[default]\nregion = sa-east-1\n")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[ops]\naws_access_key_id = AKIDPROFILE000000001\naws_secret_access_key = s\n")
    files = {"AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    profiled = resolved_in_a_fresh_process(files, {"profile": "ops"}, tmp_path)
    assert profiled["botocore"] and profiled["region"] == "ap-southeast-2"
    assert profiled["provider"] == "shared-credentials-file"
    assert profiled["authorization"].endswith("Credential=AKIDPROFILE000000001/")
    keys = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE000000001", "AWS_SECRET_ACCESS_KEY": "secret"}
    with_file = resolved_in_a_fresh_process({**keys, "AWS_CONFIG_FILE": str(config)}, {}, tmp_path)
    assert with_file["botocore"] and with_file["region"] == "sa-east-1" and with_file["provider"] == "env"
