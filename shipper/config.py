"""Configuration: TOML, `${VAR}` / `${VAR:-default}` / `${file:PATH}` / `${credential:NAME}` interpolation,
validation.

Every error names the dotted key path and, where it can be found, the TOML line, so a user never
has to read a traceback to fix a typo. Source and sink types register their own models
(`sources.REGISTRY`, `sinks.REGISTRY`); this module holds what they share.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import socket
import tomllib
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shipper.errors import ConfigError
from shipper.registry import Registry
from shipper.units import Duration, Size

DEFAULT_PATHS = ("./config.toml", "/etc/shipper/config.toml")


class Strict(BaseModel):
    """Base for every config table: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def preflight(self, key: str) -> None:
        """Checks that need the machine, not just the file (paths); raise ConfigError naming `key`."""


def check_writable(path: Path, key: str) -> None:
    """That shipper can create and append to the file at `path` (missing directories included),
    else a ConfigError naming `key`."""
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # missing directories are created below the first existing one
    if not directory.is_dir():
        raise ConfigError(key, f"cannot write {str(path)!r}: {str(directory)!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot write {str(path)!r}: {str(directory)!r} is not writable")


def time_zone(name: str) -> ZoneInfo:
    """The zone an IANA name such as "Europe/Berlin" names; ValueError saying so otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown time zone {name!r} (an IANA name such as "Europe/Berlin")') from None


def _zone_name(name: str) -> str:
    time_zone(name)
    return name


ZoneName = Annotated[str, AfterValidator(_zone_name)]  # an IANA time zone name, checked


# ---------------------------------------------------------------- agent-wide tables


class DeadLetterConfig(Strict):
    """Where a sink parks the events its destination refused for good (shipper/pipeline/deadletter.py): in
    `[agent]` the default for every sink, in a sink its own settings over that default, key by key."""

    enabled: bool = True
    path: Path | None = None  # default: <state_dir>/dead_letter/<sink>.ndjson
    max_bytes: Size = Field(default=64 * 1024 * 1024, gt=0)  # a file rotates past this size
    max_files: int = Field(default=5, ge=1, le=1000)  # rotated files kept beside the live one


class AgentConfig(Strict):
    state_dir: Path = Path("./state")
    shutdown_timeout: Duration = 30.0
    host: str = Field(default_factory=socket.gethostname)
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    # Processes that parse and encode beside the agent's own (shipper/workers.py); `auto` is one
    # per usable CPU beyond the first (affinity and cgroup quota), at most 4, within a cgroup
    # memory limit (256 MiB for the first, 64 MiB more for each next one).
    parse_workers: int | str = "auto"
    dead_letter: DeadLetterConfig | None = None  # off unless a table is given (here or in a sink)
    # How soon an acknowledged position is on disk: saves are coalesced to at most one per interval
    # (an fsync each), and none while nothing moved. A kill -9 re-sends what was acknowledged since.
    checkpoint_interval: Duration = Field(default=0.05, gt=0, le=60)

    @field_validator("parse_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | str:
        if value == "auto" or (type(value) is int and 0 <= value <= 64):
            return value  # type: ignore[no-any-return]
        raise ValueError(f'expected "auto" or a number of processes from 0 to 64, got {value!r}')


class ApiConfig(Strict):
    enabled: bool = False
    address: str = "127.0.0.1:8686"
    # /health/ready is about shipper itself (started, not draining) unless this is set: a sidecar's
    # readiness gates its whole pod, and a destination's outage must not take the API out of service.
    ready_requires_healthy_sinks: bool = False

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value


class RedactPattern(Strict):
    name: str
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class RedactConfig(Strict):
    enabled: bool = True
    emails: bool = False
    phones: bool = False
    fields: list[str] = []
    patterns: list[RedactPattern] = []


# ---------------------------------------------------------------- filters and transforms (sources and sinks)


LevelName = Literal["trace", "debug", "info", "warn", "error", "fatal"]


class WhenConfig(Strict):
    """An event filter (a sink's route, a `drop` transform); every condition given must hold."""

    level: LevelName | None = None
    equals: dict[str, str | int | float | bool] = {}
    matches: dict[str, str] = {}

    @field_validator("matches")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for field, regex in value.items():
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"invalid regular expression for {field!r}: {exc}") from None
        return value


