"""A minimal HTTP sink target for benches: counts NDJSON lines, answers 204. Run as a separate process."""

from __future__ import annotations

import argparse

from aiohttp import web

received = {"events": 0, "requests": 0}


async def logs(request: web.Request) -> web.Response:
    body = await request.read()  # aiohttp undoes Content-Encoding: gzip
    received["events"] += body.count(b"\n")
    received["requests"] += 1
    return web.Response(status=204)


async def count(request: web.Request) -> web.Response:
    return web.json_response(received)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/logs", logs)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
