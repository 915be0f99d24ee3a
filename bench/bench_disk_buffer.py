"""What a buffered event costs on disk, how fast the disk buffer writes and reads, and how long an
outage each default bound rides out at a given event rate.

Events are the bench's seeded Fastify/pino lines (bench/common.py: access lines, warnings with
bindings, errors with stacks; unique request ids, ports and times, so they compress like real
traffic, not like a repeated line), parsed and prepared for each sink as a parse worker prepares
them, written in parts of 1,000 events (a chunk's share), read back, and acknowledged.

    python bench/bench_disk_buffer.py [--events N] [--rate EVENTS_PER_S]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from bench.common import pino_line
from shipper.config import DISK_BUFFER_BYTES, BufferConfig, RedactConfig, SourceConfig, config_from_dict
from shipper.event import Event, encoded_events
from shipper.parsing import build_processor
from shipper.pipeline.routing import build_preparer
from shipper.pipeline.spill import SpillLog
from sinks import build_sink

PART = 1000
SINKS = {
    "datadog": {"type": "datadog", "api_key": "${DD_KEY}"},
    "loki": {"type": "loki", "endpoint": "http://127.0.0.1:1"},
    "http": {"type": "http", "url": "http://127.0.0.1:1/logs"},
}


def prepared_parts(kind: str, count: int) -> tuple[list[list[Event]], int]:
    """`count` events prepared for a `kind` sink, in parts; and their raw lines' bytes."""
    rng = random.Random(7)
    now_ms = int(time.time() * 1000) - count
    lines = [pino_line(rng, i, now_ms) for i in range(count)]
    processor = build_processor("api", SourceConfig(type="stdin"), host="bench", redact=RedactConfig())
    config = config_from_dict(
        {"sources": {"api": {"type": "stdin"}}, "sinks": {kind: {"inputs": ["api"], **SINKS[kind]}}},
        environ={"DD_KEY": "bench"},
    )
    sink = build_sink(kind, config.sinks[kind])
    spec = sink.preparer()
    assert spec is not None
    preparer = build_preparer(kind, spec)
    parts = []
    for start in range(0, count, PART):
        events = processor.parse(lines[start : start + PART], None, time.time())
        for event in events:
            event.fields["source"] = "api"
        parts.append(encoded_events(preparer.prepare(events), {"source": "api"}))
    return parts, sum(len(line) for line in lines)


def measure(kind: str, count: int, rate: float) -> None:
    parts, raw_bytes = prepared_parts(kind, count)
    wire_bytes = sum(len(event.raw) for part in parts for event in part)
    with tempfile.TemporaryDirectory() as work:
        spill = SpillLog(kind, Path(work) / "buffers" / kind, 1 << 40)
        spill.open()
        started = time.perf_counter()
        for part in parts:
            spill.append(part)
        spill.sync()
        wrote = time.perf_counter() - started
        disk_bytes = spill.nbytes
        started = time.perf_counter()
        read = 0
        while (record := spill.read()) is not None:
            events, ack = record
            read += len(events)
            ack.done(len(events))
        readback = time.perf_counter() - started
        spill.close()
    assert read == count
    per_event = disk_bytes / count
    spill_default = BufferConfig().spill_max_bytes
    print(
        f"{kind:8} {raw_bytes / count:6.0f} B/line raw  {wire_bytes / count:6.0f} B/event prepared  "
        f"{per_event:5.1f} B/event on disk ({wire_bytes / disk_bytes:4.1f}x smaller)  "
        f"write {count / wrote:9,.0f} events/s  read+ack {count / readback:9,.0f} events/s  "
        f"at {rate:,.0f} events/s: spill default ({spill_default >> 20} MiB) "
        f"{spill_default / per_event / rate / 3600:5.1f} h, disk default ({DISK_BUFFER_BYTES >> 30} GiB) "
        f"{DISK_BUFFER_BYTES / per_event / rate / 3600:5.1f} h"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events a second, for the outage figures")
    args = parser.parse_args()
    for kind in SINKS:
        measure(kind, args.events, args.rate)


if __name__ == "__main__":
    main()
