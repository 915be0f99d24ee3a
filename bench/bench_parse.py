"""Parse+normalize+redact throughput on one core: realistic pino lines and Nest text lines.

Lines follow the corpus schema (Fastify 5 / pino 10 access lines, warn lines with child bindings,
error lines with a stack; Nest ConsoleLogger lines with contexts, `+Nms` and error stacks), from
a seeded generator. They are fed in 1,000-line chunks, as a source would, and the events dropped.
Redaction is on (the default config). Each format is measured twice: with Python's default GC,
and with the GC tuned as a long-running agent should do once started (`gc.freeze()` so full
collections skip the ~30k objects of the loaded modules, and a larger first-generation threshold
because every event allocates two tracked objects); the default GC costs about a fifth here.

    python bench/bench_parse.py [--lines N] [--rounds R] [--hostname NAME]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable

import orjson

from shipper.config import RedactConfig, SourceConfig
from shipper.parsing import build_processor

STACK = (
    "Error: database connection lost\n    at Object.<anonymous> (/srv/app/fastify-app/server.js:81:9)\n"
    "    at preHandlerCallbackInner (/srv/app/fastify-app/node_modules/fastify/lib/handle-request.js:190:24)\n"
    "    at preHandlerCallback (/srv/app/fastify-app/node_modules/fastify/lib/handle-request.js:155:5)\n"
    "    at handler (/srv/app/fastify-app/node_modules/fastify/lib/handle-request.js:99:7)"
)
URLS = ("/health", "/users/1", "/users/42", "/orders?page=2", "/sms", "/boom", "/levels")


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


def pino_lines(count: int, hostname: str, seed: int = 1) -> list[bytes]:
    """Fastify `logger: true` lines: incoming/completed pairs, some warns and errors."""
    rnd = random.Random(seed)
    now = 1_795_394_836_366
    lines: list[bytes] = []
    base = {"pid": 30302, "hostname": hostname}
    while len(lines) < count:
        now += rnd.randint(0, 4)
        req_id = f"req-{base36(len(lines) // 2 + 1)}"  # Fastify's counter, base 36
        url = rnd.choice(URLS)
        req = {
            "method": "GET",
            "url": url,
            "host": "127.0.0.1:3101",
            "remoteAddress": "127.0.0.1",
            "remotePort": rnd.randint(30000, 60000),
        }
        roll = rnd.random()
        if roll < 0.90:
            lines.append(
                orjson.dumps({"level": 30, "time": now, **base, "reqId": req_id, "req": req, "msg": "incoming request"})
            )
            lines.append(
                orjson.dumps(
                    {
                        "level": 30,
                        "time": now + 1,
                        **base,
                        "reqId": req_id,
                        "res": {"statusCode": rnd.choice((200, 200, 200, 201, 404))},
                        "responseTime": rnd.random() * 20,
                        "msg": "request completed",
                    }
                )
            )
        elif roll < 0.97:
            lines.append(
                orjson.dumps(
                    {
                        "level": 40,
                        "time": now,
                        **base,
                        "reqId": req_id,
                        "component": "billing",
                        "tenant": "acme-corp",
                        "orderId": f"ord_{now}",
                        "amountCents": 1999,
                        "attempt": rnd.randint(1, 5),
                        "msg": "payment provider slow, retry scheduled",
                    }
                )
            )
        else:
            lines.append(
                orjson.dumps(
                    {
                        "level": 50,
                        "time": now,
                        **base,
                        "reqId": req_id,
                        "req": req,
                        "res": {"statusCode": 500},
                        "err": {"type": "Error", "message": "database connection lost", "stack": STACK},
                        "msg": "database connection lost",
                    }
                )
            )
    return lines[:count]


def nest_lines(count: int, seed: int = 2) -> list[bytes]:
    """Nest ConsoleLogger (plain) lines, with an occasional error and its stack."""
    rnd = random.Random(seed)
    lines: list[bytes] = []
    second = 50
    while len(lines) < count:
        if rnd.random() < 0.05:
            second = (second + 1) % 60
        stamp = f"11/23/2026, 12:47:{second:02d} AM"
        roll = rnd.random()
        if roll < 0.85:
            user = rnd.randint(1, 999)
            lines.append(f"[Nest] 31830  - {stamp}     LOG [AppController] fetching user {user}".encode())
        elif roll < 0.95:
            lines.append(f"[Nest] 31830  - {stamp}   DEBUG [UsersService] cache lookup +{rnd.randint(0, 9)}ms".encode())
        else:
            lines.append(
                f"[Nest] 31830  - {stamp}   ERROR [ExceptionsHandler] Error: database connection lost".encode()
            )
            lines.extend(
                f"    at frame{depth} (file:///srv/app/nest-app/dist/app.controller.js:{depth}:15)".encode()
                for depth in range(10)
            )
    return lines[:count]


def measure(name: str, lines: list[bytes], rounds: int, chunk: int = 1000) -> float:
    """Best lines/s (CPU time of this process) over `rounds` full passes, fed in chunks like a source."""
    config = SourceConfig(type="file", timezone="UTC")
    best = 0.0
    events = 0
    for _ in range(rounds):
        processor = build_processor("api", config, host="agent", redact=RedactConfig())
        parse: Callable[[list[bytes], str | None, float], list[object]] = processor.parse  # type: ignore[assignment]
        chunks = [lines[i : i + chunk] for i in range(0, len(lines), chunk)]
        started = time.process_time()
        events = 0
        for part in chunks:
            events += len(parse(part, "stdout", 1_795_394_900.0))
        events += len(processor.flush(force=True))
        best = max(best, len(lines) / (time.process_time() - started))
    size = sum(map(len, lines)) / len(lines)
    print(f"  {name:<6} {best:>10,.0f} lines/s  ({len(lines):,} lines, {size:.0f} B avg, {events:,} events)")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hostname", default="api-1", help="pino hostname (k8s pod names make redaction work)")
    args = parser.parse_args()
    pino, nest = pino_lines(args.lines, args.hostname), nest_lines(args.lines)
    for label in ("default GC", "tuned GC: gc.freeze(); gc.set_threshold(50_000, 20, 20)"):
        print(label)
        measure("pino", pino, args.rounds)
        measure("nest", nest, args.rounds)
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)


if __name__ == "__main__":
    main()
