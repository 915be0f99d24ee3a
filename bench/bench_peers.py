"""shipper beside Fluent Bit on the same work, interleaved in one run, plus what shipper's requests weighed.

Runs `shared/peers/side_by_side.sh` (beside the repository, as CI lays it out: Fluent Bit 5.1.1, a
counting HTTP sink, 1M generated pino lines from a file) with this checkout's `shipper`, prints its
table of medians and the ratio, then the average request body shipper sent per variant against the
sink's batch goal (issue #11: at least 60% of the goal with a backlog). Absolute speeds on these
2-core machines swing by up to 2x between runs: compare the ratios.

    python bench/bench_peers.py [--variants http-ndjson,http-json-gzip,datadog-gzip] [--runs 3]
    python bench/bench_peers.py --variants loki-gzip,loki        # issue #12: the Loki sink
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO

PEERS = REPO.parent / "shared" / "peers"
# The batch goal of each variant's sink (`limits.goal_bytes`); Datadog's batches are bounded by its 1,000-log
# limit first.
GOALS = {
    "http-ndjson": 1024 * 1024,
    "http-json-gzip": 1024 * 1024,
    "http-json": 1024 * 1024,
    "loki": 1024 * 1024,
    "loki-gzip": 1024 * 1024,
}


def body_stats(outdir: Path, variant: str) -> tuple[float, int] | None:
    """Mean request body (decoded bytes) over the runs of `variant`, and the number of runs."""
    sizes = []
    for perf in sorted(outdir.glob(f"shipper-{variant}-[0-9]*/perf.json")):
        result = json.loads(perf.read_text())
        if result.get("ok") and result.get("sink_requests"):
            sizes.append(result["sink_bytes_decoded"] / result["sink_requests"])
    return (statistics.mean(sizes), len(sizes)) if sizes else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="http-ndjson,http-json-gzip,datadog-gzip")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    script = PEERS / "side_by_side.sh"
    shipper = shutil.which("shipper", path=str(Path(sys.executable).parent))
    if not script.exists() or shipper is None:
        print(f"needs {script} and shipper installed beside {sys.executable}", file=sys.stderr)
        return 2
    outdir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    env = {**os.environ, "SHIPPER": shipper, "PY": sys.executable, "OUTDIR": str(outdir)}
    done = subprocess.run(["bash", str(script), args.variants, str(args.runs)], env=env, check=False)
    print("\n# shipper's requests (decoded body bytes per request; batch goal)")
    for variant in args.variants.split(","):
        stats = body_stats(outdir, variant)
        if stats is None:
            print(f"{variant:16} no successful run")
            continue
        mean, runs = stats
        if variant.startswith("datadog"):
            print(f"{variant:16} {mean:12,.0f} B per request over {runs} runs (1,000 logs per request at most)")
            continue
        goal = GOALS.get(variant)
        share = f"{mean / goal:6.0%} of the {goal:,} B goal" if goal else ""
        print(f"{variant:16} {mean:12,.0f} B per request over {runs} runs {share}")
    print(f"raw results: {outdir}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
