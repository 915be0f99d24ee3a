"""Wires a Config into a running pipeline and owns its lifecycle.

Start: sinks and drivers first (so nothing is read before it can be shipped), then sources.
Stop (SIGTERM/SIGINT): sources stop reading, held multi-line events are flushed, channels close,
drivers drain within `shutdown_timeout`, checkpoints are persisted, exit 0 (3 when events of a
source that cannot be read again were cut off by the deadline). When every source ends by itself
(stdin EOF) the drain waits as long as delivery takes, since the input cannot be read again; a
signal during that drain applies the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import Iterable

from shipper import metrics, systemd
from shipper.config import Config, SinkConfig, config_warnings, dead_letter_config
from shipper.errors import ShipperError
from shipper.event import Event
from shipper.pipeline.channel import Channel
from shipper.pipeline.deadletter import DeadLetters
from shipper.pipeline.driver import SinkDriver
from shipper.pipeline.spill import SpillLog, on_disk
from shipper.source import Source, SourceContext
from shipper.workers import SinkRoute, WorkerPool, resolve_worker_count

log = logging.getLogger("shipper.agent")

EXIT_FAILED = 1  # a source or sink died of an error: let systemd or the orchestrator restart us
EXIT_LOST = 3  # the shutdown deadline cut off events of a source that cannot be read again (stdin, process)
FLUSH_TICK = 0.25
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # to a wrapped process (pino reopens files on SIGUSR2)
_UNDELIVERED = {  # why events were left undelivered at shutdown, by drop reason
    "shutdown_timeout": "not delivered before the shutdown deadline",
    "delivery_error": "not delivered: their delivery failed",
}


class Agent:
    def __init__(self, config: Config, command: list[str] | None = None) -> None:
        from sinks import build_sink
        from sources import build_source
        from sources.process import wrapped_source

        self.config = config
        self.stopping = asyncio.Event()
        self._deadline_started = asyncio.Event()
        self._pipeline_failed = False
        self.started = False
        self.drivers: dict[str, SinkDriver] = {}
        # Per source, the sinks it feeds in config order (shipper/pipeline/routing.py routes by these).
        routes: dict[str, list[SinkRoute]] = {name: [] for name in config.sources}
        self._checkpoint_moved = asyncio.Event()  # set by a checkpoint store (a source's, a buffer's) that changed
        for name, sink_config in config.sinks.items():
            channel = self._channel(name, sink_config)
            sink = build_sink(name, sink_config)
            dead_letter = dead_letter_config(config, name)
            dead_letters = DeadLetters(name, dead_letter) if dead_letter is not None else None
            self.drivers[name] = SinkDriver(sink, channel, on_failure=self._failed, dead_letters=dead_letters)
            for source in sink_config.inputs:
                routes.setdefault(source, []).append(SinkRoute(name, sink_config.when, sink.preparer(), channel))
        # Parse workers pay off only when what comes back is already encoded: they serve the
        # sources whose every sink prepares its logs (every built-in sink does); the others parse here.
        served = {name for name, to in routes.items() if to and all(route.preparer for route in to)}
        workers = resolve_worker_count(config.agent.parse_workers) if served else 0
        agent = config.agent
        self.workers = WorkerPool(workers, agent.log_level, agent.log_format, self._failed) if workers else None
        self.contexts: dict[str, SourceContext] = {}
        self.sources: dict[str, Source] = {}
        wrapped, wrapped_config = wrapped_source(config.sources) if command else (None, None)
        for name, source_config in config.sources.items():
            if name == wrapped and wrapped_config is not None:
                source_config = wrapped_config
            context = SourceContext(
                name,
                source_config,
                routes=routes[name],
                host=config.agent.host,
                redact=config.redact,
                state_dir=config.agent.state_dir,
                stopping=self.stopping,
                workers=self.workers if name in served else None,
                checkpoint_moved=self._checkpoint_moved,
            )
            if name == wrapped:
                context.command = command
            self.contexts[name] = context
            self.sources[name] = build_source(name, source_config, context)
            context.replayable = self.sources[name].replayable
        self.api = None
        if config.api.enabled:
            from shipper.api import ApiServer  # aiohttp's server: imported only when the API is on

            self.api = ApiServer(config.api, self)

    def _channel(self, name: str, sink_config: SinkConfig) -> Channel:
        """A sink's buffer: in memory, with a disk buffer under `state_dir/buffers/<sink>` for what
        cannot wait in memory (or for everything, `buffer.type = "disk"`)."""
        buffer, disk_bytes = sink_config.buffer, sink_config.disk_bytes
        spill = None
        if disk_bytes:
            directory = self.config.agent.state_dir / "buffers" / name
            spill = SpillLog(name, directory, disk_bytes, buffer.fsync, self._checkpoint_moved.set)
        return Channel(name, sink_config.memory_bytes, buffer.when_full, spill, durable=buffer.type == "disk")

    def _open_channels(self) -> bool:
        """Take each sink's disk buffer (what a previous run left in it goes first). False, with the
        reason logged and nothing taken, when one cannot be: another shipper holds it, or the disk
        refuses."""
        for driver in self.drivers.values():
            try:
                driver.channel.open()
            except (ShipperError, OSError) as exc:
                log.error(str(exc) if isinstance(exc, ShipperError) else f"cannot open the disk buffer: {exc}")
                for spill in self._spills:
                    spill.close()
                return False
        return True

    @property
    def _spills(self) -> list[SpillLog]:
        return [driver.channel.spill for driver in self.drivers.values() if driver.channel.spill is not None]

    @property
    def ready(self) -> bool:
        """Started and not draining: about shipper itself, not its destinations (a sidecar's
        readiness gates its whole pod; a destination's outage must not take the API out of service)."""
        return self.started and not self.stopping.is_set()

    def request_stop(self, signame: str = "") -> None:
        if signame:
            log.info("stopping", extra={"signal": signame})
            for context in self.contexts.values():
                context.stop_signal = context.stop_signal or signal.Signals[signame]
        if self.stopping.is_set():
            self._deadline_started.set()
        self.stopping.set()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if _died(task.get_name(), task):
            self._failed()

    def _failed(self) -> None:
        """Part of the pipeline died (a source, a sink's driver or one of its deliveries, a parse
        worker, housekeeping): stop, and exit 1 (the checkpoints hold, so a restart resends what was not
        delivered)."""
        self._pipeline_failed = True
        self.request_stop()

    def _reload_requested(self) -> None:
        log.warning("SIGHUP: live config reload is not implemented yet; restart shipper to apply changes")

    def _forward(self, signum: signal.Signals) -> None:
        """SIGUSR1/SIGUSR2 belong to the wrapped API: pass them on, and never die of them."""
        if not any([source.forward_signal(signum) for source in self.sources.values()]):  # a list: every one
            log.info("signal ignored: no wrapped process to forward it to", extra={"signal": signum.name})

    async def run(self) -> int:
        if not self._open_channels():
            return EXIT_FAILED
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested)
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self._forward, sig)
        if self.api is not None:
            await self.api.start()
        if self.workers is not None:
            await self.workers.start()
        driver_tasks = {name: asyncio.create_task(d.run(), name=f"sink:{name}") for name, d in self.drivers.items()}
        for task in driver_tasks.values():  # a dead driver would leave its sources blocked on a full channel
            task.add_done_callback(self._task_ended)
        source_tasks = {name: asyncio.create_task(s.run(), name=f"source:{name}") for name, s in self.sources.items()}
        for task in source_tasks.values():  # the others running on must not hide a dead one
            task.add_done_callback(self._task_ended)
        housekeeping = [
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._checkpoint_loop(), name="checkpoints"),
            asyncio.create_task(systemd.watchdog(), name="watchdog"),
        ]
        if self._spills:
            housekeeping.append(asyncio.create_task(self._sync_loop(), name="buffer-sync"))
        for task in housekeeping:  # one that dies would leave events held or checkpoints stale
            task.add_done_callback(self._task_ended)
        for warning in config_warnings(self.config):
            log.warning(warning.message, extra={"key": warning.key})
        self.started = True
        log.info("started", extra={"sources": sorted(self.sources), "sinks": sorted(self.drivers)})
        systemd.notify("READY=1")

        stop_wait = asyncio.create_task(self.stopping.wait())
        running = set(source_tasks.values())
        while running and not self.stopping.is_set():
            # Only what still runs: a finished source (stdin at EOF) would end every wait at once.
            done, _ = await asyncio.wait({stop_wait, *running}, return_when=asyncio.FIRST_COMPLETED)
            running -= done
            if any(c.exit_code is not None for c in self.contexts.values()):
                break  # the wrapped API exited: drain within the deadline and exit with its code
        by_signal = self.stopping.is_set() or any(c.exit_code is not None for c in self.contexts.values())
        systemd.notify("STOPPING=1")
        self.stopping.set()
        stop_wait.cancel()
        deadline = self.config.agent.shutdown_timeout

        if not await self._within(source_tasks.values(), deadline, by_signal, "sources"):
            await self._cancel(source_tasks.values())
        for context in self.contexts.values():
            for feed in list(context.feeds):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(feed.flush(force=True), 1.0)
        for driver in self.drivers.values():
            driver.channel.close()
        drained = await self._within(driver_tasks.values(), deadline, by_signal, "sinks")
        if not drained:
            await self._cancel(driver_tasks.values())  # their batches stay unacknowledged, to account for
        lost = self._abandon(cut_off=not drained)
        failed = self._pipeline_failed
        if self.workers is not None:
            await self.workers.close()
        for task in housekeeping:
            task.cancel()
        self._save_checkpoints()
        for source in self.sources.values():
            source.close()
        for spill in self._spills:
            spill.close()
        if self.api is not None:
            await self.api.stop()
        codes = [c.exit_code for c in self.contexts.values() if c.exit_code is not None]
        log.info("stopped", extra={"drained": drained})
        if codes and (codes[0] or not lost):
            return codes[0]  # the wrapped API's exit code (its own failure says more than ours)
        if failed:
            return EXIT_FAILED
        return EXIT_LOST if lost else 0

    async def _within(self, tasks: Iterable[asyncio.Task[None]], deadline: float, by_signal: bool, what: str) -> bool:
        """Wait for `tasks`: within the deadline after a signal, else until done or a second signal.
        On timeout the tasks are left running, so the caller can account for their work first."""
        pending = set(tasks)
        if not pending:
            return True
        if not by_signal:
            finished = asyncio.ensure_future(asyncio.wait(pending))  # cancelling it leaves `pending` running
            signalled = asyncio.ensure_future(self._deadline_started.wait())
            await asyncio.wait({finished, signalled}, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            signalled.cancel()
            if all(task.done() for task in pending):
                return True
        _, still_running = await asyncio.wait(pending, timeout=deadline)
        if still_running:
            log.error("shutdown deadline passed", extra={"waiting_for": what, "shutdown_timeout": deadline})
        return not still_running

    @staticmethod
    async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _abandon(self, cut_off: bool) -> bool:
        """Account, once the drivers have stopped, for what they left undelivered: cut off by the
        deadline, or left by a delivery that died of a bug (or by a dead driver). True when some of
        it was lost."""
        lost = False
        for name, driver in self.drivers.items():
            lost |= self._account(name, driver.channel, driver.failed, "delivery_error")
            reason = "shutdown_timeout" if cut_off else "delivery_error"
            lost |= self._account(name, driver.channel, driver.unsent(), reason)
        return lost

    def _account(self, sink: str, channel: Channel, events: list[Event], reason: str) -> bool:
        """Per source: events in the sink's disk buffer are sent after a restart (a warning), and so
        are those of a replayable source (read again); those of another source are written to the disk
        buffer when the sink has one, else lost (an error and a counted drop). True when some were lost."""
        if channel.spill is not None:
            events = self._kept_on_disk(sink, channel, events)
        replayable = {name for name, source in self.sources.items() if source.replayable}
        why = _UNDELIVERED[reason]
        lost = False
        unsent = Counter(event.fields.get("source") for event in events)
        for source, count in sorted(unsent.items(), key=lambda item: str(item[0])):
            if source in replayable:
                log.warning(
                    f"events {why}; they are sent again after a restart",
                    extra={"sink": sink, "source": source, "resent_on_restart": count},
                )
                continue
            lost = True
            metrics.events_dropped.labels(sink, reason).inc(count)
            log.error(
                f"events lost: {why}, and this source cannot be read again",
                extra={"sink": sink, "source": source, "lost": count},
            )
        return lost

    def _kept_on_disk(self, sink: str, channel: Channel, events: list[Event]) -> list[Event]:
        """What of `events` the sink's disk buffer does not keep for the next run: those already in it
        (every one, `buffer.type = "disk"`) stay there, and those of a source that cannot be read again
        are written to it now (the SIGTERM that ends `node app | shipper run` loses nothing)."""
        assert channel.spill is not None
        replayable = {name for name, source in self.sources.items() if source.replayable}
        rest = [] if channel.durable else [event for event in events if not on_disk(event)]
        persist = [event for event in rest if event.fields.get("source") not in replayable]
        if persist:
            try:
                written = channel.spill.append(persist) is not None
            except OSError as exc:
                log.error("cannot write to the disk buffer", extra={"sink": sink, "error": str(exc)})
                written = False
            if written:
                rest = [event for event in rest if event.fields.get("source") in replayable]
        kept = len(events) - len(rest)
        if kept:
            log.warning(
                "events not delivered before shutdown are kept in the disk buffer; they are sent after a restart",
                extra={"sink": sink, "kept": kept, "path": str(channel.spill.directory)},
            )
        return rest

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_TICK)
            for context in self.contexts.values():
                for feed in list(context.feeds):
                    await feed.flush()

    async def _checkpoint_loop(self) -> None:
        """Persist checkpoints as soon as one moves, then wait `checkpoint_interval` before the next
        save: under load one save (an fsync) per interval, at rest none, and a kill -9 re-sends only
        what was acknowledged in the last interval or so."""
        while True:
            await self._checkpoint_moved.wait()
            self._checkpoint_moved.clear()
            await asyncio.to_thread(self._save_checkpoints)
            await asyncio.sleep(self.config.agent.checkpoint_interval)

    async def _sync_loop(self) -> None:
        """fsync the disk buffers at least every `fsync_interval` (the checkpoint saves sync them too)."""
        interval = min(driver.sink.config.buffer.fsync_interval for driver in self.drivers.values())
        while True:
            await asyncio.sleep(interval)
            for spill in self._spills:
                await asyncio.to_thread(spill.sync)

    def _save_checkpoints(self) -> None:
        """Disk buffers first: a source's checkpoint is never on disk ahead of the data it handed to
        a disk buffer. Then the buffers' delivered positions and the sources' checkpoints."""
        for spill in self._spills:
            spill.sync()
            try:
                spill.store.save()
            except OSError as exc:
                log.error("cannot write a disk buffer's position", extra={"sink": spill.sink, "error": str(exc)})
        for context in self.contexts.values():
            try:
                context.checkpoints.save()
            except OSError as exc:
                log.error("cannot write checkpoint", extra={"source": context.name, "error": str(exc)})


def _died(name: str, task: asyncio.Task[None]) -> bool:
    """Whether a finished task died of an exception; logged when it did: an error shipper raised on
    purpose (a source that may not start) as its one line, anything else with its traceback."""
    if task.done() and not task.cancelled() and task.exception() is not None:
        error = task.exception()
        if isinstance(error, ShipperError):
            log.error(str(error), extra={"task": name})
        else:
            log.error("task failed", extra={"task": name}, exc_info=error)
        return True
    return False
