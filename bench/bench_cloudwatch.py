"""shipper's CloudWatch sink beside Fluent Bit's cloudwatch_logs output, interleaved in one run.

Both read the same generated pino file (shared/peers/gen_pino.py, seed 42; by default with its
times moved to the last half hour, as a live service's are: see `freshly_stamped`) from the
beginning and
put it into the same counting endpoint: shared/peers/sink.py speaking PutLogEvents over HTTPS with
a self-signed certificate (Fluent Bit's cloudwatch output only speaks TLS), with dummy credentials.
Fluent Bit runs through shared/peers/fb_driver.py (its `cloudwatch` variant); shipper is timed
the same way (shared/peers/perf_run.py's method, with its process-tree samplers): from spawn until
the endpoint has counted every record, shipper's CPU (the agent and its parse workers) and peak
RSS at that moment. shared/peers/side_by_side.sh has no CloudWatch mapping (and perf_run.py reads
the endpoint's counters over plain HTTP), so this script interleaves the runs itself.

Absolute speeds on these 2-core machines swing by up to 2x between runs: compare the ratio.
Targets (issue #13): at least 1.0x Fluent Bit (~238,000 records/s measured here), peak RSS under
100 MiB.

    python bench/bench_cloudwatch.py [--lines 1000000] [--runs 3] [--timestamps fresh|as-generated]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO

PEERS = REPO.parent / "shared" / "peers"
sys.path.insert(0, str(PEERS))

from fb_driver import ensure_cert  # noqa: E402
from rss_sampler import hwm_kib, tree_cpu_s, tree_rss_kib  # noqa: E402

TARGET_RATIO = 1.0
TARGET_RSS_MIB = 100
# Dummy credentials, as fb_driver.py gives Fluent Bit; never real ones.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEBENCH0000",
    "AWS_SECRET_ACCESS_KEY": "bench/secret/not-real",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}
_UNVERIFIED = ssl._create_unverified_context()  # the endpoint's certificate is self-signed


def pino_file(cache: Path, lines: int) -> Path:
    path = cache / f"pino-{lines}-s42.jsonl"
    if not path.exists() or path.stat().st_size == 0:
        subprocess.run(
            [sys.executable, str(PEERS / "gen_pino.py"), "--lines", str(lines), "--seed", "42", "--out", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def freshly_stamped(source: Path, cache: Path) -> Path:
    """`source` with every pino `time` moved by one offset so that its last line is a minute old:
    the lines a live service writes. The generator's lines are from October 2025, which CloudWatch
    refuses (older than 14 days): shipper would re-stamp each one (and say so in the message,
    ~10% more bytes), and what Fluent Bit sends would all come back rejected."""
    data = source.read_bytes()
    stamps = re.compile(rb'"time":(\d{13})')
    last = max(int(match.group(1)) for match in stamps.finditer(data, max(0, len(data) - 65536)))
    offset = int(time.time() * 1000) - 60_000 - last
    fresh = cache / f"{source.stem}-fresh.jsonl"
    fresh.write_bytes(stamps.sub(lambda match: b'"time":%d' % (int(match.group(1)) + offset), data))
    return fresh


def start_endpoint(work: Path, lines: int) -> tuple[subprocess.Popen[bytes], int]:
    """shared/peers/sink.py serving HTTPS, expecting `lines` records; its port."""
    cert, key = ensure_cert(str(work))
    endpoint = subprocess.Popen(
        [sys.executable, str(PEERS / "sink.py"), "--port", "0", "--expect", str(lines), "--tls-cert", cert,
         "--tls-key", key],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert endpoint.stdout is not None
    ready = json.loads(endpoint.stdout.readline())
    return endpoint, int(ready["port"])


def endpoint_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/stats", timeout=5, context=_UNVERIFIED) as answer:
        stats: dict[str, Any] = json.loads(answer.read())
        return stats


def run_shipper(work: Path, data: Path, lines: int, timeout: float) -> dict[str, Any]:
    """One `shipper run` against a fresh endpoint, timed as perf_run.py times it."""
    work.mkdir(parents=True)
    endpoint, port = start_endpoint(work, lines)
    config = work / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{work / "state"}"\n\n'
        f'[sources.app]\ntype = "file"\ninclude = ["{data}"]\nstart_at = "beginning"\n\n'
        '[sinks.out]\ntype = "cloudwatch"\ninputs = ["app"]\nregion = "us-east-1"\n'
        'log_group = "/bench/orders-api"\nlog_stream = "bench"\n'
        f'endpoint_url = "https://127.0.0.1:{port}"\ntls_verify = false\n'
    )
    result: dict[str, Any] = {"who": "shipper", "ok": False}
    started = time.monotonic()
    with open(work / "shipper.err", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shipper", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env={**os.environ, **AWS_ENV},
        )  # fmt: skip
    peak = 0
    try:
        while True:
            if proc.poll() is not None:
                result["error"] = f"shipper exited with status {proc.returncode}"
                break
            peak = max(peak, tree_rss_kib(proc.pid), hwm_kib(proc.pid))
            stats = endpoint_stats(port)
            if stats["count"] >= lines and stats.get("t_done"):
                cpu = tree_cpu_s(proc.pid)
                peak = max(peak, hwm_kib(proc.pid))
                wall = stats["t_done"] - started
                result.update(ok=True, records_per_s=round(lines / wall), cpu_s=round(cpu, 2))
                break
            if time.monotonic() - started > timeout:
                result["error"] = f"timeout: {stats['count']:,} of {lines:,} records"
                break
            time.sleep(0.1)
    finally:
        result["peak_rss_mib"] = round(peak / 1024, 1)
        time.sleep(1.0)  # a retry or a duplicate still on its way lands in the final count
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        final = endpoint_stats(port)
        result.update(count=final["count"], requests=final["requests"], errors=final["errors"])
        endpoint.send_signal(signal.SIGTERM)
        endpoint.wait(10)
    return result


def run_fluent_bit(work: Path, data: Path, timeout: float) -> dict[str, Any]:
    work.mkdir(parents=True)
    results = work / "fb.json"
    subprocess.run(
        [sys.executable, str(PEERS / "fb_driver.py"), "--bin", str(PEERS / "fluent-bit"), "--log-file", str(data),
         "--workdir", str(work), "--variants", "cloudwatch", "--runs", "1", "--timeout", str(timeout),
         "--results", str(results)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    run = json.loads(results.read_text())["results"][0]
    return {
        "who": "fluent-bit",
        "ok": bool(run.get("ok")),
        "records_per_s": run.get("records_per_s"),
        "cpu_s": run.get("fb_cpu_s"),
        "peak_rss_mib": run.get("peak_rss_mib"),
        "count": run.get("sink_final_count"),
        "error": run.get("error"),
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in rows if row.get("ok") and row.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument(
        "--timestamps",
        choices=("fresh", "as-generated"),
        default="fresh",
        help="fresh: the lines' times moved to the last half hour, as live logs are (default); "
        "as-generated: October 2025, older than CloudWatch keeps, so shipper re-stamps every event",
    )
    args = parser.parse_args()
    if not (PEERS / "fluent-bit").exists():
        print(f"needs {PEERS}/fluent-bit", file=sys.stderr)
        return 2
    cache = Path(os.environ.get("CACHE", Path(tempfile.gettempdir()) / "peer-bench"))
    cache.mkdir(parents=True, exist_ok=True)
    data = pino_file(cache, args.lines)
    if args.timestamps == "fresh":
        data = freshly_stamped(data, cache)
    out = Path(tempfile.mkdtemp(prefix="bench-cloudwatch-"))
    print(f"# {args.lines:,} pino lines ({data}), {args.runs} interleaved runs; raw results in {out}")
    rows: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for who in ("fluent-bit", "shipper"):
            work = out / f"{who}-{run}"
            row = run_fluent_bit(work, data, args.timeout) if who == "fluent-bit" else run_shipper(
                work, data, args.lines, args.timeout
            )  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    fb = [row for row in rows if row["who"] == "fluent-bit"]
    sh = [row for row in rows if row["who"] == "shipper"]
    ratio = median(sh, "records_per_s") / median(fb, "records_per_s")
    print(f"{'':12} {'records/s':>10} {'CPU s':>7} {'peak RSS MiB':>13}")
    for name, group in (("fluent-bit", fb), ("shipper", sh)):
        print(
            f"{name:12} {median(group, 'records_per_s'):10,.0f} {median(group, 'cpu_s'):7.2f} "
            f"{median(group, 'peak_rss_mib'):13.0f}"
        )
    rss = median(sh, "peak_rss_mib")
    print(f"ratio {ratio:.2f} (target >= {TARGET_RATIO}); shipper peak RSS {rss:.0f} MiB (target < {TARGET_RSS_MIB})")
    lost = [row for row in sh if row.get("count") != args.lines]
    if lost:
        print(f"shipper runs whose endpoint count was not {args.lines:,}: {lost}")
    return 0 if ratio >= TARGET_RATIO and rss < TARGET_RSS_MIB and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
