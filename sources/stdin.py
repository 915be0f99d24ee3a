"""Read the API's logs piped into shipper (`node app.js | shipper run`) until EOF.

A daemon thread does blocking `os.read`s of up to 256 KiB, which works whatever standard input is
(a pipe, a terminal, a redirected regular file) and never keeps the process alive at shutdown.
It hands chunks over through a small bounded queue, so a slow pipeline slows the reads instead of
growing memory. stdin is not replayable: nothing is checkpointed, and EOF means "drain, then exit".
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Literal

from shipper.config import SourceConfig
from shipper.source import Source

READ_SIZE = 256 * 1024


class StdinConfig(SourceConfig):
    type: Literal["stdin"]


def _reader(fd: int, queue: asyncio.Queue[bytes], loop: asyncio.AbstractEventLoop) -> None:
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        try:
            asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
        except RuntimeError:  # the loop is gone: we are shutting down
            return
        if not data:
            return


class StdinSource(Source):
    async def run(self) -> None:
        feed = self.context.open_feed()
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        loop = asyncio.get_running_loop()
        threading.Thread(target=_reader, args=(sys.stdin.fileno(), queue, loop), daemon=True, name="stdin").start()
        stopping = asyncio.ensure_future(self.context.stopping.wait())
        try:
            while True:
                read = asyncio.ensure_future(queue.get())
                await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    break
                data = read.result()
                if not data:
                    break
                await feed.push(data)
            await feed.flush(force=True)
        finally:
            stopping.cancel()


REGISTRATION = (StdinConfig, StdinSource)
