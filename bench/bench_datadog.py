"""Throughput of the Datadog sink, end to end: 1M pino lines in a file -> shipper -> fake intake (gzip on).

The fake intake runs as a separate process (counting, not keeping, what it accepts) so its CPU is
not charged to shipper. Prints records/s (wall clock from spawn until the intake has accepted every
line; with --stdin, until shipper exits at EOF after draining),
shipper's CPU seconds (user+sys, rusage) and its peak RSS (VmHWM), and checks that the intake
accepted every line. Targets: >= 120,000 records/s, < 120 MiB peak RSS.

    python bench/bench_datadog.py [--lines 1000000] [--repeat 5] [--stdin] [--no-redact] [--concurrency N]
    python bench/bench_datadog.py --sink-only         # the sink alone, on pre-parsed events
    python bench/bench_datadog.py --profile out.json  # py-spy (speedscope .json, collapsed .txt, else .svg)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, RunResult, run_shipper, run_shipper_until, write_pino_file

KEY = "bench-api-key-00000000000000000000"
TARGET_RPS = 120_000
TARGET_RSS_MIB = 120


def write_lines(path: Path, count: int, seed: int) -> int:
    """Corpus-shaped pino lines stamped over the last minutes, as a live API's would be, so that none
    is re-stamped as outside Datadog's window."""
    return write_pino_file(path, count, seed, base_ms=int(time.time() * 1000) - count - 60_000)


def start_intake(delay: float = 0.0) -> tuple[subprocess.Popen[bytes], str]:
    intake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.datadog_intake", "--port", "0", "--api-key", KEY, "--no-record",
         "--delay", str(delay)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert intake.stdout is not None
    line = intake.stdout.readline().decode().strip()
    if not line.startswith("listening "):
        intake.kill()
        raise SystemExit(
            f"fake intake did not start: {line!r} {intake.stderr.read().decode() if intake.stderr else ''}"
        )
    return intake, line.split()[1]


def write_config(directory: Path, endpoint: str, args: argparse.Namespace, data: Path | None) -> Path:
    """The bench config: the pino lines from the file `data` (read from its start), else stdin."""
    config = directory / "bench.toml"
    source = f'type = "file"\ninclude = ["{data}"]\nstart_at = "beginning"\n' if data else 'type = "stdin"\n'
    workers = '"auto"' if args.parse_workers == "auto" else int(args.parse_workers)
    config.write_text(
        f'[agent]\nstate_dir = "{directory / "state"}"\nlog_format = "json"\nparse_workers = {workers}\n\n'
        f"[redact]\nenabled = {str(not args.no_redact).lower()}\n\n"
        f'[sources.api]\n{source}service = "api"\n\n'
        '[sinks.dd]\ntype = "datadog"\ninputs = ["api"]\napi_key = "${DD_API_KEY}"\n'
        f'endpoint = "{endpoint}"\ncompression = "gzip"\ntags = ["env:bench", "level:{{level}}"]\n'
        + (f'buffer = {{ max_bytes = "{args.buffer}" }}\n' if args.buffer else "")
        + (f"concurrency = {args.concurrency}\n" if args.concurrency else "")
    )
    return config


