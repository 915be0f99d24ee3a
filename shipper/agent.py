"""Wires a Config into a running pipeline and owns its lifecycle.

Start: sinks and drivers first (so nothing is read before it can be shipped), then sources.
Stop (SIGTERM/SIGINT): sources stop reading, held multi-line events are flushed, channels close,
drivers drain within `shutdown_timeout`, checkpoints are persisted, exit 0 (3 when events of a
source that cannot be read again were cut off by the deadline). When every source ends by itself
(stdin EOF) the drain waits as long as delivery takes, since the input cannot be read again; a
signal during that drain applies the deadline.

Reload (SIGHUP, systemd's ExecReload): the config file is read and checked as at start (sinks and
sources built) before anything changes; an invalid one is logged, counted, and the running config
kept. Else, per shipper/reload.py: unchanged sinks and sources run on untouched; an added sink
starts; a changed sink's new driver takes over its channel once the old one has delivered the
batches it cut (within `shutdown_timeout`; what it could not finish the new one sends); a removed
sink gets no more data, drains within `shutdown_timeout`, and what it still holds then is dropped
(counted, reason `sink_removed`). A source whose routes changed keeps running: its feeds route
every chunk parsed after the reload by the new routes (shipper/pipeline/feed.py `reroute`), so
nothing is read twice or skipped; a replayable source whose own table changed is restarted from
its checkpoints, once its last acknowledgements settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from typing import Any

from shipper import metrics, systemd
from shipper.config import Config, SinkConfig, SourceConfig, config_warnings, dead_letter_config
from shipper.errors import ConfigError, ShipperError
from shipper.event import Event
from shipper.lines import events_of
from shipper.log import set_level
from shipper.pipeline.channel import Channel
from shipper.pipeline.deadletter import DeadLetters
from shipper.pipeline.driver import SinkDriver, batch_limits
from shipper.pipeline.feed import LineFeed
from shipper.pipeline.spill import SpillLog, on_disk
from shipper.reload import FEED_AGENT_KEYS, LIVE_AGENT_KEYS, ConfigDiff, diff_configs
from shipper.sink import Sink
from shipper.source import Source, SourceContext
from shipper.speedups import SPEEDUPS
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
# A source's successor, built before a reload changes anything.
Successor = tuple[SourceContext, Source]


class Agent:
    def __init__(self, config: Config, command: list[str] | None = None) -> None:
        from sources.process import wrapped_source

        self.config = config
        self.command = command
        self.stopping = asyncio.Event()
        self._deadline_started = asyncio.Event()
        self._pipeline_failed = False
        self.started = False
        self.drivers: dict[str, SinkDriver] = {}  # each sink's current driver
        self._driver_tasks: dict[SinkDriver, asyncio.Task[None]] = {}  # running ones, a reload's retiring ones too
        self._checkpoint_moved = asyncio.Event()  # set by a checkpoint store (a source's, a buffer's) that changed
        for name in config.sinks:
            self._start_sink(name, config)
        routes = self._routes(config)
        # Parse workers pay off only when what comes back is already encoded: they serve the
        # sources whose every sink prepares its logs (every built-in sink does); the others parse here.
        served = {name for name, to in routes.items() if to and all(route.preparer for route in to)}
        workers = resolve_worker_count(config.agent.parse_workers) if served else 0
        agent = config.agent
        self.workers = WorkerPool(workers, agent.log_level, agent.log_format, self._failed) if workers else None
        self.contexts: dict[str, SourceContext] = {}
        self.sources: dict[str, Source] = {}
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._sources_changed = asyncio.Event()  # a reload started a source: the main loop waits for it too
        self._wrapped = wrapped_source(config.sources)[0] if command else None
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False  # SIGHUP during a reload: reload once more after it
        self._transitions: set[asyncio.Task[None]] = set()  # a reload's handovers, removals and restarts
        for name, source_config in self._source_configs(config).items():
            context, source = self._build_source(name, source_config, config)
            self._adopt_source(context, source, routes[name])
        self.api = None
        if config.api.enabled:
            from shipper.api import ApiServer  # imported only when the API is on

            self.api = ApiServer(config.api, self)

    def _start_sink(
        self, name: str, config: Config, sink: Sink | None = None, channel: Channel | None = None
    ) -> SinkDriver:
        """The sink's driver, with its channel (a new one unless a reload hands `channel` over) and
        dead letters, as the sink's current driver; `run` (or a reload) starts it."""
        from sinks import build_sink

        sink_config = config.sinks[name]
        if channel is None:
            channel = self._channel(name, sink_config)
        dead_letter = dead_letter_config(config, name)
        dead_letters = DeadLetters(name, dead_letter) if dead_letter is not None else None
        sink = sink or build_sink(name, sink_config)
        driver = SinkDriver(sink, channel, on_failure=self._failed, dead_letters=dead_letters)
        self.drivers[name] = driver
        return driver

    def _run_driver(self, driver: SinkDriver) -> None:
        task = asyncio.create_task(driver.run(), name=f"sink:{driver.sink.name}")
        task.add_done_callback(self._task_ended)  # a dead driver would leave its sources blocked on a full channel
        self._driver_tasks[driver] = task

    def _routes(self, config: Config) -> dict[str, list[SinkRoute]]:
        """Per source, the sinks it feeds in config order (shipper/pipeline/routing.py routes by these)."""
        routes: dict[str, list[SinkRoute]] = {name: [] for name in config.sources}
        for name, sink_config in config.sinks.items():
            driver = self.drivers[name]
            for source in sink_config.inputs:
                route = SinkRoute(name, sink_config.when, driver.sink.preparer(), driver.channel)
                routes.setdefault(source, []).append(route)
        return routes

    def _source_configs(self, config: Config) -> dict[str, SourceConfig]:
        """The source tables as run: with a wrapped command, its source reads the command's output."""
        from sources.process import wrapped_source

        sources = dict(config.sources)
        if self.command:
            name, wrapped = wrapped_source(config.sources)
            sources[name] = wrapped
        return sources

    def _build_source(self, name: str, source_config: SourceConfig, config: Config) -> Successor:
        """A source and its context, routed nowhere yet (`_adopt_source` routes it)."""
        from sources import build_source

        context = SourceContext(
            name,
            source_config,
            routes=[],
            host=config.agent.host,
            redact=config.redact,
            state_dir=config.agent.state_dir,
            stopping=asyncio.Event(),
            checkpoint_moved=self._checkpoint_moved,
        )
        if name == self._wrapped:
            context.command = self.command
        return context, build_source(name, source_config, context)

    def _adopt_source(self, context: SourceContext, source: Source, routes: list[SinkRoute]) -> None:
        """Make `source` the running one of its name, feeding `routes` (through parse workers
        when every one of its sinks prepares its logs)."""
        context.routes = routes
        context.replayable = source.replayable
        served = self.workers is not None and routes and all(route.preparer for route in routes)
        context.workers = self.workers if served else None
        if self.stopping.is_set():
            context.stopping.set()
        self.contexts[context.name] = context
        self.sources[context.name] = source

    def _run_source(self, name: str) -> None:
        task = asyncio.create_task(self.sources[name].run(), name=f"source:{name}")
        task.add_done_callback(self._task_ended)  # the others running on must not hide a dead one
        self._source_tasks[name] = task
        self._sources_changed.set()

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
    def _replayable(self) -> set[str]:
        """The sources whose input can be read again after a restart (a file, a cursor)."""
        return {name for name, source in self.sources.items() if source.replayable}

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
        self._stop_sources()

    def _stop_sources(self) -> None:
        self.stopping.set()
        for context in self.contexts.values():
            context.stopping.set()

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
        """SIGHUP: reload the config file, one reload at a time (one asked for meanwhile follows)."""
        if not self.started or self.stopping.is_set():
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.create_task(self._reload(), name="reload")
        self._reloading.add_done_callback(self._task_ended)

    async def _reload(self) -> None:
        again = True
        while again and not self.stopping.is_set():
            self._reload_again = False
            # The last reload's handovers end first (each within its deadline): one change at a time.
            await asyncio.gather(*self._transitions, return_exceptions=True)
            if self.stopping.is_set():
                return
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                new, diff, sinks, sources = self._plan()
            except Exception as exc:  # anything building it raised: the running config stays
                self._reload_failed(exc)
            else:
                self._apply(new, diff, sinks, sources)
                _reloaded(True)
            systemd.notify("READY=1")
            again = self._reload_again

    def _reload_failed(self, error: Exception) -> None:
        _reloaded(False)
        extra: dict[str, Any] = {
            "error": str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
        }
        if isinstance(error, ConfigError):
            extra.update(key=error.key, line=error.line)
        log.error("config reload failed; the running config is kept", extra=extra)

    def _plan(self) -> tuple[Config, ConfigDiff, dict[str, Sink], dict[str, Successor]]:
        """The new config, checked as at start, what it changes, and the sinks and sources it
        needs, built: anything that can fail fails here, before anything changes."""
        from shipper.cli import load_checked, located
        from sinks import build_sink
        from sources import REGISTRY

        path = self.config.path
        if path is None:
            raise ConfigError("(file)", "this agent was not started from a config file: nothing to reload")
        new = load_checked(path)
        running = {name: source.config for name, source in self.sources.items()}
        wanted = self._source_configs(new)
        types = {source.type for source in [*running.values(), *wanted.values()]}
        diff = diff_configs(self.config, new, running, wanted, {t: REGISTRY.component(t).replayable for t in types})
        # What only a restart applies keeps its running value: the config in force says what runs.
        kept = {key: getattr(self.config.agent, key) for key in type(new.agent).model_fields}
        for key in LIVE_AGENT_KEYS | FEED_AGENT_KEYS:
            kept.pop(key)
        new = new.model_copy(update={"agent": new.agent.model_copy(update=kept), "api": self.config.api})
        sinks: dict[str, Sink] = {}
        for name in diff.sinks_added + diff.sinks_changed:
            sinks[name] = build_sink(name, new.sinks[name])
            try:
                batch_limits(sinks[name])
            except ConfigError as exc:
                raise located(exc, path) from None
        sources = {
            name: self._build_source(name, wanted[name], new) for name in diff.sources_added + diff.sources_restarted
        }
        return new, diff, sinks, sources

    def _apply(self, new: Config, diff: ConfigDiff, sinks: dict[str, Sink], sources: dict[str, Successor]) -> None:
        """Switch to `new`; what takes time (drains, handovers, restarts) goes on in transitions."""
        old, self.config = self.config, new
        if new.agent.log_level != old.agent.log_level:
            set_level(new.agent.log_level)
        deadline = asyncio.get_running_loop().time() + new.agent.shutdown_timeout
        feeds = [feed for context in self.contexts.values() for feed in context.feeds]  # routed by the old routes
        removed = {name: self.drivers.pop(name) for name in diff.sinks_removed}
        for name in diff.sinks_changed:
            retiring = self.drivers[name]
            successor = self._start_sink(name, new, sinks[name], channel=retiring.channel)
            retiring.hand_over()
            self._transition(self._hand_over(retiring, successor, deadline))
        for name in diff.sinks_added:
            driver = self._start_sink(name, new, sinks[name])
            try:
                driver.channel.open()
            except (ShipperError, OSError) as exc:
                del self.drivers[name]
                log.error("sink not added: cannot take its disk buffer", extra={"sink": name, "error": str(exc)})
                continue
            self._run_driver(driver)
        routes = self._routes(new)
        for name in diff.sources_kept:
            context = self.contexts[name]
            if context.routes != routes.get(name, []):
                context.routes = routes.get(name, [])
                for feed in context.feeds:
                    feed.reroute(context.routes)
        for name in diff.sources_restarted + diff.sources_removed:
            self._transition(self._replace_source(name, sources.get(name), routes.get(name, []), deadline))
        for name in diff.sources_added:
            self._adopt_source(*sources[name], routes[name])
            self._run_source(name)
        for name, driver in removed.items():
            self._transition(self._remove_sink(name, driver, feeds, deadline))
        for key in diff.needs_restart:
            log.warning(
                "config changed, but only a restart applies this: restart shipper to apply it", extra={"key": key}
            )
        for warning in config_warnings(new):
            log.warning(warning.message, extra={"key": warning.key})
        log.info("config reloaded", extra=diff.summary)

    def _transition(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name="reload-transition")
        task.add_done_callback(self._task_ended)
        task.add_done_callback(self._transitions.discard)
        self._transitions.add(task)

    async def _hand_over(self, retiring: SinkDriver, successor: SinkDriver, deadline: float) -> None:
        """`successor` takes the channel once `retiring` has delivered the batches it cut; those it
        could not by `deadline`, `successor` sends first. Per source, events leave in order."""
        task = self._driver_tasks[retiring]
        await asyncio.wait({task}, timeout=_left(deadline))
        if not task.done():
            await self._cancel([task])
            successor.adopt(retiring)
        del self._driver_tasks[retiring]
        self._run_driver(successor)

    async def _remove_sink(self, name: str, driver: SinkDriver, feeds: list[LineFeed], deadline: float) -> None:
        """A removed sink: once no feed routes to it any more, it drains within `deadline`. What it
        holds in memory then is dropped, counted (its sources went on without it: nothing waits for
        it); what its disk buffer holds stays there, for the sink to send when it is configured again."""
        settled = asyncio.ensure_future(asyncio.gather(*(feed.settled() for feed in feeds), return_exceptions=True))
        task = self._driver_tasks[driver]
        await asyncio.wait({settled}, timeout=_left(deadline))
        if settled.done():
            driver.channel.close()
            await asyncio.wait({task}, timeout=_left(deadline))
        if task.done():
            del self._driver_tasks[driver]
            _release(driver.channel)
            return
        await self._cancel([task])
        del self._driver_tasks[driver]
        channel = driver.channel
        given_up = [(batch.unresolved(), batch.acks) for batch in driver.inflight]
        driver.inflight.clear()
        while True:  # what it holds in memory, and parts routed before the reload
            given_up.extend((events_of(part.events), [(part.ack, len(part.events))]) for part in channel.drain_unsent())
            if settled.done():
                break
            await asyncio.sleep(FLUSH_TICK)
        disk = channel.spill.tracker if channel.spill is not None else None
        dropped = 0
        for events, acks in given_up:
            if not channel.durable:
                dropped += len([event for event in events if not on_disk(event)])
            for ack, units in acks:
                if ack.tracker is not disk:  # a disk buffer's record stays until delivered
                    ack.done(units)
        _release(channel)
        if dropped:
            metrics.events_dropped.labels(name, "sink_removed").inc(dropped)
            log.error(
                "removed sink did not drain within shutdown_timeout; the events it held in memory are dropped",
                extra={"sink": name, "dropped": dropped},
            )
        if channel.spill is not None and channel.spill.nbytes:
            log.warning(
                "removed sink's disk buffer keeps its undelivered events; configure the sink again to send them",
                extra={"sink": name, "path": str(channel.spill.directory), "bytes": channel.spill.nbytes},
            )

    async def _replace_source(
        self, name: str, successor: Successor | None, routes: list[SinkRoute], deadline: float
    ) -> None:
        """Stop a replayable source (removed, or restarted with `successor`): its reads end, its
        acknowledgements settle within `deadline`, what is still in flight then is read again by
        the successor from the saved checkpoints. Never two readers on one checkpoint store."""
        context, source, task = self.contexts[name], self.sources[name], self._source_tasks[name]
        feeds = list(context.feeds)
        context.stopping.set()
        await asyncio.wait({task}, timeout=_left(deadline))
        if not task.done():
            await self._cancel([task])
        while any(feed.tracker.outstanding for feed in feeds) and _left(deadline) > 0:
            await asyncio.sleep(FLUSH_TICK)
        for feed in feeds:
            feed.tracker.abandon()
        await asyncio.to_thread(context.checkpoints.save)
        source.close()
        if self.stopping.is_set():
            return  # shutting down: the stopped source stays in place, its checkpoints saved again at exit
        if successor is None:
            del self.contexts[name], self.sources[name], self._source_tasks[name]
            return
        self._adopt_source(*successor, routes)
        self._run_source(name)

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
        for driver in self.drivers.values():
            self._run_driver(driver)
        for name in self.sources:
            self._run_source(name)
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
        _reloaded(None)
        log.info(
            "started",
            extra={"sources": sorted(self.sources), "sinks": sorted(self.drivers), "compiled": SPEEDUPS is not None},
        )
        systemd.notify("READY=1")

        stop_wait = asyncio.create_task(self.stopping.wait())
        while not self.stopping.is_set():
            # Only what still runs: a finished source (stdin at EOF) would end every wait at once.
            running = {task for task in self._source_tasks.values() if not task.done()}
            reloading = {task for task in (self._reloading, *self._transitions) if task is not None and not task.done()}
            if not running and not reloading:
                break
            started = asyncio.ensure_future(self._sources_changed.wait())
            await asyncio.wait({stop_wait, started, *running, *reloading}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            self._sources_changed.clear()
            if any(c.exit_code is not None for c in self.contexts.values()):
                break  # the wrapped API exited: drain within the deadline and exit with its code
        by_signal = self.stopping.is_set() or any(c.exit_code is not None for c in self.contexts.values())
        systemd.notify("STOPPING=1")
        self._stop_sources()
        stop_wait.cancel()
        deadline = self.config.agent.shutdown_timeout

        source_tasks = list(self._source_tasks.values())
        if not await self._within(source_tasks, deadline, by_signal, "sources"):
            await self._cancel(source_tasks)
        for context in self.contexts.values():
            for feed in list(context.feeds):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(feed.flush(force=True), 1.0)
        # A reload's handovers end within their own deadline: a changed sink's new driver then drains.
        await asyncio.gather(
            *(task for task in (self._reloading, *self._transitions) if task is not None), return_exceptions=True
        )
        driver_tasks = list(self._driver_tasks.values())
        for driver in self._driver_tasks:
            driver.channel.close()
        drained = await self._within(driver_tasks, deadline, by_signal, "sinks")
        if not drained:
            await self._cancel(driver_tasks)  # their batches stay unacknowledged, to account for
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
        for driver in self._driver_tasks:
            name = driver.sink.name
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
        replayable = self._replayable
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
        replayable = self._replayable
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
            spill.save()
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


def _release(channel: Channel) -> None:
    """Let go of a removed sink's disk buffer: its delivered position saved, its lock released."""
    if channel.spill is not None:
        channel.spill.close()


def _left(deadline: float) -> float:
    """Seconds until `deadline` on the event loop's clock (never negative)."""
    return max(0.0, deadline - asyncio.get_running_loop().time())


def _reloaded(success: bool | None) -> None:
    """Count a reload (None: the load at start, which counts none) and say when it happened."""
    for result in ("success", "failure"):  # both series exist from the start, at 0
        metrics.config_reloads.labels(result)
    if success is not None:
        metrics.config_reloads.labels("success" if success else "failure").inc()
    metrics.config_last_reload_success.set(0 if success is False else 1)
    metrics.config_last_reload_timestamp.set(time.time())
