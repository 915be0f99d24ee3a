"""Node's own printout of an uncaught exception, as Node v20 really prints it (tests/fixtures/crash,
written by its capture.js): one fatal event whose fields hold every line of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.event import Event
from tests.test_parsing_corpus import lost_lines, parse

CAPTURES = Path(__file__).resolve().parent / "fixtures" / "crash"
APP = "/tmp/shipper-crash-app"  # where capture.js ran its apps


def captured(name: str) -> list[Event]:
    return parse((CAPTURES / name).read_bytes().removesuffix(b"\n").split(b"\n"))


@pytest.mark.parametrize("name", sorted(path.name for path in CAPTURES.glob("*.log")))
def test_a_crash_printout_is_one_event_that_keeps_every_line(name: str) -> None:
    (event,) = captured(name)
    assert lost_lines([event]) == []


@pytest.mark.parametrize(
    ("name", "location", "source", "kind", "message"),
    [
        (
            "esm-timer-error.log",
            f"file://{APP}/main.mjs:2",
            "  throw new Error('unhandled failure in background job');\n  ^",
            "Error",
            "unhandled failure in background job",
        ),
        ("cjs-error-props-cause.log", f"{APP}/main.js:4", "throw err;\n^", "Error", "payment gateway rejected charge"),
        (
            "node-internal-enoent.log",
            "node:fs:573",
            "  return binding.open(\n                 ^",
            "Error",
            "ENOENT: no such file or directory, open '/srv/app/config.json'",
        ),
        (
            "cjs-missing-module.log",
            "node:internal/modules/cjs/loader:1210",
            "  throw err;\n  ^",
            "Error",
            f"Cannot find module './no-such-module'\nRequire stack:\n- {APP}/main.js",
        ),
        (
            "json-parse.log",
            "<anonymous_script>:1",
            "{bad json\n ^",
            "SyntaxError",
            "Expected property name or '}' in JSON at position 1",
        ),
        (
            "error-without-frames.log",
            "node:internal/process/promises:391",
            "    triggerUncaughtException(err, true /* fromPromise */);\n    ^",
            "Error",
            "rejected without frames",
        ),
        (
            "worker-thread.log",
            "node:internal/event_target:1105",
            "  process.nextTick(() => { throw err; });\n                           ^",
            "Error",
            "inside a worker",
        ),
        ("throw-string.log", f"{APP}/main.js:1", "throw 'x';\n^", None, "x"),
        ("trace-uncaught-string.log", f"{APP}/main.js:1", "throw 'x';\n^", None, "x"),
        (
            "throw-object.log",
            f"{APP}/main.js:1",
            "throw { code: 'E_PLAIN', message: 'plain object' };\n^",
            None,
            "{ code: 'E_PLAIN', message: 'plain object' }",
        ),
    ],
)
def test_crash_fields(name: str, location: str, source: str, kind: str | None, message: str) -> None:
    """Where it was thrown (`err.location`), the source line with the caret still under the
    throw (`err.source`), what was thrown, and the Node.js version that died."""
    (event,) = captured(name)
    fields, err = event.fields, event.fields["err"]
    assert fields["level"] == "fatal" and fields["node"] == {"version": "v20.20.2"}
    assert err["location"] == location and err["source"] == source
    assert err.get("type") == kind and err["message"] == message
    assert fields["message"] == (message if kind is None else f"{kind}: {message}").split("\n")[0]
    # The stack is everything Node printed for the value, the props and cause block included.
    printed = event.raw.decode().split("\n")
    after_caret = printed[printed.index(source.split("\n")[-1]) + 1 : printed.index("Node.js v20.20.2")]
    assert err["stack"] == "\n".join(after_caret).strip("\n")


def test_what_follows_the_frames_stays_in_the_stack() -> None:
    (props,) = captured("cjs-error-props-cause.log")
    assert (
        props.fields["err"]["stack"].endswith("      at node:internal/main/run_main_module:28:49\n}")
        and "  [cause]: TypeError: Cannot read properties" in props.fields["err"]["stack"]
    )
    (event,) = captured("unhandled-error-event.log")
    assert "\nEmitted 'error' event on Server instance at:\n" in event.fields["err"]["stack"]
    assert "  code: 'EADDRINUSE'," in event.fields["err"]["stack"]
    (traced,) = captured("trace-uncaught-string.log")
    assert traced.fields["err"]["stack"].startswith(f"x\nThrown at:\n    at {APP}/main.js:1:1\n")


def test_printouts_without_a_location() -> None:
    """V8's own `--abort-on-uncaught-exception` printout (no location, no Node.js line, frames at
    column 0) and an app's handler printing the error: one error event each, every line kept."""
    (abort,) = captured("abort-on-uncaught.log")
    assert abort.fields["level"] == "error"
    assert abort.fields["message"].startswith("Uncaught Error: unhandled failure in background job\n\nFROM\n")
    (handled,) = captured("handler-console-error.log")
    assert handled.fields["level"] == "error" and handled.fields["err"]["type"] == "Error"
    assert "location" not in handled.fields["err"] and "node" not in handled.fields
