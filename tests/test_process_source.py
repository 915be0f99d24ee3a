"""The process source end to end: the real `shipper run -- COMMAND` wrapping a real Fastify app
(installed from npm by the fixture below) and Python children; loopback only, bounded in time."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.agent import EXIT_LOST
from tests.conftest import free_port
from tests.durability import figures, reported
from tests.fakes.datadog_intake import DatadogIntake
from tests.procutil import REPO, ShipperProcess, page_sample, read_events, wait_for, write_config

APP = REPO / "tests" / "apps" / "fastify-app"


@pytest.fixture(scope="session")
def fastify_app() -> Path:
    """The test app with its node_modules (installed once, then kept: it is gitignored)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to install and run the Fastify test app")
    installed = APP / "node_modules" / "fastify" / "package.json"
    if not installed.exists() or not json.loads(installed.read_text())["version"].startswith("5."):
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"], cwd=APP, capture_output=True, text=True, timeout=300
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of the Fastify test app took more than 300s (is the npm registry reachable?)")
        if done.returncode != 0:
            pytest.skip(f"npm install of the Fastify test app failed (is the npm registry reachable?):\n{done.stderr}")
    return APP


def process_source(extra: str = "") -> str:
    return f'type = "process"\n{extra}'


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def stdout_events(out: Path) -> list[dict[str, object]]:
    return [e for e in read_events(out) if e.get("stream") == "stdout"]


def test_fastify_app_logs_arrive_signals_reach_it_and_its_exit_code_is_returned(
    tmp_path: Path, fastify_app: Path
) -> None:
    out, port = tmp_path / "out.ndjson", free_port()
    source = process_source(f'cwd = "{fastify_app}"\nenv = {{ PORT = "{port}" }}\n')
    shipper = ShipperProcess(write_config(tmp_path, source, out, name="app"), tmp_path, command=["node", "server.js"])
    try:

        def said(message: str) -> bool:
            assert shipper.proc.poll() is None, shipper.stderr[-3000:]
            return any(e.get("message") == message for e in stdout_events(out))

        wait_for(lambda: said(f"Server listening at http://127.0.0.1:{port}"), 30, "the app to listen")
        assert get(f"http://127.0.0.1:{port}/orders/42") == 200
        assert get(f"http://127.0.0.1:{port}/fail") == 500
        wait_for(lambda: said("request completed"), 10, "request lines")
        wait_for(lambda: said("database connection lost"), 10, "the error line")
        assert shipper.stop(signal.SIGTERM) == 0  # the app's own exit code, after a graceful close
        events = stdout_events(out)
        by_message = {e.get("message"): e for e in events}
        assert {"incoming request", "order looked up", "request completed", "shutting down", "server closed"} <= set(
            by_message
        )
        assert by_message["order looked up"].get("orderId") == "42"
        assert by_message["shutting down"].get("signal") == "SIGTERM"
        assert sum(e.get("message") == "request completed" for e in events) == 2
        assert all(e.get("source") == "app" for e in events)
        passthrough = shipper.stdout.decode()
        assert '"msg":"order looked up"' in passthrough and '"msg":"server closed"' in passthrough
        assert any(
            m.get("msg") == "forwarding the stop signal to the wrapped process" and m.get("signal") == "SIGTERM"
            for m in shipper.logs()
        )
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize(
    ("code", "expected", "command_from"),
    [
        ("sys.exit(3)", 3, "command-line"),
        ("os.kill(os.getpid(), signal.SIGKILL)", 128 + 9, "config"),
        ("sys.exit(3)", 3, "stdin-source"),  # `-- COMMAND` with no process source: stdin reads its output
    ],
    ids=["exit-3", "killed-by-signal", "stdin-source-reads-the-command"],
)
def test_child_exit_code_becomes_shippers(tmp_path: Path, code: str, expected: int, command_from: str) -> None:
    out = tmp_path / "out.ndjson"
    script = (
        "import os, signal, sys\n"
        'print(\'{"level":30,"msg":"about to exit"}\', flush=True)\n'
        'print("to stderr", file=sys.stderr, flush=True)\n'
        f"{code}\n"
    )
    command = [sys.executable, "-c", script]
    source = process_source("passthrough = false\n")
    if command_from == "config":
        source += f"command = {json.dumps(command)}\n"
    elif command_from == "stdin-source":
        source = 'type = "stdin"\n'
    config = write_config(tmp_path, source, out, name="app")
    shipper = ShipperProcess(config, tmp_path, command=None if command_from == "config" else command)
    try:
        assert shipper.wait(30) == expected
        streams = {e.get("message"): e.get("stream") for e in read_events(out)}
        assert streams == {"about to exit": "stdout", "to stderr": "stderr"}
        assert shipper.stdout == b""  # passthrough = false
        assert "to stderr" not in shipper.stderr
    finally:
        shipper.ensure_stopped()


WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    lines, stats = int(sys.argv[1]), sys.argv[2]
    pad = "x" * 60
    worst, started = 0.0, time.perf_counter()
    for i in range(lines):
        line = ('{"level":30,"time":%d,"msg":"line %d","pad":"%s"}\\n' % (1795394836366 + i, i, pad)).encode()
        before = time.perf_counter()
        os.write(1, line)
        worst = max(worst, time.perf_counter() - before)
    total = time.perf_counter() - started
    with open(stats + ".tmp", "w") as f:
        json.dump({"lines": lines, "max_write_seconds": worst, "total_seconds": total}, f)
    os.rename(stats + ".tmp", stats)
    time.sleep(float(sys.argv[3]))  # time for the test to scrape shipper's /metrics
    """
)


@pytest.fixture
def hanging_server() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers a request."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield int(server.getsockname()[1])
    server.close()


@pytest.mark.parametrize("disk", ["roomy", "tiny"])
def test_fast_writer_is_never_blocked_when_the_sink_hangs(
    tmp_path: Path, hanging_server: int, disk: str, request: pytest.FixtureRequest
) -> None:
    """The wrapped API writes as fast as it can while the only sink hangs: its writes never wait.
    Memory fills, then the disk buffer; with a tiny disk bound it fills too and the newest are
    dropped, counted; what is left at the deadline is kept on disk while there is room."""
    lines, api_port = 150_000, free_port()
    spill = "16KiB" if disk == "tiny" else "256MiB"
    stats = tmp_path / "stats.json"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\nshutdown_timeout = "2s"\n'
        f'[api]\nenabled = true\naddress = "127.0.0.1:{api_port}"\n'
        '[sources.app]\ntype = "process"\nmax_buffer_bytes = "1MiB"\ndrain_timeout = "1s"\n'
        f'[sinks.hang]\ntype = "http"\ninputs = ["app"]\nurl = "http://127.0.0.1:{hanging_server}/logs"\n'
        f'request_timeout = "60s"\nbuffer = {{ max_bytes = "256KiB", spill_max_bytes = "{spill}" }}\n'
    )
    command = [sys.executable, "-c", WRITER, str(lines), str(stats), "6"]
    # shipper's stdout is a pipe nobody reads until the end: passthrough must not block on it either
    shipper = ShipperProcess(config, tmp_path, command=command, stdout=subprocess.PIPE)
    try:
        wait_for(stats.exists, 60, "the writer to finish")
        result = json.loads(stats.read_text())
        print(
            f"\n[never-block] {lines} lines written in {result['total_seconds']:.2f}s, "
            f"max single write {result['max_write_seconds'] * 1000:.1f} ms"
        )
        assert result["max_write_seconds"] < 0.5
        assert result["total_seconds"] < 30
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5).read().decode()
        dropped = [line for line in scrape.splitlines() if line.startswith("shipper_source_events_dropped_total")]
        buffer_full = [line for line in dropped if 'reason="buffer_full"' in line and 'source="app"' in line]
        assert buffer_full and float(buffer_full[0].split()[-1]) > 0, dropped
        blocked_stdout = [
            line
            for line in scrape.splitlines()
            if line.startswith("shipper_passthrough_dropped_bytes_total") and 'stream="stdout"' in line
        ]
        assert blocked_stdout and float(blocked_stdout[0].split()[-1]) > 0, blocked_stdout
        print(f"[never-block] {buffer_full[0]}\n[never-block] {blocked_stdout[0]}")
        # Once every line the reader took is parsed (the rest it dropped), the channel has had all of it.
        pages: list[str] = []

        def all_parsed() -> bool:
            pages.append(urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5).read().decode())
            taken = page_sample(pages[-1], "shipper_events_received_total", source="app")
            return (
                taken
                + page_sample(pages[-1], "shipper_source_events_dropped_total", reason="buffer_full", source="app")
                >= lines
            )

        wait_for(all_parsed, 5, "every line the reader took to be parsed")
        scrape = pages[-1]
        on_disk = page_sample(scrape, "shipper_buffer_disk_bytes", sink="hang")
        sink_drops = page_sample(scrape, "shipper_events_dropped_total", reason="buffer_full", sink="hang")
        rss = page_sample(scrape, "process_resident_memory_bytes")
        print(f"[never-block] disk buffer {on_disk:.0f} B, {sink_drops:.0f} dropped there, RSS {rss / 2**20:.0f} MiB")
        assert 0 < on_disk <= (16 if disk == "tiny" else 256 * 1024) * 1024
        assert (sink_drops > 0) == (disk == "tiny")  # a full disk buffer drops the newest, counted
        assert rss < 150 * 2**20  # memory stays bounded whatever the child writes
        drops = {
            f"{name}:buffer_full": count
            for name, count in (
                ("source_events_dropped", float(buffer_full[0].split()[-1])),
                ("events_dropped", sink_drops),
            )
            if count
        }
        reported(request, figures(request.node.name, range(lines), [], lambda line: 0, int(rss) // 1024, drops))
        assert shipper.proc.stdout is not None
        started = time.monotonic()
        shipper.proc.communicate(timeout=30)  # reads the passthrough pipe, lets shipper finish
        assert time.monotonic() - started < 20
        # What the wrapped API wrote faster than it could be parsed was dropped, counted and logged.
        drops = [m for m in shipper.logs() if m.get("reason") == "buffer_full"]
        assert drops and drops[0]["level"] == "error", shipper.stderr[-3000:]
        if disk == "roomy":  # what the hung sink holds at the deadline waits on disk for the next run
            assert shipper.proc.returncode == 0, shipper.stderr[-3000:]
            [kept] = [m for m in shipper.logs() if "kept" in m]
            assert kept["kept"] > 0 and kept["sink"] == "hang"
        else:  # no room left on disk for it: lost, said, and exit 3 although the API exited 0
            assert shipper.proc.returncode == EXIT_LOST, shipper.stderr[-3000:]
            [lost] = [m for m in shipper.logs() if "lost" in m]
            assert lost["lost"] > 0 and lost["sink"] == "hang" and lost["level"] == "error"
    finally:
        shipper.ensure_stopped()


SIGNALLED_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    with open(sys.argv[1] + ".tmp", "w") as f:  # first, so the test can always clean up after it
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])

    def said(signum, frame):
        print(json.dumps({"level": 30, "msg": "got " + signal.Signals(signum).name}), flush=True)

    signal.signal(signal.SIGUSR1, said)
    signal.signal(signal.SIGUSR2, said)
    print(json.dumps({"level": 30, "msg": "child ready"}), flush=True)
    while True:
        time.sleep(1)
    """
)


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def child_pidfile(tmp_path: Path) -> Iterator[Path]:
    """Where SIGNALLED_CHILD writes its pid; its process group is killed after the test, whatever happened."""
    pidfile = tmp_path / "child.pid"
    yield pidfile
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def start_signalled_child(tmp_path: Path, pidfile: Path) -> tuple[ShipperProcess, Path]:
    out = tmp_path / "out.ndjson"
    config = write_config(tmp_path, process_source("passthrough = false\n"), out, name="app")
    shipper = ShipperProcess(config, tmp_path, command=[sys.executable, "-c", SIGNALLED_CHILD, str(pidfile)])
    return shipper, out


