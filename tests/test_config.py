"""Config validation: every error names the key path and the TOML line; interpolation works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shipper.config import parse_config
from shipper.errors import ConfigError

BASE = """\
[agent]
state_dir = "{state}"

[sources.api]
type = "stdin"

[sinks.out]
type = "file"
inputs = ["api"]
path = "{state}/out.ndjson"
"""


def config_text(tmp_path: Path, extra: str = "", base: str = BASE) -> str:
    return base.format(state=tmp_path) + extra


def error_of(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("config.toml"), environ or {})
    return info.value


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """`shipper validate --config PATH` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "shipper", "validate", "--config", str(path)], capture_output=True, text=True
    )


def test_valid_config_has_defaults(tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path), None, {})
    sink = config.sinks["out"]
    assert sink.buffer.when_full == "block"
    assert config.agent.shutdown_timeout == 30.0
    assert config.sources["api"].format == "auto"


@pytest.mark.parametrize(
    ("extra", "key", "line", "words"),
    [
        ('colour = "red"\n', "sinks.out.colour", 11, "unknown key"),
        ('batch = { max_events = "lots" }\n', "sinks.out.batch.max_events", 11, "integer"),
        ('buffer = { max_bytes = "12 parsecs" }\n', "sinks.out.buffer.max_bytes", 11, "size"),
        ('retry = { initial_backoff = "soon" }\n', "sinks.out.retry.initial_backoff", 11, "duration"),
        ('when = { level = "loud" }\n', "sinks.out.when.level", 11, "trace"),
        ('when = { matches = { message = "(unclosed" } }\n', "sinks.out.when.matches", 11, "regular expression"),
    ],
)
def test_sink_errors_name_key_and_line(tmp_path: Path, extra: str, key: str, line: int, words: str) -> None:
    error = error_of(config_text(tmp_path, extra))
    assert error.key == key
    assert error.line == line
    assert words in error.message
    assert f"config.toml:{line}: {key}:" in str(error)


def test_missing_source_named_by_input(tmp_path: Path) -> None:
    text = config_text(tmp_path).replace('inputs = ["api"]', 'inputs = ["api", "nope"]')
    error = error_of(text)
    assert error.key == "sinks.out.inputs[1]"
    assert "nope" in error.message and error.line == 9


def test_unknown_types_and_missing_keys(tmp_path: Path) -> None:
    error = error_of(config_text(tmp_path).replace('type = "file"', 'type = "carrier-pigeon"'))
    assert error.key == "sinks.out.type" and "carrier-pigeon" in error.message and error.line == 8
    error = error_of(config_text(tmp_path).replace(f'path = "{tmp_path}/out.ndjson"\n', ""))
    assert error.key == "sinks.out.path" and error.message == "required key is missing"
    error = error_of(config_text(tmp_path) + "\n[surprise]\nx = 1\n")
    assert error.key == "surprise" and error.line == 12


def test_agent_errors(tmp_path: Path) -> None:
    error = error_of(config_text(tmp_path).replace('state_dir = "', 'shutdown_timeout = "forever"\nstate_dir = "'))
    assert error.key == "agent.shutdown_timeout" and error.line == 2


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    error = error_of(config_text(tmp_path) + "broken = = 1\n")
    assert error.line == 11 and "not valid TOML" in error.message


def test_interpolation(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    text = config_text(tmp_path).replace(
        'path = "',
        f'max_size = "${{SIZE:-2MiB}}"\nmax_files = "${{FILES}}"\nfsync = false\npath = "${{file:{secret}}}$$',
    )
    config = parse_config(text, None, {"FILES": "7"})
    sink = config.sinks["out"]
    assert sink.max_size == 2 * 1024 * 1024  # type: ignore[attr-defined]
    assert sink.max_files == 7  # type: ignore[attr-defined]
    assert str(sink.path).startswith("s3cr3t$")  # type: ignore[attr-defined]


def test_interpolation_errors_name_the_key(tmp_path: Path) -> None:
    text = config_text(tmp_path).replace('path = "', 'path = "${NOT_SET}')
    error = error_of(text)
    assert error.key == "sinks.out.path" and "NOT_SET" in error.message and error.line == 10
    text = config_text(tmp_path).replace('path = "', 'path = "${file:/nonexistent/secret}')
    error = error_of(text)
    assert error.key == "sinks.out.path" and "cannot read secret file" in error.message


def test_batch_above_destination_limit_is_rejected_by_validate(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, "batch = { max_events = 100000 }\n"))
    result = validate(path)
    assert result.returncode == 2
    assert "sinks.out.batch.max_events" in result.stderr and "at most 10000" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, "colour = 1\n"))
    result = validate(path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"shipper: invalid configuration: {path}:11: sinks.out.colour: unknown key"


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    path = tmp_path / "config.toml"
    path.write_text(BASE.format(state=blocker / "state"))
    result = validate(path)
    assert result.returncode == 2 and "agent.state_dir" in result.stderr


def test_bundled_config_is_valid() -> None:
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "shipper", "validate", "--config", str(repo / "config.toml")],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr
    assert "2 sink(s)" in result.stdout


def test_unknown_time_zone_is_a_config_error(tmp_path: Path) -> None:
    text = config_text(tmp_path).replace('type = "stdin"', 'type = "stdin"\ntimezone = "Mars/Olympus"')
    error = error_of(text)
    assert error.key == "sources.api.timezone" and "Mars/Olympus" in error.message and error.line == 6
    text = config_text(tmp_path).replace('type = "stdin"', 'type = "stdin"\ntimezone = "Europe/Berlin"')
    assert parse_config(text, None, {}).sources["api"].timezone == "Europe/Berlin"