def _field_path(path: str) -> str:
    if not path or "" in path.split("."):
        raise ValueError(f"expected a field name or dotted path such as req.headers.cookie, got {path!r}")
    return path


FieldPath = Annotated[str, AfterValidator(_field_path)]  # `res.statusCode`: a field, or a nested one


def _dates_as_text(value: Any) -> Any:
    """TOML dates and times as RFC 3339 text: an event's fields are JSON."""
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _dates_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_dates_as_text(item) for item in value]
    return value


class DropTransform(Strict):
    """Drop the events `when` matches (counted)."""

    type: Literal["drop"]
    when: WhenConfig

    @field_validator("when")
    @classmethod
    def _some_condition(cls, value: WhenConfig) -> WhenConfig:
        if value.level is None and not value.equals and not value.matches:
            raise ValueError("give level, equals or matches: an empty when would drop every event")
        return value


class SampleTransform(Strict):
    """Keep 1 event in `rate` (counted), by arrival or, with `key`, by a hash of that field's value
    (every event of a kept trace); events at or above `keep_level` are always kept."""

    type: Literal["sample"]
    rate: int = Field(ge=1)
    key: FieldPath | None = None
    keep_level: Literal["trace", "debug", "info", "warn", "error", "fatal", "none"] = "error"


class SetTransform(Strict):
    """Set `field` to `value`; with `overwrite = false`, only where the field is missing."""

    type: Literal["set"]
    field: FieldPath
    value: Annotated[JsonValue, BeforeValidator(_dates_as_text)]
    overwrite: bool = True


class RemoveTransform(Strict):
    type: Literal["remove"]
    fields: list[FieldPath] = Field(min_length=1)


class RenameTransform(Strict):
    """Move the value at `from` to `to` (replacing what `to` held)."""

    type: Literal["rename"]
    from_: FieldPath = Field(alias="from")
    to: FieldPath

    @field_validator("to")
    @classmethod
    def _elsewhere(cls, value: str, info: ValidationInfo) -> str:
        old = info.data.get("from_")
        if old is not None and (value == old or value.startswith(old + ".")):
            raise ValueError(f"cannot move {old!r} to itself or into itself")
        return value


TransformConfig = Annotated[
    DropTransform | SampleTransform | SetTransform | RemoveTransform | RenameTransform, Field(discriminator="type")
]


# ---------------------------------------------------------------- sources


class MultilineConfig(Strict):
    flush_timeout: Duration = 1.0
    max_bytes: Size = 1024 * 1024
    max_lines: int = Field(default=1000, ge=1)


class SourceConfig(Strict):
    """Options every source has; a source type subclasses it with its own."""

    type: str
    service: str | None = None
    format: Literal["auto", "pino", "nest", "nest-json", "pino-pretty", "text"] = "auto"
    timezone: ZoneName | None = None
    multiline: MultilineConfig = MultilineConfig()
    max_line_bytes: Size = 1024 * 1024
    transforms: list[TransformConfig] = []  # applied in order to every event (shipper/pipeline/transforms.py)

    def warnings(self, key: str) -> list[ConfigError]:
        """What is valid in this source's table but almost surely a mistake (a poll interval its API's
        rate limit cannot serve), each naming its key below `key`."""
        return []


# ---------------------------------------------------------------- sinks

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


# A sink's buffer in memory when `buffer.max_bytes` is unset: the working set between the parse and
# the requests in flight (a few batches), not the place for a backlog. A tailed file keeps its backlog
# in the file; input that cannot be read again spills to the disk buffer past it. Measured: 4 MiB
# sends as fast as 16 or 32 (the bench's sinks keep up either way) at 20-30 MiB less peak RSS.
MEMORY_BUFFER_BYTES = 4 * 1024 * 1024
DISK_BUFFER_BYTES = 1024 * 1024 * 1024


class BufferConfig(Strict):
    """A sink's buffer (shipper/pipeline/channel.py). In memory by default: `max_bytes` of estimated
    memory (shipper/event.py; the sink's default when unset), then replayable sources wait
    (`when_full = "block"`) or lose the newest (`drop_newest`), while sources that cannot be read
    again spill to disk up to `spill_max_bytes` (0: never). `type = "disk"`: every event is written
    to disk first, `max_bytes` is the bound on disk (default 1 GiB) and memory holds the sink's
    default as read-ahead."""

    type: Literal["memory", "disk"] = "memory"
    max_bytes: Size | None = None
    when_full: Literal["block", "drop_newest"] = "block"
    spill_max_bytes: Size = 256 * 1024 * 1024
    fsync: Literal["interval", "always", "never"] = "interval"
    fsync_interval: Duration = Field(default=1.0, gt=0)