def test_sigusr1_and_sigusr2_reach_the_child_and_no_signal_but_stop_ends_shipper(
    tmp_path: Path, child_pidfile: Path
) -> None:
    shipper, out = start_signalled_child(tmp_path, child_pidfile)
    try:

        def shipped(message: str) -> bool:
            assert shipper.proc.poll() is None, f"shipper exited {shipper.proc.returncode}: {shipper.stderr[-3000:]}"
            return any(e.get("message") == message for e in read_events(out))

        wait_for(lambda: shipped("child ready"), 30, "the child to start")
        for sig in (signal.SIGUSR2, signal.SIGUSR1):
            shipper.proc.send_signal(sig)
            wait_for(lambda sig=sig: shipped(f"got {sig.name}"), 10, f"the child's line on {sig.name}")
        shipper.proc.send_signal(signal.SIGHUP)  # shipper's own (config reload): not forwarded, not fatal
        wait_for(lambda: "config reloaded" in shipper.stderr, 10, "shipper to reload its config")
        time.sleep(0.5)
        assert shipper.proc.poll() is None, shipper.stderr[-3000:]
        assert running(int(child_pidfile.read_text()))
        assert shipper.stop(signal.SIGTERM) == 128 + signal.SIGTERM  # the child's status: SIGTERM killed it
    finally:
        shipper.ensure_stopped()


