"""Instructions per event of the CloudWatch and Loki sinks' own work, counted by callgrind.

Seconds swing by 2x on these shared 2-core machines; instruction counts do not. Pino lines
(shared/peers/gen_pino.py, seed 42, as the side-by-side benches use) are parsed once and cached
(`--cache`); then, for one sink and side:

- worker: the sink's preparer on 1,000-line chunks, and its stamps marshalled as a parse worker
  replies;
- agent: the stamps unmarshalled, `Encoded` events made (`encoded_events`), cut in ~1 MB batches
  as the driver cuts them, and framed into requests (`sink.encode`'s framing).

`window` picks the events' times: `out` as generated (dated 2025: every one re-stamped, as in the
side-by-side bench), or `in` (shifted to an hour ago). Each measure runs the side once and three
times under callgrind; the difference over two passes is the side's cost, setup excluded.

    python bench/bench_sink_cpu.py [--sinks cloudwatch,loki] [--sides worker,agent] [--windows out,in]
"""

from __future__ import annotations

import argparse
import marshal
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO

PEERS = REPO.parent / "shared" / "peers"
CHUNK = 1000  # lines a parse worker gets at once (a 256 KiB read of pino lines)
BATCH_BYTES = 1_000_000  # the sinks' batch goal
PINO_EPOCH_MS = 1760781342123  # gen_pino.py's first "time"


def parsed_events(cache: Path, lines: int, window: str) -> list[list[tuple[dict[str, Any], bytes]]]:
    """`lines` pino lines parsed as a stdin source parses them, in chunks; cached."""
    path = cache / f"sink-cpu-{window}-{lines}.pickle"
    if not path.exists():
        from shipper.config import RedactConfig, SourceConfig
        from shipper.parsing import build_processor

        generated = subprocess.run(
            [sys.executable, str(PEERS / "gen_pino.py"), "--lines", str(lines), "--seed", "42", "--out", "/dev/stdout"],
            check=True,
            capture_output=True,
        ).stdout.split(b"\n")[:lines]
        if window == "in":
            shift = int(time.time() * 1000) - PINO_EPOCH_MS - 3_600_000
            generated = [
                re.sub(rb'"time":(\d+)', lambda m: b'"time":%d' % (int(m.group(1)) + shift), line, count=1)
                for line in generated
            ]
        source = SourceConfig.model_validate({"type": "stdin"})
        processor = build_processor("app", source, host="h", redact=RedactConfig())
        chunks = [processor.parse(generated[i : i + CHUNK], None, time.time()) for i in range(0, lines, CHUNK)]
        path.write_bytes(pickle.dumps([[(event.fields, event.raw) for event in chunk] for chunk in chunks]))
    loaded: list[list[tuple[dict[str, Any], bytes]]] = pickle.loads(path.read_bytes())
    return loaded


def sink_parts(sink: str) -> tuple[Any, Callable[[list[Any]], list[Any]]]:
    """The sink's preparer (its default settings) and its framing, without the config models."""
    if sink == "cloudwatch":
        from sinks.cloudwatch_events import LogEvents, calls

        preparer = LogEvents(
            "cw", log_stream="{host}/{source}", message="json", max_event_bytes=1_000_000,
            out_of_range="restamp", retention_days=None,
        )  # fmt: skip
        return preparer, lambda events: calls(events, "/bench/orders-api")
    from sinks.loki_entries import LokiEntries
    from sinks.loki_push import Framer

    entries = LokiEntries(
        "loki", labels={"service": "{service}", "level": "{level}", "source": "{source}"}, structured_metadata={},
        line="json", max_line_bytes=256 * 1024, max_age_ms=7 * 86_400_000 - 600_000, max_ahead_ms=540_000,
        out_of_range="restamp",
    )  # fmt: skip
    framer = Framer(
        "loki", max_streams=1000, max_behind_ns=3600 * 10**9, drop_behind=False, fallback_labels={}, escaped=False,
        streams_per_push=1,
    )  # fmt: skip
    return entries, lambda events: framer.requests(framer.ordered(events), 100_000, 4 * 1024 * 1024)


def run_side(sink: str, side: str, chunks: list[list[Any]], passes: int) -> None:
    """`passes` runs of one side over every chunk (the measured part)."""
    from shipper.event import Event, encoded_events
    from shipper.runtime import tune_for_events

    events = [[Event(fields, raw) for fields, raw in chunk] for chunk in chunks]
    tune_for_events()
    preparer, frame = sink_parts(sink)
    if side == "worker":
        for _ in range(passes):
            for chunk in events:
                marshal.dumps(preparer.prepare(chunk)[1], 4)
        return
    prepared = [preparer.prepare(chunk) for chunk in events]
    replies = [(lines, marshal.dumps(stamps, 4)) for lines, stamps in prepared]
    for _ in range(passes):
        batch: list[Any] = []
        size = 0
        for lines, stamps in replies:
            batch += encoded_events((lines, marshal.loads(stamps)), {"source": "app"})
            size += len(lines)
            if size >= BATCH_BYTES:
                frame(batch)
                batch, size = [], 0
        if batch:
            frame(batch)


def instructions(sink: str, side: str, window: str, lines: int, cache: Path, passes: int) -> int:
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "callgrind.out"
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "--run",
             f"{sink},{side},{window},{lines},{cache},{passes}"],
            capture_output=True, text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    assert found is not None, done.stderr[-2000:]
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sinks", default="cloudwatch,loki")
    parser.add_argument("--sides", default="worker,agent")
    parser.add_argument("--windows", default="out,in")
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "peer-bench")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        sink, side, window, lines, cache, passes = args.run.split(",")
        run_side(sink, side, parsed_events(Path(cache), int(lines), window), int(passes))
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    for window in args.windows.split(","):
        parsed_events(args.cache, args.lines, window)
        for sink in args.sinks.split(","):
            for side in args.sides.split(","):
                once, thrice = (instructions(sink, side, window, args.lines, args.cache, n) for n in (1, 3))
                per_event = (thrice - once) / (2 * args.lines)
                print(f"{sink:10} {side:6} window={window:3} {per_event:9,.0f} instructions/event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