class BatchConfig(Strict):
    max_events: int | None = Field(default=None, ge=1)
    max_bytes: Size | None = None
    timeout: Duration | None = None  # the longest an event waits for its batch to fill
    idle: Duration | None = None  # a batch leaves once no event came for this long (input paused)


class RetryConfig(Strict):
    initial_backoff: Duration = 0.5
    max_backoff: Duration = 30.0


class SinkConfig(Strict):
    """Options every sink has; a sink type subclasses it with its own."""

    # Keys holding secrets that may only be given as `${VAR}` or `${file:PATH}`, never written out
    # in the config file (which ends up in backups, images and version control).
    by_reference_only: ClassVar[tuple[str, ...]] = ()

    type: str
    inputs: list[str] = Field(min_length=1)
    when: WhenConfig | None = None
    buffer: BufferConfig = BufferConfig()
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    concurrency: int = Field(default=2, ge=1, le=64)
    # Failed sends with no success for this long turn the sink from degraded to failing
    # (shipper/health.py); a destination refusing shipper (401/403) fails it at once.
    unhealthy_after: Duration = 30.0
    dead_letter: DeadLetterConfig | None = None

    @property
    def memory_bytes(self) -> int:
        """The bound of this sink's buffer in memory."""
        buffer = self.buffer
        return buffer.max_bytes if buffer.type == "memory" and buffer.max_bytes else MEMORY_BUFFER_BYTES

    @property
    def disk_bytes(self) -> int:
        """The bound of this sink's disk buffer (0: none)."""
        buffer = self.buffer
        if buffer.type == "disk":
            return buffer.max_bytes or DISK_BUFFER_BYTES
        return buffer.spill_max_bytes


class HttpSinkConfig(SinkConfig):
    """What every HTTP-based sink shares."""

    # Each request waits several event-loop turns (gzip hand-off, write, response) while the loop
    # parses: with two in flight the Datadog bench filled its buffer at 42k records/s, four gave 66k.
    concurrency: int = Field(default=4, ge=1, le=64)
    compression: Literal["gzip", "none"] = "gzip"
    compression_level: int = Field(default=1, ge=0, le=3)  # ISA-L levels: 0 fastest .. 3 smallest
    request_timeout: Duration = 30.0
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, str]) -> dict[str, str]:
        """Each a valid header line: a token for a name, no line break in a value (a secret file's
        trailing newline would otherwise end the header and start another)."""
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of header {name!r} holds a line break")
        return value


# ---------------------------------------------------------------- the whole file


class Config(Strict):
    agent: AgentConfig = AgentConfig()
    api: ApiConfig = ApiConfig()
    redact: RedactConfig = RedactConfig()
    sources: dict[str, SourceConfig]
    sinks: dict[str, SinkConfig]
    path: Path | None = None


TOP_LEVEL_KEYS = ("agent", "api", "redact", "sources", "sinks")


def _check_inputs(sources: dict[str, Any], sinks: dict[str, Any]) -> None:
    for name, sink in sinks.items():
        for index, source in enumerate(sink.inputs):
            if source not in sources:
                known = ", ".join(sorted(sources)) or "none"
                raise ConfigError(f"sinks.{name}.inputs[{index}]", f"no source named {source!r} (sources: {known})")


def _check_by_reference(written: dict[str, Any], sinks: dict[str, Any]) -> None:
    """Secrets a sink takes only by reference (`SinkConfig.by_reference_only`) were not written out."""
    for name, sink in sinks.items():
        for key in sink.by_reference_only:
            value = written[name].get(key)
            if isinstance(value, str) and "${" not in value:
                raise ConfigError(f"sinks.{name}.{key}", "give this secret as ${VAR} or ${file:PATH}, not in the file")


def _check_one_stdin(sources: dict[str, Any]) -> None:
    """A process has one standard input: a second stdin source would steal lines from the first."""
    readers = [name for name, source in sources.items() if source.type == "stdin"]
    if len(readers) > 1:
        first, second = readers[:2]
        raise ConfigError(
            f"sources.{second}.type",
            f"sources.{first} already reads stdin; only one source can (two would split its lines between them)",
        )