def test_the_child_dies_with_shipper_even_killed_by_sigkill(tmp_path: Path, child_pidfile: Path) -> None:
    shipper, _ = start_signalled_child(tmp_path, child_pidfile)
    try:
        wait_for(child_pidfile.exists, 30, "the child to start")
        child = int(child_pidfile.read_text())
        assert running(child)
        shipper.proc.kill()
        shipper.proc.wait()
        wait_for(lambda: not running(child), 5, "the child to die with shipper")
    finally:
        shipper.ensure_stopped()


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def test_signals_sent_to_every_shipper_process_stop_none_of_them(tmp_path: Path, child_pidfile: Path) -> None:
    """`systemctl kill -s USR2 shipper` signals the parse workers too: they must leave it to the agent."""
    key = "dd-signals-secret-00112233445566778899aabbccdd"
    with DatadogIntake([key]).threaded() as intake:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[agent]\nstate_dir = "{tmp_path}/state"\nparse_workers = 1\n'
            '[sources.app]\ntype = "process"\npassthrough = false\n'
            f'[sinks.dd]\ntype = "datadog"\ninputs = ["app"]\napi_key = "{key}"\nendpoint = "{intake.url}"\n'
            'batch = { timeout = "50ms" }\n'
        )
        shipper = ShipperProcess(config, tmp_path, command=[sys.executable, "-c", SIGNALLED_CHILD, str(child_pidfile)])
        try:

            def shipped(message: str) -> bool:
                assert shipper.proc.poll() is None, (
                    f"shipper exited {shipper.proc.returncode}: {shipper.stderr[-3000:]}"
                )
                return any(log.get("message") == message for log in intake.logs)

            wait_for(lambda: shipped("child ready"), 30, "the child's first line")
            child = int(child_pidfile.read_text())
            workers = [pid for pid in children_of(shipper.proc.pid) if pid != child]
            assert workers, "no parse worker started"
            for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                for pid in (shipper.proc.pid, *workers):
                    with contextlib.suppress(ProcessLookupError):  # killed by an earlier one (the old bug)
                        os.kill(pid, sig)
                if sig == signal.SIGHUP:  # the reload first: a SIGUSR2 sent during one was lost twice in CI
                    wait_for(lambda: "config reloaded" in shipper.stderr, 30, "the reload")
            wait_for(lambda: shipped("got SIGUSR2"), 30, "the child's line on SIGUSR2, through the worker")
            assert all(running(pid) for pid in workers)
            assert shipper.stop(signal.SIGTERM) == 128 + signal.SIGTERM, shipper.stderr[-3000:]
        finally:
            shipper.ensure_stopped()


def test_readme_wrap_example_works_with_the_bundled_config(tmp_path: Path, fastify_app: Path) -> None:
    """`shipper run --config config.toml -- node dist/main.js`, as the README says, on a real Fastify app."""
    port, state = free_port(), tmp_path / "state"
    server = str((fastify_app / "server.js").relative_to(REPO))
    env = {"SHIPPER_STATE_DIR": str(state), "PORT": str(port)}
    shipper = ShipperProcess(Path("config.toml"), tmp_path, command=["node", server], env=env)
    try:
        shipped = state / "out" / "events.ndjson"  # the bundled config's file sink

        def said(message: str) -> bool:
            assert shipper.proc.poll() is None, f"shipper exited {shipper.proc.returncode}: {shipper.stderr[-3000:]}"
            return any(e.get("message") == message for e in stdout_events(shipped))

        wait_for(lambda: said(f"Server listening at http://127.0.0.1:{port}"), 30, "the app to listen")
        assert get(f"http://127.0.0.1:{port}/orders/42") == 200
        wait_for(lambda: said("order looked up"), 10, "the request's lines")
        shipper.proc.send_signal(signal.SIGUSR2)  # pino's reopen signal reaches the app, which keeps running
        wait_for(lambda: said("log reopen requested"), 10, "the app's line on SIGUSR2")
        assert get(f"http://127.0.0.1:{port}/health") == 200
        assert shipper.stop(signal.SIGTERM) == 0  # the app's own exit code after its graceful close
        events = stdout_events(shipped)
        assert {"shutting down", "server closed"} <= {e.get("message") for e in events}
        assert all(e.get("source") == "api" and e.get("service") == "api" for e in events)
        # the console sink shows each line once, as `node app | shipper run` would: no passthrough copy
        console = [line for line in shipper.stdout.decode().splitlines() if "order looked up" in line]
        assert len(console) == 1 and '"message":"order looked up"' in console[0], console
    finally:
        shipper.ensure_stopped()


def test_wrapping_with_two_process_sources_is_a_config_error(tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    config = write_config(tmp_path, process_source(), out, name="app", extra='[sources.other]\ntype = "process"\n')
    shipper = ShipperProcess(config, tmp_path, command=[sys.executable, "-c", "print('ran')"])
    try:
        assert shipper.wait(30) == 2
        assert "one process source, found 2: app, other" in shipper.stderr
        assert read_events(out) == []
    finally:
        shipper.ensure_stopped()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_missing_cwd_names_its_key_and_path(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "srv" / "api"
    config = write_config(tmp_path, process_source(f'cwd = "{missing}"\n'), tmp_path / "out.ndjson", name="app")
    args = [sys.executable, "-m", "shipper", command, "--config", str(config)]
    if command == "run":
        args += ["--", sys.executable, "-c", "print('ran')"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert f"sources.app.cwd: working directory '{missing}' does not exist" in done.stderr
    assert "PosixPath" not in done.stderr
