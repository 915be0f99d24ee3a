"""A record source for tests: pages of records with a cursor of its own, as a poller (Supabase) or a
receiver hands them over. Registered as `type = "test-records"` by the tests that use it."""

from __future__ import annotations

import time
from typing import Any, Literal

from shipper.config import SourceConfig
from shipper.source import Source

CURSOR = "cursor"


class TestRecordsConfig(SourceConfig):
    type: Literal["test-records"]
    pages: int = 3
    per_page: int = 4


def page_records(page: int, per_page: int) -> list[dict[str, Any]]:
    """Records of one page, each with its own time (epoch microseconds, a few minutes ago) and an
    id that names its page, one of them carrying a bearer token."""
    now_us = int(time.time() * 1_000_000) - 300_000_000
    return [
        {
            "id": f"{page}-{index}",
            "timestamp": now_us + page * 1000 + index,
            "level": "error" if index == 0 else "info",
            "msg": f"record {page}-{index}",
            "request": {"headers": {"authorization": f"Bearer sk-page{page}-secret"}},
        }
        for index in range(per_page)
    ]


class TestRecordSource(Source):
    """Pushes its pages from the committed cursor on; the cursor is the next page to read."""

    replayable = True
    config: TestRecordsConfig

    async def run(self) -> None:
        store = self.context.checkpoints
        start = int(store.load().get(CURSOR, 0))
        feed = self.context.open_record_feed(on_commit=lambda cursor: store.update(CURSOR, cursor), committed=start)
        for page in range(start, self.config.pages):
            if self.context.stopping.is_set():
                break
            await feed.push_records(page_records(page, self.config.per_page), page + 1)
        await feed.flush(force=True)


REGISTRATION = (TestRecordsConfig, TestRecordSource)