def dead_letter_config(config: Config, sink: str) -> DeadLetterConfig | None:
    """The dead-letter settings of `sink`: its own table over `[agent]`'s, key by key, with the
    path filled in; None when neither table is given or the result is disabled."""
    default, own = config.agent.dead_letter, config.sinks[sink].dead_letter
    if default is None and own is None:
        return None
    update = {key: getattr(own, key) for key in own.model_fields_set} if own is not None else {}
    settings = (default or DeadLetterConfig()).model_copy(update=update)
    if not settings.enabled:
        return None
    if settings.path is None:
        settings = settings.model_copy(update={"path": config.agent.state_dir / "dead_letter" / f"{sink}.ndjson"})
    return settings


def _check_dead_letters(config: Config) -> None:
    """One writer per dead-letter file: a path is a sink's own, never shared or set for all sinks."""
    if config.agent.dead_letter is not None and config.agent.dead_letter.path is not None:
        raise ConfigError(
            "agent.dead_letter.path",
            "set a path per sink (sinks.<name>.dead_letter.path); each sink's default is "
            "<state_dir>/dead_letter/<sink>.ndjson",
        )
    writers: dict[Path, str] = {}
    for name in config.sinks:
        settings = dead_letter_config(config, name)
        if settings is None or settings.path is None:
            continue
        path = Path(os.path.abspath(settings.path))
        if path in writers:
            raise ConfigError(f"sinks.{name}.dead_letter.path", f"sinks.{writers[path]} already writes {str(path)!r}")
        writers[path] = name


def config_warnings(config: Config) -> list[ConfigError]:
    """What is valid but almost surely a mistake: `shipper validate` prints these, the agent logs them."""
    read = {source for sink in config.sinks.values() for source in sink.inputs}
    unread = [
        ConfigError(f"sources.{name}", "no sink reads this source (name it in a sink's inputs): its events go nowhere")
        for name in config.sources
        if name not in read
    ]
    own = [warning for name, source in config.sources.items() for warning in source.warnings(f"sources.{name}")]
    return unread + own + _orphaned_buffers(config)


def _orphaned_buffers(config: Config) -> list[ConfigError]:
    """Disk buffers holding undelivered events of a sink no longer configured (renamed, removed):
    nothing would ever send them, so say so rather than leave them silently on disk."""
    buffers = config.agent.state_dir / "buffers"
    try:
        directories = [entry for entry in buffers.iterdir() if entry.is_dir() and entry.name not in config.sinks]
    except OSError:
        return []
    orphans = []
    for directory in sorted(directories):
        held = sum(segment.stat().st_size for segment in directory.glob("*.seg"))
        if held:
            orphans.append(
                ConfigError(
                    "sinks",
                    f"the disk buffer {directory} holds {held} bytes of undelivered events of a sink named "
                    f"{directory.name!r}, which is not configured: add [sinks.{directory.name}] back to deliver "
                    "them, or delete the directory",
                )
            )
    return orphans


def _unknown_key(key: str, known: Any) -> str:
    """The problem with an unknown key, naming the nearest valid one when it is close (max_byte -> max_bytes)."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key; did you mean {close[0]}?" if close else "unknown key"


def _tables_along(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[list[int | str], list[type[BaseModel]]]:
    """A pydantic error location below `model` as the config's key path, and the tables the key
    it ends at may be (several: a list of tagged tables such as transforms, whose `type` is not
    known). Pydantic puts the tag of a tagged table in the location (`transforms.1.sample.rate`);
    the user wrote `transforms[1].rate`, so the tag only chooses the table."""
    path: list[int | str] = []
    tables = [model]
    for part in loc:
        if isinstance(part, str) and len(tables) > 1:
            tagged = [table for table in tables if part in _tags(table)]
            if tagged:
                tables = tagged
                continue
        path.append(part)
        if isinstance(part, int) or not tables:
            continue  # an index into a list of tables, or a key below the last table
        field = _fields_by_key(tables[0]).get(part)
        tables = _models_in(field.annotation) if field is not None else []
    return path, tables


def _fields_by_key(model: type[BaseModel]) -> dict[str, Any]:
    """A table's fields by the key a user writes (`from`, not the attribute `from_`)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _tags(model: type[BaseModel]) -> tuple[Any, ...]:
    """The `type` values a tagged table accepts (none for an untagged one)."""
    field = model.model_fields.get("type")
    return get_args(field.annotation) if field is not None and get_origin(field.annotation) is Literal else ()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config table types inside an annotation such as `WhenConfig | None`, `list[RedactPattern]`
    or a list of tagged tables."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


