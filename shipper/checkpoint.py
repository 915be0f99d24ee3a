"""Durable checkpoints: written atomically, validated before they are trusted.

A checkpoint file is JSON with a CRC32 of its payload, written to a temporary file, fsynced and
renamed over the old one (then the directory is fsynced), so kill -9 at any moment leaves either
the old or the new checkpoint, never a torn or NUL-filled one (loki#6268). A file that fails
validation is moved aside and reported, and the source starts as if it had none; an entry whose
values a source finds impossible (a negative offset, a cursor in the future) is rejected, reported
and dropped the same way. Both are counted in `shipper_state_corrupt_total`.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from shipper import metrics

log = logging.getLogger("shipper.checkpoint")

FORMAT_VERSION = 1


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class CheckpointStore:
    """One source's checkpoint state: a JSON-able dict, persisted when it changed."""

    def __init__(self, path: Path, on_change: Callable[[], None] | None = None, kind: str = "checkpoint") -> None:
        self.path = path
        self.kind = kind  # what it holds (a source's checkpoints, a disk buffer's position): the metric's label
        self.state: dict[str, Any] = {}
        self.dirty = False
        self._on_change = on_change  # told when the state changes (from the event loop), to save it soon
        # Saves run in a worker thread soon after a change and once more at exit: never two at
        # once, or both would write the same temporary file.
        self._saving = threading.Lock()

    def load(self) -> dict[str, Any]:
        """Read and validate the stored state; corrupt files are set aside, never trusted."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = orjson.loads(raw)
            payload = orjson.dumps(doc["state"], option=orjson.OPT_SORT_KEYS)
            if doc.get("version") != FORMAT_VERSION or doc.get("crc32") != zlib.crc32(payload):
                raise ValueError("checksum mismatch")
            if not isinstance(doc["state"], dict):
                raise ValueError("state is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            log.error(
                "checkpoint file is corrupt; starting without it",
                extra={"path": str(self.path), "moved_to": str(aside), "error": str(exc)},
            )
            metrics.state_corrupt.labels(self.kind, "corrupt").inc()
            return {}
        self.state = doc["state"]
        return self.state

    def update(self, key: str, value: Any) -> None:
        """Replace an entry; never mutate a stored value in place (saves snapshot shallowly)."""
        self.state[key] = value
        self._changed()

    def reject(self, key: str, why: str) -> None:
        """Drop an entry whose values cannot be true (checksummed, yet nonsense): reported, never trusted."""
        log.error(
            "checkpoint entry is invalid; not trusted",
            extra={"path": str(self.path), "entry": key, "error": why},
        )
        metrics.state_corrupt.labels(self.kind, "invalid_entry").inc()
        self.remove(key)

    def remove(self, key: str) -> None:
        if self.state.pop(key, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self.dirty = True
        if self._on_change is not None:
            self._on_change()

    def save(self) -> None:
        """Write the current state if it changed since the last save."""
        with self._saving:
            if not self.dirty:
                return
            self.dirty = False
            state = dict(self.state)  # one snapshot: sources replace entries from the loop meanwhile
            payload = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
            doc = {"version": FORMAT_VERSION, "crc32": zlib.crc32(payload), "state": state}
            atomic_write(self.path, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
