"""Prometheus metrics, defined once so every component counts the same way.

Label values are bounded (source and sink names from the config, reasons from code); no event
content ever becomes a label. Callers look up labelled children per batch, never per record.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Counters parse workers increment too: tallies, exported below through a collector.
from shipper import __version__
from shipper.tally import TALLIES
from shipper.tally import events_dropped as events_dropped
from shipper.tally import events_restamped as events_restamped
from shipper.tally import events_truncated as events_truncated
from shipper.tally import parse_fallbacks as parse_fallbacks
from shipper.tally import redactions as redactions


class _TallyCollector(Collector):
    """The counters parse workers also increment (shipper/tally.py), as Prometheus counters."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        for tally in TALLIES:
            family = CounterMetricFamily(tally.name, tally.documentation, labels=tally.labelnames)
            for values, cell in list(tally.cells.items()):
                family.add_metric(values, cell.value)
            yield family


registry = CollectorRegistry(auto_describe=True)
registry.register(_TallyCollector())
ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ... of the agent

build_info = Info("shipper_build", "The running shipper's version and Python.", registry=registry)
build_info.info({"version": __version__, "python": platform.python_version()})

events_received = Counter(
    "shipper_events_received", "Events produced by a source after parsing.", ["source"], registry=registry
)
bytes_received = Counter("shipper_bytes_received", "Raw bytes read by a source.", ["source"], registry=registry)
source_dropped = Counter(
    "shipper_source_events_dropped",
    "Events a source dropped before routing, by reason.",
    ["source", "reason"],
    registry=registry,
)
events_sent = Counter("shipper_events_sent", "Events a sink's destination accepted.", ["sink"], registry=registry)
bytes_sent = Counter(
    "shipper_bytes_sent", "Request body bytes (as sent on the wire) accepted.", ["sink"], registry=registry
)
retries = Counter("shipper_retries", "Request retries, by reason.", ["sink", "reason"], registry=registry)
buffer_bytes = Gauge("shipper_buffer_bytes", "Bytes waiting in a sink's channel.", ["sink"], registry=registry)
buffer_events = Gauge("shipper_buffer_events", "Events waiting in a sink's channel.", ["sink"], registry=registry)
buffer_capacity = Gauge("shipper_buffer_capacity_bytes", "Configured channel bound.", ["sink"], registry=registry)
buffer_disk_bytes = Gauge(
    "shipper_buffer_disk_bytes", "Bytes of a sink's disk buffer files (compressed events).", ["sink"], registry=registry
)
buffer_disk_events = Gauge(
    "shipper_buffer_disk_events", "Events in a sink's disk buffer files, not yet deleted.", ["sink"], registry=registry
)
buffer_disk_capacity = Gauge(
    "shipper_buffer_disk_capacity_bytes", "Configured bound of a sink's disk buffer.", ["sink"], registry=registry
)
buffer_corrupt_bytes = Counter(
    "shipper_buffer_corrupt_bytes",
    "Bytes of a disk buffer skipped because they failed their checks (torn or garbled records).",
    ["sink"],
    registry=registry,
)
inflight_requests = Gauge(
    "shipper_inflight_requests",
    "Requests not yet resolved: being sent, or waiting to be retried.",
    ["sink"],
    registry=registry,
)
inflight_events = Gauge("shipper_inflight_events", "Events in requests not yet resolved.", ["sink"], registry=registry)
send_duration = Histogram(
    "shipper_send_duration_seconds",
    "Latency of one request to a destination.",
    ["sink"],
    registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
concurrency_limit = Gauge(
    "shipper_sink_concurrency_limit",
    "Requests the sink may have in flight now: adapted between 1 and its configured concurrency.",
    ["sink"],
    registry=registry,
)
sink_healthy = Gauge(
    "shipper_sink_healthy",
    "0 when the sink is failing: sends failed for unhealthy_after with no success, or the destination "
    "refused shipper (401/403); else 1.",
    ["sink"],
    registry=registry,
)
sink_last_success = Gauge(
    "shipper_sink_last_success_timestamp_seconds",
    "When the sink's destination last accepted a request (0: not since start).",
    ["sink"],
    registry=registry,
)
checkpoint_lag = Gauge(
    "shipper_checkpoint_lag_chunks",
    "Chunks read but not yet acknowledged by every sink.",
    ["source"],
    registry=registry,
)
file_truncations = Counter(
    "shipper_file_truncations",
    "Files found truncated or rewritten under the reader, and read again from the start.",
    ["source"],
    registry=registry,
)
file_bytes_lost = Counter(
    "shipper_file_bytes_lost",
    "Bytes truncated away before they were read, with no copy of them found.",
    ["source"],
    registry=registry,
)
state_corrupt = Counter(
    "shipper_state_corrupt",
    "State files found corrupt (set aside) and entries in them with impossible values (dropped), never trusted: "
    "by kind of file (checkpoint: a source's; buffer_position: a disk buffer's) and reason (corrupt, invalid_entry).",
    ["file_kind", "reason"],
    registry=registry,
)
passthrough_dropped = Counter(
    "shipper_passthrough_dropped_bytes",
    "Bytes of the wrapped process's output not copied to shipper's own stdout/stderr because it was blocked.",
    ["source", "stream"],
    registry=registry,
)
dead_letters = Counter(
    "shipper_dead_letters",
    "Events a destination refused for good, written to the sink's dead-letter file, by drop reason.",
    ["sink", "reason"],
    registry=registry,
)
dead_letter_errors = Counter(
    "shipper_dead_letter_errors",
    "Dropped events that could not be written to the sink's dead-letter file (still counted as dropped).",
    ["sink"],
    registry=registry,
)
source_requests = Counter(
    "shipper_source_requests",
    "Requests a polling source (Supabase) made to its API, by outcome (ok, http_429, http_503, timeout, "
    "query_error, ...).",
    ["source", "outcome"],
    registry=registry,
)
source_healthy = Gauge(
    "shipper_source_healthy",
    "0 when a polling source is failing: its API refused it (401/403/402), rejected its query, or failed for "
    "unhealthy_after with no success; else 1.",
    ["source"],
    registry=registry,
)
source_cursor_lag = Gauge(
    "shipper_source_cursor_lag_seconds",
    "How far behind now a polling source's delivered cursor is, per input stream (a Supabase table).",
    ["source", "stream"],
    registry=registry,
)
source_duplicates = Counter(
    "shipper_source_duplicates_skipped",
    "Rows a polling source read again (its overlap window) and skipped, already sent, by id.",
    ["source"],
    registry=registry,
)
config_reloads = Counter(
    "shipper_config_reloads",
    "Config reloads (SIGHUP), by result: success, or failure (the running config was kept).",
    ["result"],
    registry=registry,
)
config_last_reload_success = Gauge(
    "shipper_config_last_reload_success",
    "1 when the config last loaded (at start or on SIGHUP) is the one running, 0 when its reload failed.",
    registry=registry,
)
config_last_reload_timestamp = Gauge(
    "shipper_config_last_reload_timestamp_seconds",
    "When the config was last loaded (at start or on SIGHUP), successfully or not (Unix time).",
    registry=registry,
)