async def sink_only(data: Path, endpoint: str, lines: int, concurrency: int | None) -> tuple[float, float]:
    """Wall and CPU seconds for the sink alone (Channel -> SinkDriver -> DatadogSink -> HTTP): 10,000
    lines parsed and normalized beforehand, then fed `lines / 10,000` times."""
    import asyncio
    import resource

    from shipper.config import config_from_dict
    from shipper.event import memory_size
    from shipper.parsing import build_processor
    from shipper.pipeline.acks import AckTracker
    from shipper.pipeline.channel import Channel, Part
    from shipper.pipeline.driver import SinkDriver
    from sinks import build_sink

    table: dict[str, object] = {"type": "datadog", "inputs": ["api"], "api_key": KEY, "endpoint": endpoint}
    table["tags"] = ["level:{level}"]
    if concurrency:
        table["concurrency"] = concurrency
    config = config_from_dict({"sources": {"api": {"type": "stdin"}}, "sinks": {"dd": table}}, environ={})
    with data.open("rb") as handle:
        head = [handle.readline().rstrip(b"\n") for _ in range(10_000)]
    processor = build_processor("api", config.sources["api"], host="bench", redact=config.redact)
    events = processor.parse(head, "stdout", time.time())
    sink = build_sink("dd", config.sinks["dd"])
    channel = Channel("dd", 64 * 1024 * 1024, "block")
    driver = SinkDriver(sink, channel)
    tracker = AckTracker()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    run = asyncio.create_task(driver.run())
    for round_ in range(lines // len(events)):
        for start in range(0, len(events), 1000):
            part = events[start : start + 1000]
            ack = tracker.open((round_, start))
            ack.add(len(part))
            await channel.put(Part(part, ack, memory_size(part)))
            ack.done()
    channel.close()
    await run
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return time.perf_counter() - started, cpu


class Progress:
    """Polls the intake: done when every line arrived; also the rate between the first accepted
    request and the last, which is what a long-running agent sustains (no interpreter start-up)."""

    def __init__(self, endpoint: str, lines: int) -> None:
        self.endpoint, self.lines = endpoint, lines
        self.first: tuple[float, int] | None = None
        self.steady_rate = 0.0

    def done(self) -> bool:
        accepted = intake_stats(self.endpoint)["accepted"]
        now = time.perf_counter()
        if accepted and self.first is None:
            self.first = (now, accepted)
        if accepted < self.lines:
            return False
        if self.first is not None and now > self.first[0]:
            self.steady_rate = (accepted - self.first[1]) / (now - self.first[0])
        return True


def intake_stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_fake/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
    return stats


def profile_format(path: str) -> str:
    """py-spy's output format from the file name: speedscope (.json), collapsed stacks (.txt), else SVG."""
    return {".json": "speedscope", ".txt": "raw"}.get(Path(path).suffix, "flamegraph")


def end_to_end(args: argparse.Namespace, directory: Path, data: Path) -> tuple[RunResult, dict[str, Any], float]:
    """One run against a fresh intake: shipper's result, the intake's stats, the steady rate."""
    intake, endpoint = start_intake(args.intake_delay)
    try:
        from_file = None if args.stdin else data
        config = write_config(directory, endpoint, args, from_file)
        run = ["run", "--config", str(config)]
        env = {"DD_API_KEY": KEY}
        progress = Progress(endpoint, args.lines)
        result = run_shipper(run, data, env) if args.stdin else run_shipper_until(run, progress.done, env=env)
        return result, intake_stats(endpoint), progress.steady_rate
    finally:
        intake.terminate()
        intake.wait(10)
        shutil.rmtree(directory / "state", ignore_errors=True)  # the next run starts from the beginning


def in_process(args: argparse.Namespace, data: Path) -> int:
    """--sink-only and --profile: against one intake, with stdin as the source."""
    intake, endpoint = start_intake()
    try:
        config = write_config(data.parent, endpoint, args, None)
        if args.sink_only:
            import asyncio

            seconds, cpu = asyncio.run(sink_only(data, endpoint, args.lines, args.concurrency))
            stats = intake_stats(endpoint)
            sent = args.lines // 10_000 * 10_000
            print(f"sink only        {sent:,} pre-parsed events -> intake: {sent / seconds:,.0f} records/s, ", end="")
            print(f"cpu {cpu:.2f} s ({cpu / sent * 1e6:.2f} us/event, gzip thread included)")
            print(f"intake           {stats['accepted']:,} logs accepted in {stats['requests']} requests")
            return 0 if stats["accepted"] == sent else 1
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "250", "--threads"]
        command += ["--subprocesses"]  # the parse workers
        command += ["--idle", "--format", profile_format(args.profile)]
        command += ["-o", args.profile, "--", sys.executable, "-m", "shipper", "run", "--config", str(config)]
        started = time.perf_counter()
        with data.open("rb") as stdin:
            code = subprocess.run(command, stdin=stdin, cwd=REPO, env={**os.environ, "DD_API_KEY": KEY}).returncode
        print(f"profiled run: exit {code}, wall {time.perf_counter() - started:.2f} s -> {args.profile}")
        return code
    finally:
        intake.terminate()
        intake.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="runs (this VM's speed swings: give a median)")
    parser.add_argument("--buffer", default="", help="sink buffer.max_bytes (default: the sink's default)")
    parser.add_argument("--concurrency", type=int, help="sink concurrency (default: the sink's default)")
    parser.add_argument("--parse-workers", default="auto", help="agent.parse_workers (default: auto)")
    parser.add_argument(
        "--intake-delay", type=float, default=0.0, help="seconds the intake waits before each answer: a slow "
        "destination, so the sink buffer fills (peak RSS at the bound)",
    )  # fmt: skip
    parser.add_argument("--stdin", action="store_true", help="read the lines from stdin (to EOF) instead of a file")
    parser.add_argument("--no-redact", action="store_true", help="disable redaction (isolates parse + sink cost)")
    parser.add_argument(
        "--sink-only", action="store_true", help="time the sink alone, in-process, on pre-parsed events"
    )
    parser.add_argument("--profile", help="run shipper under py-spy and write a flame graph (SVG) here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-datadog-") as tmp:
        directory = Path(tmp)
        data = directory / "pino.ndjson"
        size = write_lines(data, args.lines, args.seed)
        if args.sink_only or args.profile:
            return in_process(args, data)
        redaction = "off" if args.no_redact else "on"
        origin = "stdin" if args.stdin else "a file"
        print(f"{args.lines:,} pino lines from {origin} ({size / 1e6:.0f} MB, seed {args.seed}), gzip on, ", end="")
        print(f"redaction {redaction}; wall clock from spawn to " + ("exit" if args.stdin else "all accepted"))
        rates: list[float] = []
        for _ in range(args.repeat):
            result, stats, steady = end_to_end(args, directory, data)
            rate = args.lines / result.seconds
            rates.append(rate)
            steady_text = f"{steady:>9,.0f}" if steady else "        -"  # stdin: not tracked
            print(
                f"records/s {rate:>9,.0f}   steady {steady_text}   cpu {result.cpu_seconds:6.2f} s   "
                f"peak RSS {result.peak_rss_mib:6.1f} MiB (PSS {result.peak_pss_mib:5.1f})   "
                f"wall {result.seconds:6.2f} s   "
                f"intake {stats['accepted']:,} logs in {stats['requests']} requests {stats['statuses']}, "
                f"largest {stats['max_entries']} entries / {stats['max_json_bytes']:,} bytes"
            )
            if result.returncode != 0 or stats["accepted"] != args.lines:
                print(result.stderr.decode()[-4000:], file=sys.stderr)
                print("FAILED: shipper did not exit 0 or the intake did not get every line", file=sys.stderr)
                return 1
    if args.repeat > 1:
        print(f"median {statistics.median(rates):,.0f} records/s, best {max(rates):,.0f} over {args.repeat} runs")
    print(f"targets: >= {TARGET_RPS:,} records/s, < {TARGET_RSS_MIB} MiB peak RSS")
    print("peak RSS sums the agent's and its parse workers' high-water marks; PSS counts the pages they")
    print("share (interpreter, extension modules) once: what they cost together (sampled; 0 with --stdin)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
