"""Command line: `shipper run | validate | check | top | health | tail`, `shipper --version`."""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shipper import __version__
from shipper.config import (
    Config,
    check_writable,
    config_from_dict,
    config_warnings,
    dead_letter_config,
    find_line,
    load_config,
    resolve_path,
    time_zone,
)
from shipper.errors import ConfigError
from shipper.log import setup_logging
from shipper.runtime import tune_for_events
from shipper.speedups import SPEEDUPS
from shipper.units import parse_duration
from sources.supabase_logs import DEFAULT_TABLES

EXIT_CONFIG = 2
CHECK_TIMEOUT = 30  # seconds `shipper check` gives each sink
TAIL_EVENTS = 10  # what `shipper tail --file` prints before following, as `tail` does
# `shipper tail --supabase`: logs from this long ago first, then new ones read within seconds of
# being ingested (rows ingested later than the overlap are not waited for: a terminal, not a shipper).
TAIL_SINCE = "5m"
TAIL_REQUESTS_PER_MINUTE = 24  # of the 30 a project allows: a fifth left for paging (and a poller running)
TAIL_MIN_POLL = 2.5
TAIL_LAG = 2.0
TAIL_OVERLAP = 60.0
SUPABASE_TOKEN = "SUPABASE_ACCESS_TOKEN"
TAIL_FLAGS = {"project_ref": "--supabase", "tables": "--table", "api_url": "--api-url", "access_token": SUPABASE_TOKEN}

CONFIG_HELP = "config file (default: $SHIPPER_CONFIG, else ./config.toml, else /etc/shipper/config.toml)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper",
        description="Ship logs of Node.js APIs (Fastify/pino, NestJS) and Supabase to Datadog, Loki, CloudWatch.",
    )
    hot_path = "compiled hot path" if SPEEDUPS is not None else "pure-Python hot path (no C compiler at install)"
    parser.add_argument("--version", action="version", version=f"shipper {__version__} ({hot_path})")
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
        help="verify every source and sink: credentials, reachability, readable files (exit 1 on any failure)",
        description="For every configured source and sink, verify what can be verified without shipping logs: "
        "a destination's credentials and reachability, a Supabase project's token, that the files a file source "
        "matches can be read. One line per source and sink; exit 0 when all are OK, 1 otherwise.",
    )
    check.add_argument("--config", help=CONFIG_HELP)

    top = commands.add_parser(
        "top",
        help="a live view of a running shipper: events/s, bytes/s, buffers, retries, drops, health",
        description="Show a running shipper's sources and sinks, read from its /metrics: redrawn in place on a "
        "terminal (q or Ctrl-C quits), plain tables when piped or with --once. The bearer token comes from "
        "$METRICS_TOKEN or --token-file, never from the command line.",
    )
    top.add_argument("--config", help=CONFIG_HELP + "; its [api] address is the default --url")
    top.add_argument(
        "--url", help="the shipper to read, e.g. http://10.0.0.7:8686 (default: the config's [api] address)"
    )
    top.add_argument("--token-file", type=Path, metavar="PATH", help="read the metrics token from this file")
    top.add_argument(
        "--interval", type=_duration, default=1.0, metavar="DURATION", help="refresh (and rate) interval (default 1s)"
    )
    top.add_argument("--once", action="store_true", help="print one table (rates over --interval) and exit")

    health = commands.add_parser(
        "health",
        help="ask a running shipper's /health/live (or --ready): exit 0 when it answers 200",
        description="Ask a running shipper whether it is live (or, with --ready, ready): for a container's "
        "HEALTHCHECK where the image has no curl. Exit 0 on 200, 1 otherwise.",
    )
    health.add_argument("--config", help=CONFIG_HELP + "; its [api] address is the default --url")
    health.add_argument("--url", help="the shipper to ask, e.g. http://127.0.0.1:8686 (default: the config's [api])")
    health.add_argument("--ready", action="store_true", help="ask /health/ready instead of /health/live")

    tail = commands.add_parser(
        "tail",
        help="pretty-print logs from stdin, a file or a Supabase project, no sinks needed",
        description="Read a source and print its events, parsed and normalized, to the terminal.",
    )
    followed = tail.add_mutually_exclusive_group()
    followed.add_argument(
        "--file", type=Path, help="follow this file (by name, through rotation) instead of reading stdin"
    )
    followed.add_argument(
        "--supabase",
        metavar="PROJECT_REF",
        help="follow this Supabase project's logs (token from $SUPABASE_ACCESS_TOKEN; uses its logs rate budget)",
    )
    tail.add_argument(
        "--table",
        action="append",
        metavar="NAME",
        help=f"with --supabase: a log source to follow, repeatable (default: {', '.join(DEFAULT_TABLES)})",
    )
    tail.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help=f"with --supabase: first print the logs of this long ago, e.g. 30s, 10m (default {TAIL_SINCE})",
    )
    tail.add_argument("--api-url", metavar="URL", help="with --supabase: the Management API's base URL (a proxy)")
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "-n",
        "--events",
        type=_count,
        metavar="N",
        help=f"with --file: first print its last N events, before any filter (default {TAIL_EVENTS}; 0: only new ones)",
    )
    start.add_argument("--from-start", action="store_true", help="with --file: first print the whole file")
    tail.add_argument("--retry", action="store_true", help="with --file: wait for the file when it does not exist yet")
    tail.add_argument(
        "--level",
        type=str.lower,
        choices=["trace", "debug", "info", "warn", "error", "fatal"],
        help="minimum level (any case)",
    )
    tail.add_argument("--grep", help="only events whose message matches this regular expression")
    tail.add_argument("--timezone", help="print times of day in this IANA zone, e.g. Europe/Berlin (default UTC)")
    tail.add_argument(
        "--format",
        default="auto",
        choices=["auto", "pino", "nest", "nest-json", "pino-pretty", "text"],
        help="input log format (default: detect per line)",
    )
    tail.add_argument("--json", action="store_true", help="print normalized NDJSON instead of pretty text")
    tail.add_argument("--no-redact", action="store_true", help="show secrets as they are (redaction is on by default)")
    tail.add_argument("-v", "--verbose", action="store_true", help="also print shipper's own log lines (start, stop)")
    return parser


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of events (0 or more), got {value!r}")
    return int(value)


