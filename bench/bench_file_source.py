"""File source throughput: a 1,000,000-line realistic pino file (seeded) read from the beginning by
the real shipper into the file sink. Prints lines/s, MiB/s, CPU seconds and peak RSS of shipper.

    python bench/bench_file_source.py [--lines N] [--read-bytes 256KiB]

The file source never ends by itself, so the run is timed until the sink has written every line
(wall time includes interpreter start-up); CPU and VmHWM are read from /proc before stopping it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_config, pino_input, report, run_shipper_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--read-bytes", default="256KiB")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shipper-bench-file-") as tmp:
        work = Path(tmp)
        source, nbytes = pino_input(work, args.lines, "app.log")
        out = work / "out.ndjson"
        config = bench_config(
            work,
            "config.toml",
            f'type = "file"\ninclude = ["{source}"]\nstart_at = "beginning"\nread_bytes = "{args.read_bytes}"\n',
            f'type = "file"\ninputs = ["api"]\npath = "{out}"\nmax_size = "10GiB"\n',
        )
        written, offset = 0, 0

        def all_written() -> bool:
            nonlocal written, offset
            if out.exists():
                with open(out, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                offset += len(chunk)
                written += chunk.count(b"\n")
            return written >= args.lines

        result = run_shipper_until(["run", "--config", str(config)], all_written, timeout=args.timeout)
        assert result.returncode == 0, result.stderr[-2000:]
        assert written == args.lines, written
        report("file source -> file sink", args.lines, nbytes, result)


if __name__ == "__main__":
    main()
