"""Command line: `shipper run | validate | check | tail`, `shipper --version`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from shipper import __version__
from shipper.config import Config, config_from_dict, find_line, load_config, resolve_path
from shipper.errors import ConfigError
from shipper.event import tune_gc_for_events
from shipper.log import setup_logging

EXIT_CONFIG = 2

CONFIG_HELP = "config file (default: $SHIPPER_CONFIG, else ./config.toml, else /etc/shipper/config.toml)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper",
        description="Ship logs of Node.js APIs (Fastify/pino, NestJS) and Supabase to Datadog, Loki, CloudWatch.",
    )
    parser.add_argument("--version", action="version", version=f"shipper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the agent",
        description="Run the agent on the config's sources and sinks until stopped "
        "(or until every source has ended, e.g. stdin at EOF, and every sink has drained).",
    )
    run.add_argument("--config", help=CONFIG_HELP)
    run.add_argument(
        "wrapped",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARGS...]",
        help="wrap this process (your API): its stdout/stderr feed the config's process source (with none, "
        "its stdin source), signals are forwarded, it dies with shipper and its exit code becomes shipper's",
    )

    validate = commands.add_parser(
        "validate",
        help="check the config and exit (0 valid, 2 invalid)",
        description="Validate the config file: keys, types, routes, paths. Exit 0 when valid, 2 otherwise.",
    )
    validate.add_argument("--config", help=CONFIG_HELP)

    check = commands.add_parser(
        "check",
        help="verify each sink's credentials and reachability",
        description="For every configured sink, verify credentials and reachability without sending logs.",
    )
    check.add_argument("--config", help=CONFIG_HELP)

    tail = commands.add_parser(
        "tail",
        help="pretty-print logs from stdin or a file, no sinks needed",
        description="Read a source and print its events, parsed and normalized, to the terminal.",
    )
    tail.add_argument("--file", type=Path, help="follow this file instead of reading stdin")
    tail.add_argument("--level", choices=["trace", "debug", "info", "warn", "error", "fatal"], help="minimum level")
    tail.add_argument("--grep", help="only events whose message matches this regular expression")
    tail.add_argument(
        "--format",
        default="auto",
        choices=["auto", "pino", "nest", "nest-json", "pino-pretty", "text"],
        help="input log format (default: detect per line)",
    )
    tail.add_argument("--json", action="store_true", help="print normalized NDJSON instead of pretty text")
    tail.add_argument("--no-redact", action="store_true", help="show secrets as they are (redaction is on by default)")
    return parser


def _load(path_arg: str | None) -> Config:
    path = resolve_path(path_arg)
    config = load_config(path)
    try:
        preflight(config)
    except ConfigError as exc:
        exc.path = str(path)
        exc.line = exc.line or find_line(path.read_text(), exc.key)
        raise
    return config


def preflight(config: Config) -> None:
    """Checks that need the machine, not just the file: writable state directory, usable paths."""
    state_dir = config.agent.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("agent.state_dir", f"cannot create {str(state_dir)!r}: {exc.strerror}") from None
    if not os.access(state_dir, os.W_OK):
        raise ConfigError("agent.state_dir", f"{str(state_dir)!r} is not writable")
    for name, source in config.sources.items():
        source.preflight(f"sources.{name}")
    for name, sink in config.sinks.items():
        sink.preflight(f"sinks.{name}")


def _run_agent(config: Config, command: list[str] | None = None) -> int:
    from shipper.agent import Agent

    setup_logging(config.agent.log_level, config.agent.log_format)
    tune_gc_for_events()

    async def main() -> int:
        return await Agent(config, command).run()

    return asyncio.run(main())


def _validate(config: Config) -> int:
    from shipper.agent import Agent

    async def build() -> Agent:
        return Agent(config)

    asyncio.run(build())
    print(f"config OK: {len(config.sources)} source(s), {len(config.sinks)} sink(s)")
    return 0


def _check(config: Config) -> int:
    from sinks import build_sink

    async def check_all() -> list[tuple[str, str, bool, str]]:
        rows = []
        for name, sink_config in config.sinks.items():
            sink = build_sink(name, sink_config)
            try:
                result = await asyncio.wait_for(sink.check(), 30)
                rows.append((name, sink_config.type, result.ok, result.detail))
            except Exception as exc:
                rows.append((name, sink_config.type, False, f"{type(exc).__name__}: {exc}"))
            finally:
                await sink.stop()
        return rows

    rows = asyncio.run(check_all())
    width = max(len(r[0]) for r in rows)
    for name, kind, ok, detail in rows:
        print(f"{name:<{width}}  {kind:<10}  {'OK  ' if ok else 'FAIL'}  {detail}")
    return 0 if all(r[2] for r in rows) else 1


def _tail(args: argparse.Namespace) -> int:
    state = tempfile.mkdtemp(prefix="shipper-tail-")
    source: dict[str, Any] = {"type": "stdin", "format": args.format}
    if args.file is not None:
        source = {"type": "file", "include": [str(args.file)], "start_at": "beginning", "format": args.format}
    when: dict[str, Any] = {}
    if args.level:
        when["level"] = args.level
    if args.grep:
        when["matches"] = {"message": args.grep}
    sink: dict[str, Any] = {"type": "console", "inputs": ["tail"], "format": "json" if args.json else "pretty"}
    if when:
        sink["when"] = when
    doc = {
        "agent": {"state_dir": state},
        "redact": {"enabled": not args.no_redact},
        "sources": {"tail": source},
        "sinks": {"out": sink},
    }
    return _run_agent(config_from_dict(doc, None, environ={}))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tail":
            return _tail(args)
        config = _load(args.config)
        if args.command == "validate":
            return _validate(config)
        if args.command == "check":
            return _check(config)
        wrapped = args.wrapped[1:] if args.wrapped[:1] == ["--"] else args.wrapped
        return _run_agent(config, wrapped or None)
    except ConfigError as exc:
        print(f"shipper: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
