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

from bench.common import REPO, bench_config, pino_input, report, run_shipper


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
        source, nbytes = pino_input(work, args.lines)
        out = work / "out.ndjson"
        file_sink = f'type = "file"\ninputs = ["api"]\npath = "{out}"\nmax_size = "10GiB"\n'
        config = bench_config(work, "file.toml", 'type = "stdin"\n', file_sink)
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
            http_sink = (
                f'type = "http"\ninputs = ["api"]\nurl = "http://127.0.0.1:{port}/logs"\n'
                'encoding = "ndjson"\ncompression = "gzip"\n'
            )
            config = bench_config(work, "http.toml", 'type = "stdin"\n', http_sink)
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