def test_file_sink_path_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "config.toml"
    path.write_text(
        config_text(tmp_path).replace(f'path = "{tmp_path}/out.ndjson"', f'path = "{blocker}/sub/out.ndjson"')
    )
    result = validate(path)
    assert result.returncode == 2
    assert f"{path}:10: sinks.out.path: cannot write" in result.stderr and "is not a directory" in result.stderr


def test_a_second_stdin_source_is_an_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path).replace("[sinks.out]", '[sources.worker]\ntype = "stdin"\n\n[sinks.out]'))
    result = validate(path)
    assert result.returncode == 2
    assert f"{path}:8: sources.worker.type: sources.api already reads stdin" in result.stderr


def test_a_source_no_sink_reads_is_a_warning_from_validate(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    orphan = f'\n[sources.audit]\ntype = "file"\ninclude = ["{tmp_path}/audit/*.log"]\n'
    path.write_text(config_text(tmp_path, orphan))
    result = validate(path)
    assert result.returncode == 0 and result.stdout.startswith("config OK"), result.stderr
    assert result.stderr == f"shipper: warning: {path}:12: sources.audit: no sink reads this source" + (
        " (name it in a sink's inputs): its events go nowhere\n"
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("batch = { max_byte = 1024 }\n", "11: sinks.out.batch.max_byte: unknown key; did you mean max_bytes?"),
        ('when = { levl = "warn" }\n', "11: sinks.out.when.levl: unknown key; did you mean level?"),
        (
            "\n[[redact.patterns]]\nname = \"order\"\nregx = 'ord_[0-9]+'\n",
            "14: redact.patterns[0].regx: unknown key; did you mean regex?",
        ),
        ('\n[sink.errors]\ntype = "file"\n', "12: sink: unknown key; did you mean sinks?"),
    ],
)
def test_unknown_keys_suggest_the_nearest_valid_one(tmp_path: Path, extra: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, extra))
    result = validate(path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"shipper: invalid configuration: {path}:{expected}"), result.stderr


TWO_SINKS = BASE + '[sinks.other]\ntype = "file"\ninputs = ["api"]\npath = "{state}/other.ndjson"\n'


def test_dead_letters_are_off_unless_asked_for_and_a_sink_overrides_the_agent_default_key_by_key(
    tmp_path: Path,
) -> None:
    from shipper.config import dead_letter_config

    assert dead_letter_config(parse_config(config_text(tmp_path), None, {}), "out") is None
    text = config_text(tmp_path, base=TWO_SINKS).replace(
        'state_dir = "', 'dead_letter = { max_bytes = "1MiB", max_files = 2 }\nstate_dir = "'
    )
    text += 'dead_letter = { max_files = 9, path = "{state}/dl/other.jsonl" }\n'.replace("{state}", str(tmp_path))
    config = parse_config(text, None, {})
    out, other = dead_letter_config(config, "out"), dead_letter_config(config, "other")
    assert out is not None and other is not None
    assert (out.path, out.max_bytes, out.max_files) == (tmp_path / "dead_letter" / "out.ndjson", 1 << 20, 2)
    assert (other.path, other.max_bytes, other.max_files) == (tmp_path / "dl" / "other.jsonl", 1 << 20, 9)
    off = parse_config(text.replace("max_files = 9,", "enabled = false, max_files = 9,"), None, {})
    assert dead_letter_config(off, "other") is None and dead_letter_config(off, "out") is not None


@pytest.mark.parametrize(
    ("agent", "sinks", "key", "words"),
    [
        ('dead_letter = { path = "/tmp/all.ndjson" }\n', "", "agent.dead_letter.path", "per sink"),
        (
            "dead_letter = {}\n",
            "dead_letter = { max_bytes = 0 }\n",
            "sinks.other.dead_letter.max_bytes",
            "greater than 0",
        ),
        (
            "dead_letter = {}\n",
            "dead_letter = { max_file = 3 }\n",
            "sinks.other.dead_letter.max_file",
            "did you mean max_files",
        ),
        (
            "dead_letter = {}\n",
            'dead_letter = { path = "{state}/dead_letter/out.ndjson" }\n',
            "sinks.other.dead_letter.path",
            "sinks.out",
        ),
    ],
)
def test_dead_letter_errors_name_the_key(tmp_path: Path, agent: str, sinks: str, key: str, words: str) -> None:
    text = config_text(tmp_path, base=TWO_SINKS).replace('state_dir = "', agent + 'state_dir = "')
    error = error_of(text + sinks.replace("{state}", str(tmp_path)))
    assert error.key == key and words in error.message, error


def test_a_dead_letter_path_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "config.toml"
    path.write_text(config_text(tmp_path, f'dead_letter = {{ path = "{blocker}/dead.ndjson" }}\n'))
    result = validate(path)
    assert result.returncode == 2
    assert f"{path}:11: sinks.out.dead_letter.path: cannot write" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ('{ "X-Token" = "${TOKEN}" }', "holds a line break"),  # a secret read with its trailing newline
        ('{ "X-A" = "a\\r\\nX-Injected: 1" }', "holds a line break"),
        ('{ "Bad Name" = "x" }', "not a valid HTTP header name"),
    ],
)
def test_http_headers_that_would_break_the_request_are_refused_by_key(tmp_path: Path, headers: str, words: str) -> None:
    text = config_text(tmp_path).split("[sinks.out]")[0] + (
        f'[sinks.out]\ntype = "http"\ninputs = ["api"]\nurl = "http://127.0.0.1:9/"\nheaders = {headers}\n'
    )
    error = error_of(text, {"TOKEN": "secret-value\n"})
    assert error.key.startswith("sinks.out.headers") and words in error.message
    assert "secret-value" not in str(error)