def _load(path_arg: str | None) -> Config:
    return load_checked(resolve_path(path_arg))


def load_checked(path: Path) -> Config:
    """The config at `path`, validated and preflighted: as `shipper run` starts with it, and as a
    reload (SIGHUP) checks it before changing anything."""
    config = load_config(path)
    try:
        preflight(config)
    except ConfigError as exc:
        raise located(exc, path) from None
    return config


def located(problem: ConfigError, path: Path) -> ConfigError:
    """`problem` with the config file and, where it can be found, the line it is about."""
    problem.path = str(path)
    problem.line = problem.line or find_line(path.read_text(), problem.key)
    return problem


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
        dead_letter = dead_letter_config(config, name)
        if dead_letter is not None and dead_letter.path is not None:
            check_writable(dead_letter.path, f"sinks.{name}.dead_letter.path")


def _run_agent(config: Config, command: list[str] | None = None) -> int:
    from shipper.agent import Agent

    setup_logging(config.agent.log_level, config.agent.log_format)
    tune_for_events()

    async def main() -> int:
        return await Agent(config, command).run()

    return asyncio.run(main())


def _validate(config: Config) -> int:
    from shipper.agent import Agent

    async def build() -> Agent:
        return Agent(config)

    asyncio.run(build())
    for warning in config_warnings(config):
        print(f"shipper: warning: {located(warning, config.path) if config.path else warning}", file=sys.stderr)
    print(f"config OK: {len(config.sources)} source(s), {len(config.sinks)} sink(s)")
    return 0


