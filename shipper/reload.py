"""What a reloaded config changes (SIGHUP), table by table, compared as validated models.

Formatting, comments and key order are no change. A sink's own settings (everything but `inputs`
and `when`, which only decide what its sources send it, plus its effective dead-letter settings)
decide whether it gets a new driver; the routes are compared by the agent (shipper/agent.py), which
swaps them in place in the sources' feeds. A replayable source (file, supabase) whose table
changed is restarted from its checkpoints; a source that cannot be read again (stdin, a wrapped
process) is never restarted, so a change to its table only applies after a restart of shipper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from shipper.config import Config, SinkConfig, SourceConfig, dead_letter_config

# `[agent]` keys the agent applies live; `host` (like `[redact]`) is what feeds are built with:
# applied by restarting the replayable sources. The other `[agent]` keys and all of `[api]` need a restart.
LIVE_AGENT_KEYS = frozenset({"log_level", "shutdown_timeout", "checkpoint_interval", "dead_letter"})
FEED_AGENT_KEYS = frozenset({"host"})
_ROUTING: dict[str, object] = {
    "inputs": [],
    "when": None,
}  # a sink's keys that are its sources' routes, not its own settings


@dataclass
class ConfigDiff:
    sinks_added: list[str] = field(default_factory=list)
    sinks_removed: list[str] = field(default_factory=list)  # a sink whose `type` changed is removed and added
    sinks_changed: list[str] = field(default_factory=list)  # new settings take over its channel
    sinks_unchanged: list[str] = field(default_factory=list)
    sources_added: list[str] = field(default_factory=list)
    sources_removed: list[str] = field(default_factory=list)
    sources_restarted: list[str] = field(default_factory=list)  # replayable, from their checkpoints
    sources_kept: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)  # changed keys only a restart of shipper applies

    @property
    def summary(self) -> dict[str, list[str]]:
        """The log line's fields: what the reload did to each sink and source."""
        return {name: value for name, value in vars(self).items() if name != "needs_restart"}


def changed_keys(prefix: str, old: BaseModel, new: BaseModel) -> list[str]:
    """The dotted keys of the fields that differ between two models of one table."""
    fields = dict.fromkeys([*type(old).model_fields, *type(new).model_fields])
    return [f"{prefix}.{name}" for name in fields if getattr(old, name, None) != getattr(new, name, None)]


def _own_settings(config: Config, name: str) -> tuple[SinkConfig, object]:
    return config.sinks[name].model_copy(update=_ROUTING), dead_letter_config(config, name)


def diff_configs(
    old: Config,
    new: Config,
    old_sources: dict[str, SourceConfig],
    new_sources: dict[str, SourceConfig],
    replayable: dict[str, bool],
) -> ConfigDiff:
    """What applying `new` over the running `old` does. `*_sources` are the source tables as the
    agent runs them (a wrapped command's source turned into a process source); `replayable` says,
    per source type, whether it can be read again from its checkpoints."""
    diff = ConfigDiff()
    for name, sink in new.sinks.items():
        previous = old.sinks.get(name)
        if previous is None or previous.type != sink.type:
            diff.sinks_added.append(name)
        elif _own_settings(old, name) == _own_settings(new, name):
            diff.sinks_unchanged.append(name)
        else:
            diff.sinks_changed.append(name)
            if previous.buffer != sink.buffer:  # the channel, and what it holds, is kept
                diff.needs_restart.append(f"sinks.{name}.buffer")
    diff.sinks_removed = [
        name for name, sink in old.sinks.items() if name not in diff.sinks_unchanged + diff.sinks_changed
    ]
    agent_keys = changed_keys("agent", old.agent, new.agent)
    diff.needs_restart += [key for key in agent_keys if key.split(".")[1] not in LIVE_AGENT_KEYS | FEED_AGENT_KEYS]
    diff.needs_restart += changed_keys("api", old.api, new.api)
    feed_keys = changed_keys("redact", old.redact, new.redact)
    feed_keys += [key for key in agent_keys if key.split(".")[1] in FEED_AGENT_KEYS]
    for name, source in new_sources.items():
        was = old_sources.get(name)
        if was is None:
            if replayable[source.type]:
                diff.sources_added.append(name)
            else:
                diff.needs_restart.append(f"sources.{name}")
            continue
        keys = changed_keys(f"sources.{name}", was, source) if was.type == source.type else [f"sources.{name}.type"]
        if replayable[source.type] and replayable[was.type] and (keys or feed_keys):
            diff.sources_restarted.append(name)
            continue
        diff.sources_kept.append(name)
        diff.needs_restart += keys + [key for key in feed_keys if key not in diff.needs_restart]
    for name, source in old_sources.items():
        if name in new_sources:
            continue
        if replayable[source.type]:
            diff.sources_removed.append(name)
        else:  # it keeps reading, fed to the sinks that still name it in their inputs
            diff.sources_kept.append(name)
            diff.needs_restart.append(f"sources.{name}")
    return diff
