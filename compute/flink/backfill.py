"""Backfill one signal over history: what `gss signal backfill` runs (docs/history.md, "Backfill").

A backfill is the compute job over the archive with only the named plugin, under a job name of
its own (``gss-backfill-<galaxy>-<signal>-v<version>``: its own checkpoints, consumer group and
transactional ids), writing values marked ``backfill`` (envelope and availability event)
through the changelog. Without ``continue_live`` it stops at the switch point (the archive's
end); with it, it goes on reading Kafka. A join reads its inputs from the galaxy's changelog,
so a join's backfill reads the archived changelog: the input values as they were written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compute.loader import load_plugins
from compute.plugin import Plugin
from contract.archive import archive_root, archived_partitions, partition_history
from contract.errors import InvalidArgumentError
from contract.registry import parse_signal_path
from contract.settings import Settings


def job_name(galaxy: str, name: str, version: int) -> str:
    return f"gss-backfill-{galaxy}-{name}-v{version}"


def find_plugin(settings: Settings, target: str) -> Plugin:
    """The plugin of ``galaxy/name@version`` among ``settings.compute.plugins``."""
    galaxy, name, version = parse_signal_path(target)
    if not version:
        raise InvalidArgumentError(f"{target}: name the version, e.g. {target}@1")
    for plugin in load_plugins(settings.compute.plugins):
        if (plugin.galaxy, plugin.name, plugin.version) == (galaxy, name, version):
            return plugin
    raise InvalidArgumentError(
        f"no plugin computes {target} in {', '.join(settings.compute.plugins)} (compute.plugins)"
    )


def compute_overrides(
    settings: Settings,
    plugin: Plugin,
    *,
    since: datetime,
    until: datetime | None,
    rate_per_second: float | None,
    continue_live: bool,
) -> dict[str, Any]:
    """The ``compute`` settings of the backfill job of ``plugin``."""
    name = job_name(plugin.galaxy, plugin.name, plugin.version)
    base = settings.compute.checkpoint_dir or (
        (Path("gss-data") / "flink-checkpoints").resolve().as_uri()
    )
    out: dict[str, Any] = {
        "job_name": name,
        "backfill": True,
        "history_from": since,
        "history_until": until,
        "history_bounded": not continue_live,
        # Checkpoints per backfill job: a restart finds and resumes its own.
        "checkpoint_dir": base.rstrip("/") + "/" + name,
    }
    if rate_per_second is not None:
        out["history_rate_per_second"] = rate_per_second
    return out


def archived_records(settings: Settings, topic: str, since_ms: int, until_ms: int | None) -> int:
    """Records the archive's commit markers count in ``[since, until)`` (files whose time range
    meets it: an upper bound of what the backfill reads)."""
    root = archive_root(settings.archive)
    total = 0
    for p in archived_partitions(root, topic):
        history = partition_history(root, topic, p, from_timestamp_ms=since_ms)
        if history is None:
            continue
        total += sum(
            f.records for f in history.files if until_ms is None or f.min_timestamp_ms < until_ms
        )
    return total


def millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def clear_checkpoints(checkpoint_dir: str) -> None:
    """Forget a finished backfill's checkpoints (a local directory), so that running it again
    starts from the beginning instead of restoring the finished job's last state."""
    import shutil

    if "://" in checkpoint_dir and not checkpoint_dir.startswith("file:"):
        return
    shutil.rmtree(
        Path(checkpoint_dir.removeprefix("file://").removeprefix("file:")), ignore_errors=True
    )
