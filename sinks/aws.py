"""AWS access for the CloudWatch sink: the credentials, region and endpoint of the standard chain,
and SigV4 signatures, with botocore imported only where it is needed.

botocore is needed for a named profile, the AWS config and credentials files, and the providers
that fetch and refresh credentials (container and instance roles, web identity, SSO, credential
processes). Keys given in the sink's config or in the environment (the chain's first provider,
read as botocore reads it), a region from the config or AWS_REGION / AWS_DEFAULT_REGION, and the
endpoint (by CloudWatch Logs' endpoint rules over botocore's own partitions data, read as JSON)
need nothing of it: an agent set up that way runs without botocore's ~8 MiB (about 150 modules,
and an AWSRequest built for every signature). boto3 serves the rare control-plane calls and
`shipper check` either way, imported when first needed.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipper import __version__

if TYPE_CHECKING:
    from sinks.cloudwatch import CloudWatchConfig

SERVICE = "logs"
# What the standard chain looks in, in its order (botocore's names are what `provider` reports).
CHAIN = "env, shared config and profile, container role, instance role, web identity"


class NoRegion(Exception):
    """Neither the config nor the standard chain names a region (preflight checks it first)."""


class NoCredentials(Exception):
    """The standard chain found no credentials, or failed to get them (its words say which)."""


@dataclass(frozen=True, slots=True)
class Keys:
    """One set of credentials, as a request is signed with it."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def signed_headers(
    keys: Keys, region: str, host: str, body: bytes, headers: dict[str, str], now: float
) -> dict[str, str]:
    """`headers` and Host, X-Amz-Date (and the session token) of a POST of `body` to "/" of `host`,
    signed with SigV4 for CloudWatch Logs in `region` at time `now`: the algorithm of AWS's
    "Create a signed AWS API request" for the one request shape the sink sends."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    day = amz_date[:8]
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed |= {"host": host, "x-amz-date": amz_date}
    if keys.session_token:
        signed["x-amz-security-token"] = keys.session_token
    names = sorted(signed)
    canonical = "\n".join(
        ["POST", "/", "", *(f"{name}:{signed[name]}" for name in names), "", ";".join(names), _sha256(body)]
    )
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{_sha256(canonical.encode())}"
    key = f"AWS4{keys.secret_access_key}".encode()
    for part in (day, region, SERVICE, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={keys.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    out = {**headers, "Host": host, "X-Amz-Date": amz_date, "Authorization": authorization}
    if keys.session_token:
        out["X-Amz-Security-Token"] = keys.session_token
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------- the chain


class Aws:
    """What the standard chain resolved for one sink: its region, endpoint, CA bundle, where the
    credentials come from, and the credentials themselves (refreshed by botocore for roles)."""

    region: str
    endpoint: str
    ca_bundle: str | None
    provider: str  # as botocore names it: env, shared-credentials-file, assume-role, iam-role, ...

    def __init__(self, config: CloudWatchConfig) -> None:
        self._config = config
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def resolve(config: CloudWatchConfig) -> Aws:
        """Without botocore when the config and the environment say it all; else through it."""
        return StaticAws(config) if StaticAws.suffices(config) else ChainAws(config)

    def keys(self) -> Keys:
        """The current credentials (may block: a role's are fetched again as they near expiry)."""
        raise NotImplementedError

    def session(self) -> Any:
        """A botocore session holding these credentials and region, for boto3 clients."""
        raise NotImplementedError

    @property
    def verify(self) -> str | bool | None:
        return False if not self._config.tls_verify else self.ca_bundle

    def client(self, service: str) -> Any:
        """The boto3 client of `service` ("logs" at this sink's endpoint, "sts"), made once: the
        control plane is rare, and a client's service model costs ~12 MiB."""
        with self._lock:
            if service not in self._clients:
                import boto3
                from botocore.config import Config

                timeout = self._config.request_timeout
                self._clients[service] = boto3.session.Session(
                    botocore_session=self.session(), region_name=self.region
                ).client(
                    service,
                    endpoint_url=self.endpoint if service == "logs" else None,
                    verify=self.verify,
                    config=Config(
                        retries={"mode": "standard", "max_attempts": 3},
                        connect_timeout=min(10.0, timeout),
                        read_timeout=timeout,
                        user_agent_extra=f"shipper/{__version__}",
                    ),
                )
            return self._clients[service]


class StaticAws(Aws):
    """Keys from the sink's config or the environment, nothing read from AWS's files."""

    def __init__(self, config: CloudWatchConfig) -> None:
        super().__init__(config)
        keys = configured_keys(config)
        if keys is not None:
            self._keys, self.provider = keys, "explicit"
        else:
            environ = os.environ
            token = environ.get("AWS_SESSION_TOKEN") or environ.get("AWS_SECURITY_TOKEN") or None
            self._keys = Keys(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"], token)
            self.provider = "env"
        region = config.region or environment_region()
        assert region is not None  # `suffices` checked
        self.region = region
        self.ca_bundle = str(config.ca_bundle) if config.ca_bundle else os.environ.get("AWS_CA_BUNDLE") or None
        self.endpoint = config.endpoint_url or logs_endpoint(
            region, _flag("AWS_USE_FIPS_ENDPOINT"), _flag("AWS_USE_DUALSTACK_ENDPOINT")
        )

    @staticmethod
    def suffices(config: CloudWatchConfig) -> bool:
        """No profile, no AWS config file (it may set the region, FIPS, dual-stack, a CA bundle),
        a region named, and static keys given or in the environment (without an expiry, which
        botocore's environment provider would refresh)."""
        if config.profile is not None or _aws_config_file().exists():
            return False
        if not (config.region or environment_region()):
            return False
        if config.access_key_id is not None:
            return True
        environ = os.environ
        return bool(environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY")) and not environ.get(
            "AWS_CREDENTIAL_EXPIRATION"
        )

    def keys(self) -> Keys:
        return self._keys

    def session(self) -> Any:
        import botocore.session

        core = botocore.session.Session()
        _hand_to(core, self._keys)
        return core


class ChainAws(Aws):
    """botocore's standard chain: profiles, AWS's files, roles, web identity, SSO."""

    def __init__(self, config: CloudWatchConfig) -> None:
        from botocore.exceptions import BotoCoreError

        super().__init__(config)
        try:
            self._resolve(config)
        except BotoCoreError as exc:  # a profile missing, a file unreadable, a provider failing
            raise NoCredentials(f"{type(exc).__name__}: {exc}") from None

    def _resolve(self, config: CloudWatchConfig) -> None:
        import botocore.session

        core = botocore.session.Session(profile=config.profile)
        keys = configured_keys(config)
        if keys is not None:
            _hand_to(core, keys)
        region = config.region or chain_region(core)
        if not region:
            raise NoRegion("no AWS region: set `region`, AWS_REGION / AWS_DEFAULT_REGION, or one in the AWS profile")
        self.region = region
        self._credentials: Any = core.get_credentials()  # RefreshableCredentials for roles; None: none found
        self.provider = str(getattr(self._credentials, "method", "unknown"))
        self.ca_bundle = str(config.ca_bundle) if config.ca_bundle else core.get_config_variable("ca_bundle")
        fips, dual_stack = (
            core.get_config_variable("use_fips_endpoint"),
            core.get_config_variable("use_dualstack_endpoint"),
        )
        self.endpoint = config.endpoint_url or logs_endpoint(region, bool(fips), bool(dual_stack))
        self._core = core

    def keys(self) -> Keys:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._credentials is None:
            raise NoCredentials(f"no AWS credentials found (looked in: {CHAIN})")
        try:
            frozen = self._credentials.get_frozen_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise NoCredentials(f"{type(exc).__name__}: {exc}") from None
        return Keys(frozen.access_key, frozen.secret_key, frozen.token)

    def session(self) -> Any:
        return self._core


def configured_keys(config: CloudWatchConfig) -> Keys | None:
    """The keys the sink's config gives (by reference: `${VAR}` or `${file:PATH}`), if any."""
    if config.access_key_id is None or config.secret_access_key is None:
        return None
    token = config.session_token.get_secret_value() if config.session_token else None
    return Keys(config.access_key_id.get_secret_value(), config.secret_access_key.get_secret_value(), token)


def _hand_to(core: Any, keys: Keys) -> None:
    """Give a botocore session `keys` as its credentials (for boto3 clients made from it)."""
    core.set_credentials(keys.access_key_id, keys.secret_access_key, keys.session_token)


def environment_region() -> str | None:
    """AWS_REGION (what AWS's runtimes set, and most SDKs read first), else AWS_DEFAULT_REGION."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def chain_region(core: Any) -> str | None:
    """The region the environment names, else the profile's (botocore's chain)."""
    return os.environ.get("AWS_REGION") or core.get_config_variable("region")


def _aws_config_file() -> Path:
    return Path(os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


# ---------------------------------------------------------------------------------- endpoints


def logs_endpoint(region: str, fips: bool, dual_stack: bool) -> str:
    """CloudWatch Logs' endpoint for `region`, by its endpoint rules (botocore's
    logs/endpoint-rule-set-1.json) over the partitions botocore knows: the one endpoint both
    resolve to (tests/test_aws.py compares them for every region botocore knows)."""
    outputs = _partition(region)
    if fips and not dual_stack and region in ("us-gov-east-1", "us-gov-west-1"):
        return f"https://logs.{region}.amazonaws.com"
    suffix = outputs["dualStackDnsSuffix"] if dual_stack else outputs["dnsSuffix"]
    return f"https://{'logs-fips' if fips else 'logs'}.{region}.{suffix}"


def _partition(region: str) -> dict[str, Any]:
    partitions = _partitions()
    for partition in partitions:
        if region in partition["regions"]:
            return dict(partition["outputs"])
    for partition in partitions:
        if re.match(partition["regionRegex"], region):
            return dict(partition["outputs"])
    return dict(partitions[0]["outputs"])  # an unknown region: the aws partition, as botocore does


@cache
def _partitions() -> list[dict[str, Any]]:
    """botocore's partitions data (which regions, DNS suffixes), read as a file: importing botocore
    to read it would cost what this module saves."""
    spec = importlib.util.find_spec("botocore")
    assert spec is not None and spec.origin is not None
    data: list[dict[str, Any]] = json.loads((Path(spec.origin).parent / "data" / "partitions.json").read_text())[
        "partitions"
    ]
    return data