def _check(config: Config) -> int:
    from shipper.sink import CheckResult
    from shipper.source import SourceContext
    from sinks import build_sink
    from sources import build_source

    for warning in config_warnings(config):
        print(f"shipper: warning: {located(warning, config.path) if config.path else warning}", file=sys.stderr)

    async def check_all() -> list[tuple[str, str, bool, str]]:
        rows = []
        for name, source_config in config.sources.items():
            context = SourceContext(
                name, source_config, routes=[], host=config.agent.host, redact=config.redact,
                state_dir=config.agent.state_dir, stopping=asyncio.Event(),
            )  # fmt: skip
            try:
                checked = await asyncio.wait_for(build_source(name, source_config, context).check(), CHECK_TIMEOUT)
            except TimeoutError:
                rows.append((name, source_config.type, False, f"no answer within {CHECK_TIMEOUT}s"))
            except Exception as exc:
                rows.append((name, source_config.type, False, f"{type(exc).__name__}: {exc}"))
            else:
                if checked is None:
                    checked = CheckResult(True, "nothing to verify before it runs (no credentials, no API)")
                rows.append((name, source_config.type, checked.ok, checked.detail))
        for name, sink_config in config.sinks.items():
            sink = build_sink(name, sink_config)
            try:
                result = await asyncio.wait_for(sink.check(), CHECK_TIMEOUT)
                rows.append((name, sink_config.type, result.ok, result.detail))
            except TimeoutError:
                rows.append((name, sink_config.type, False, f"no answer within {CHECK_TIMEOUT}s"))
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
    problem = _tail_problem(args)
    if problem is not None:
        print(f"shipper tail: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    source: dict[str, Any] = {"type": "stdin", "format": args.format}
    if args.supabase is not None:
        source = _supabase_source(args)
    elif args.file is not None:
        source = {"type": "file", "include": [glob.escape(str(args.file))], "format": args.format}
        if args.from_start:
            source["start_at"] = "beginning"
        else:
            source["backfill_events"] = TAIL_EVENTS if args.events is None else args.events
        if args.retry and not args.file.exists():
            print(f"shipper tail: {args.file} does not exist yet; waiting for it", file=sys.stderr)
    when: dict[str, Any] = {}
    if args.level:
        when["level"] = args.level
    if args.grep:
        when["matches"] = {"message": args.grep}
    sink: dict[str, Any] = {"type": "console", "inputs": ["tail"], "format": "json" if args.json else "pretty"}
    if args.timezone:
        sink["timezone"] = args.timezone
    if when:
        sink["when"] = when
    with tempfile.TemporaryDirectory(prefix="shipper-tail-") as state:
        doc = {
            # A terminal reads far slower than one core parses: no worker process to start.
            "agent": {"state_dir": state, "log_level": "info" if args.verbose else "warn", "parse_workers": 0},
            "redact": {"enabled": not args.no_redact},
            "sources": {"tail": source},
            "sinks": {"out": sink},
        }
        try:
            config = config_from_dict(doc, None, environ={})
        except ConfigError as exc:
            flag = TAIL_FLAGS.get(exc.key.removeprefix("sources.tail.").split(".")[0].split("[")[0])
            if flag is None:
                raise
            print(f"shipper tail: {flag}: {exc.message}", file=sys.stderr)
            return EXIT_CONFIG
        return _run_agent(config)


def _supabase_source(args: argparse.Namespace) -> dict[str, Any]:
    """A Supabase source for `shipper tail --supabase REF`: polled as often as its tables' share of
    the project's rate budget allows, from `--since` ago."""
    tables = args.table or list(DEFAULT_TABLES)
    since = parse_duration(TAIL_SINCE) if args.since is None else args.since
    start = datetime.now(UTC) - timedelta(seconds=since)
    source: dict[str, Any] = {
        "type": "supabase",
        "project_ref": args.supabase,
        "access_token": os.environ[SUPABASE_TOKEN],
        "tables": tables,
        "start_at": start.isoformat(),
        "poll_interval": max(TAIL_MIN_POLL, len(tables) * 60 / TAIL_REQUESTS_PER_MINUTE),
        "lag": TAIL_LAG,
        "overlap": TAIL_OVERLAP,
    }
    if args.api_url:
        source["api_url"] = args.api_url
    return source


def _tail_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `shipper tail`'s arguments, in the words of the flag at fault."""
    if args.grep is not None:
        try:
            re.compile(args.grep)
        except re.error as exc:
            return f"--grep: invalid regular expression {args.grep!r}: {exc}"
    if args.timezone is not None:
        try:
            time_zone(args.timezone)
        except ValueError as exc:
            return f"--timezone: {exc}"
    if args.supabase is None and (args.table or args.since is not None or args.api_url):
        return "--table, --since and --api-url apply to --supabase"
    if args.file is None:
        if args.events is not None or args.from_start or args.retry:
            return "-n, --from-start and --retry apply to --file (stdin and Supabase are not files)"
        if args.supabase is not None and not os.environ.get(SUPABASE_TOKEN):
            return f"--supabase: set {SUPABASE_TOKEN} to an access token (a flag would show it to `ps`)"
        return None
    try:
        args.file.open("rb").close()
    except FileNotFoundError:
        return None if args.retry else f"no such file: {args.file}"
    except OSError as exc:
        return f"cannot read {args.file}: {exc.strerror}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tail":
            return _tail(args)
        if args.command == "top":
            from shipper.top import api_url, top

            url = api_url(args.url, resolve_path(args.config), "/metrics")
            return top(url, args.token_file, args.interval, args.once)
        if args.command == "health":
            from shipper.top import api_url, health

            return health(
                api_url(args.url, resolve_path(args.config), "/health/ready" if args.ready else "/health/live")
            )
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
