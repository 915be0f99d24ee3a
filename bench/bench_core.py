"""Core throughput: 1,000,000 realistic pino lines through the stdin source to the file sink and to
a local counting HTTP sink (gzip). Prints records/s, MiB/s, CPU seconds and peak RSS.

    python bench/bench_core.py [--lines N]

Target on the 2-core CI machine class (stdin -> file sink): >= 150,000 records/s, < 100 MiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, report, run_shipper, write_pino_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shipper-bench-") as tmp:
        work = Path(tmp)
        source = work / "pino.ndjson"
        nbytes = write_pino_file(source, args.lines)
        print(f"input: {args.lines:,} pino lines, {nbytes / 2**20:.1f} MiB")

        out = work / "out.ndjson"
        config = work / "file.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{work / "state"}"\n[sources.api]\ntype = "stdin"\n'
            f'[sinks.out]\ntype = "file"\ninputs = ["api"]\npath = "{out}"\nmax_size = "10GiB"\n'
        )
        result = run_shipper(["run", "--config", str(config)], source)
        written = out.read_bytes().count(b"\n")
        assert result.returncode == 0 and written == args.lines, (written, result.stderr[-2000:])
        report("stdin -> file sink", args.lines, nbytes, result)

        port = free_port()
        server = subprocess.Popen([sys.executable, str(REPO / "bench" / "counting_server.py"), "--port", str(port)])
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            config = work / "http.toml"
            config.write_text(
                f'[agent]\nstate_dir = "{work / "state"}"\n[sources.api]\ntype = "stdin"\n'
                f'[sinks.out]\ntype = "http"\ninputs = ["api"]\nurl = "http://127.0.0.1:{port}/logs"\n'
                'encoding = "ndjson"\ncompression = "gzip"\n'
            )
            result = run_shipper(["run", "--config", str(config)], source)
            counted = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5))
            assert result.returncode == 0 and counted["events"] == args.lines, (counted, result.stderr[-2000:])
            report("stdin -> http sink (gzip, ndjson)", args.lines, nbytes, result)
            print(f"  http requests: {counted['requests']}")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