# ---------------------------------------------------------------- loading


_INTERPOLATION = re.compile(r"\$\$|\$\{([^}]*)\}")
Environ = dict[str, str] | os._Environ[str]


def environ_of(info: ValidationInfo) -> Environ:
    """The environment a config is read in (`config_from_dict(environ=...)`), for defaults taken from it."""
    context = info.context or {}
    return context.get("environ", os.environ)  # type: ignore[no-any-return]


def interpolate(value: str, key: str, environ: Environ) -> str:
    """Expand `${VAR}`, `${VAR:-default}`, `${file:PATH}` and `${credential:NAME}` (a systemd credential,
    `LoadCredential=NAME:...`, read from `$CREDENTIALS_DIRECTORY/NAME`); `$$` is a literal `$`."""

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group(1)
        if expr.startswith("file:"):
            return _secret_file(Path(expr[5:]), key)
        if expr.startswith("credential:"):
            return _credential(expr.removeprefix("credential:"), key, environ)
        name, sep, default = expr.partition(":-")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(key, f"invalid interpolation ${{{expr}}}")
        if name in environ and (environ[name] or not sep):
            return environ[name]
        if sep:
            return default
        raise ConfigError(key, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")

    return _INTERPOLATION.sub(expand, value)


def _secret_file(path: Path, key: str) -> str:
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {str(path)!r}: {exc.strerror}") from None


def _credential(name: str, key: str, environ: Environ) -> str:
    """A systemd credential's value. Names are plain file names: no path may escape the directory."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name in (".", ".."):
        raise ConfigError(key, f"invalid credential name {name!r} (a LoadCredential= name such as dd_api_key)")
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            key,
            f"${{credential:{name}}} needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with "
            f"LoadCredential={name}:PATH (outside systemd, use ${{file:PATH}})",
        )
    path = Path(directory) / name
    if not path.exists():
        raise ConfigError(key, f"no credential {name!r} in {directory!r} (add LoadCredential={name}:PATH to the unit)")
    return _secret_file(path, key)


def _interpolate_tree(node: Any, key: str, environ: Environ) -> Any:
    if isinstance(node, str):
        return interpolate(node, key, environ)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, f"{key}.{k}" if key else k, environ) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, f"{key}[{i}]", environ) for i, v in enumerate(node)]
    return node


# A key path's step: a name, and its index when it names one of an array of tables.
_Step = tuple[str, int | None]


def find_line(text: str, key: str) -> int | None:
    """Best-effort TOML line of a dotted key path (tomllib keeps no positions). In an array of
    tables (`[[sources.api.transforms]]`), `transforms[1]` is the second such header."""
    parts: list[_Step] = []
    for step in key.split("."):
        name, index = re.fullmatch(r"(.*?)(?:\[(\d+)\])*", step).groups()  # type: ignore[union-attr]
        if name:
            parts.append((name, int(index) if index is not None else None))
    lines = text.splitlines()
    best_line, best_depth, found_in_table = None, -1, False
    table: list[_Step] = []
    arrays: dict[tuple[str, ...], int] = {}  # headers of arrays of tables: how many seen so far
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", line)
        if header:
            names = tuple(p.strip().strip('"') for p in header.group(2).split("."))
            if header.group(1) == "[[":
                arrays[names] = arrays.get(names, 0) + 1
            # Each step that names an array of tables is in its latest element.
            prefixes = [names[: i + 1] for i in range(len(names))]
            table = [(name, arrays[at] - 1 if at in arrays else None) for name, at in zip(names, prefixes, strict=True)]
            found_in_table = False
            depth = _common_prefix(table, parts)
            if depth == min(len(table), len(parts)) and depth > best_depth:
                best_line, best_depth = number, depth
            continue
        assign = re.match(r'^("?[A-Za-z0-9_.\-"]+"?)\s*=', line)
        if assign and not found_in_table:
            full = table + [(p.strip('"'), None) for p in assign.group(1).split(".")]
            depth = _common_prefix(full, parts)
            if depth > best_depth and depth > len(table) - 1 and _common_prefix(table, parts) == len(table):
                best_line, best_depth = number, depth
                found_in_table = depth == len(parts)
    return best_line


def _common_prefix(a: list[_Step], b: list[_Step]) -> int:
    """How many leading steps match: the same name, and the same index where both have one."""
    n = 0
    for (name, index), (other, other_index) in zip(a, b, strict=False):
        if name != other or (index is not None and other_index is not None and index != other_index):
            break
        n += 1
    return n


def _error_key(loc: tuple[int | str, ...], prefix: str) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key


ModelT = TypeVar("ModelT", bound=Strict)


def _validate(model: type[ModelT], data: Any, prefix: str, environ: Environ | None = None) -> ModelT:
    """`data` as a `model`; a table whose defaults come from the environment (the Datadog sink's `DD_*`)
    reads `environ` from the validation context (see `environ_of`)."""
    try:
        return model.model_validate(data, context={"environ": os.environ if environ is None else environ})
    except ValidationError as exc:
        errors = exc.errors()
        # A mistyped key also leaves the key it meant missing: name the typo, it is the fix.
        error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path, tables = _tables_along(model, loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            _, tables = _tables_along(model, loc[:-1])
            message = _unknown_key(str(loc[-1]), _fields_by_key(tables[0]) if tables else [])
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # a tagged table's `type`
            known = ", ".join(tag for table in tables for tag in _tags(table))
            path.append("type")
            tag = (error.get("ctx") or {}).get("tag")
            message = f"unknown type {tag!r} (one of: {known})" if tag else f"required key is missing (one of: {known})"
        raise ConfigError(_error_key(tuple(path), prefix), message) from None


def _typed_tables(kind: str, tables: Any, registry: Registry[Any, Any], environ: Environ) -> dict[str, Any]:
    if not isinstance(tables, dict):
        raise ConfigError(kind, "expected a table")
    out: dict[str, Any] = {}
    known = ", ".join(registry.names)
    for name, table in tables.items():
        key = f"{kind}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(key, "expected a table")
        type_name = table.get("type")
        if type_name is None:
            raise ConfigError(f"{key}.type", f"required key is missing (one of: {known})")
        if type_name not in registry.modules:
            raise ConfigError(f"{key}.type", f"unknown {kind[:-1]} type {type_name!r} (one of: {known})")
        out[name] = _validate(registry.config_model(type_name), table, key, environ)
    return out


def parse_config(text: str, path: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Validate a TOML document into a Config, raising ConfigError with key and line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise ConfigError("(toml)", f"not valid TOML: {exc}", int(line.group(1)) if line else None, str(path)) from None
    try:
        return config_from_dict(raw, path, environ)
    except ConfigError as exc:
        if exc.line is None:
            exc.line = find_line(text, exc.key)
        raise


def config_from_dict(raw: dict[str, Any], path: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Validate an already-parsed document (TOML, or built in code as `shipper tail` does)."""
    from sinks import REGISTRY as SINKS
    from sources import REGISTRY as SOURCES

    try:
        for key in raw:  # first: `[sink.x]` for `[sinks.x]` is the real mistake, not "no sinks"
            if key not in TOP_LEVEL_KEYS:
                raise ConfigError(key, _unknown_key(key, TOP_LEVEL_KEYS))
        written = raw
        env = os.environ if environ is None else environ
        raw = _interpolate_tree(dict(raw), "", env)
        sources = _typed_tables("sources", raw.pop("sources", {}), SOURCES, env)
        sinks = _typed_tables("sinks", raw.pop("sinks", {}), SINKS, env)
        _check_by_reference(written.get("sinks", {}), sinks)
        if not sources:
            raise ConfigError("sources", "at least one source is required")
        if not sinks:
            raise ConfigError("sinks", "at least one sink is required")
        _check_one_stdin(sources)
        _check_inputs(sources, sinks)
        base = {k: raw[k] for k in ("agent", "api", "redact") if k in raw}
        config = _validate(Config, {**base, "sources": sources, "sinks": sinks, "path": path}, "")
        _check_dead_letters(config)
        return config
    except ConfigError as exc:
        exc.path = str(path) if path else None
        raise


def resolve_path(explicit: str | None) -> Path:
    """--config, else $SHIPPER_CONFIG, else ./config.toml, else /etc/shipper/config.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SHIPPER_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(DEFAULT_PATHS[0])


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    return parse_config(text, path)
