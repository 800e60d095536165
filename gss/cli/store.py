"""``gss store rebuild`` (a store again from the topic archive), ``gss store verify``, and
``gss store backup`` / ``restore`` (RocksDB checkpoints: docs/cluster.md, "Backups")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gss.cli.context import CliContext, pass_cli

if TYPE_CHECKING:
    from gss.rebuild import Verification
    from store.db import SignalStore


@click.group("store")
def store_group() -> None:
    """The RocksDB store: rebuild it from the topic archive, compare two (docs/history.md)."""


def _open_existing(path: str, galaxies: list[str]) -> SignalStore:
    from store.db import SignalStore

    if not (Path(path) / "CURRENT").exists():
        raise click.ClickException(f"{path} is not a store (no RocksDB CURRENT file)")
    try:
        return SignalStore(path, galaxies, sync_writes=False)
    except Exception as exc:  # RocksDB's lock or IO errors
        raise click.ClickException(
            f"cannot open the store at {path}: {exc} (stop the server using it, or verify "
            "against a checkpoint)"
        ) from exc


def _report_verification(a: str, b: str, verification: Verification) -> bool:
    values = verification.values
    keys = ", ".join(f"{g} {n:,}" for g, n in values.keys.items())
    if verification.equal:
        click.echo(f"equal: {a} and {b} hold the same values ({keys} keys) and offsets", err=True)
        return True
    click.echo(
        f"DIFFERENT: {values.differing:,} keys differ ({keys} keys compared), "
        f"{len(verification.offset_differences)} partition offsets differ",
        err=True,
    )
    for difference in values.differences:
        click.echo(f"  {difference}", err=True)
    for line in verification.offset_differences[:20]:
        click.echo(f"  {line}", err=True)
    return False


def _verify(cli: CliContext, a_path: str, b_store: SignalStore, max_differences: int) -> bool:
    from gss.rebuild import verify_stores

    registry = cli.registry()
    a_store = _open_existing(a_path, list(registry.galaxies))
    try:
        verification = verify_stores(
            a_store, b_store, registry, cli.settings().kafka, max_differences=max_differences
        )
    finally:
        a_store.close()
    return _report_verification(a_path, str(b_store.path), verification)


max_differences_option = click.option(
    "--max-differences", type=int, default=20, show_default=True, help="Differences to list."
)


@store_group.command()
@click.option(
    "--root",
    default=None,
    help="Archive root: a directory or s3://bucket/prefix (settings: archive.root).",
)
@click.option(
    "--store", "store_path", default=None, help="The store to build (settings: store.path)."
)
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild into a store that is not empty (applied over what it holds: newer wins).",
)
@click.option(
    "--batch-records", type=int, default=10_000, show_default=True, help="Records per WriteBatch."
)
@click.option(
    "--verify-against",
    default=None,
    help="Then compare the rebuilt store with the store at this path (exit 1 if different).",
)
@max_differences_option
@pass_cli
def rebuild(
    cli: CliContext,
    root: str | None,
    store_path: str | None,
    force: bool,
    batch_records: int,
    verify_against: str | None,
    max_differences: int,
) -> None:
    """Rebuild a wiped or new store from every galaxy's changelog in the archive.

    Values and changelog offsets only: no availability events or dead letters are announced
    again. Afterwards `gss serve` on this store continues each partition from its last
    archived offset + 1 (the live tail, from Kafka).
    """
    overrides: dict[str, object] = {}
    if root:
        overrides["archive"] = {"root": root}
    if store_path:
        overrides["store"] = {"path": store_path}
    settings = cli.settings(**overrides) if overrides else cli.settings()
    registry = cli.registry()
    from gss.archive.storage import open_storage
    from gss.rebuild import RebuildStats, rebuild_store, store_is_empty
    from store.db import SignalStore

    path = settings.store.path
    try:
        # Durable at the end (one WAL fsync): a rebuild cut short is run again with --force.
        store = SignalStore(
            path,
            list(registry.galaxies),
            sync_writes=False,
            block_cache_bytes=settings.store.block_cache_bytes,
        )
    except Exception as exc:
        raise click.ClickException(f"cannot open the store at {path}: {exc}") from exc
    try:
        if not force and not store_is_empty(store):
            raise click.ClickException(
                f"the store at {path} is not empty: rebuild into a new or wiped store, or pass "
                "--force to apply the archive over what it holds"
            )
        storage = open_storage(settings.archive)
        click.echo(f"rebuilding {path} from {settings.archive.root}", err=True)
        last = [0.0]

        def progress(stats: RebuildStats) -> None:
            now = time.monotonic()
            if now - last[0] >= 2.0:
                last[0] = now
                click.echo(
                    f"  {stats.records:,} records, {stats.partitions_done}/{stats.partitions} "
                    f"partitions, {stats.records_per_s:,.0f} records/s",
                    err=True,
                )

        stats = rebuild_store(
            store, registry, settings.kafka, storage, batch_records=batch_records, progress=progress
        )
        if stats.partitions == 0:
            click.echo(
                f"warning: {settings.archive.root} holds no changelog of this registry's galaxies "
                f"(topics {settings.kafka.changelog_topic})",
                err=True,
            )
        click.echo(
            f"rebuilt {path}: {stats.records:,} records from {stats.partitions} partitions "
            f"({stats.applied:,} applied, {stats.skipped:,} superseded, "
            f"{stats.dead_lettered:,} dead letters) in {stats.seconds:.1f} s, "
            f"{stats.records_per_s:,.0f} records/s",
            err=True,
        )
        if verify_against and not _verify(cli, verify_against, store, max_differences):
            raise SystemExit(1)
    finally:
        store.close()


@store_group.command()
@click.argument("a")
@click.argument("b")
@max_differences_option
@pass_cli
def verify(cli: CliContext, a: str, b: str, max_differences: int) -> None:
    """Compare the stores at paths A and B key by key for every galaxy (exit 1 if they differ).

    Equal means the same keys, and for each the same signal version, value bytes, event time,
    changelog position and envelope; write times differ by design. Stored changelog offsets
    are compared too. The stores must not be open elsewhere (verify a checkpoint instead).
    """
    registry = cli.registry()
    b_store = _open_existing(b, list(registry.galaxies))
    try:
        ok = _verify(cli, a, b_store, max_differences)
    finally:
        b_store.close()
    if not ok:
        raise SystemExit(1)


@store_group.command()
@click.option("--store", "store_path", default=None, help="The store (settings: store.path).")
@click.option(
    "--to",
    "root",
    default=None,
    help="Backup root: a directory or s3://bucket/prefix (settings: cluster.backup_root).",
)
@click.option(
    "--ordinal", type=int, default=None, help="The node it belongs to (settings: cluster.ordinal)."
)
@pass_cli
def backup(cli: CliContext, store_path: str | None, root: str | None, ordinal: int | None) -> None:
    """Back a store up (a RocksDB checkpoint) to a directory or object store. For a store a
    running server holds, set cluster.backup_interval_seconds on the server instead
    (docs/cluster.md, "Backups")."""
    from gss.cluster.backup import backup_root, take_backup

    settings = cli.settings()
    registry = cli.registry()
    path = store_path or str(settings.store.path)
    store = _open_existing(path, list(registry.galaxies))
    try:
        taken = take_backup(
            store,
            backup_root(settings, root),
            ordinal if ordinal is not None else settings.cluster.ordinal or 0,
            list(registry.galaxies),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    finally:
        store.close()
    click.echo(
        f"backed up {path} to {taken.location}: {taken.files} files, {taken.size_bytes:,} bytes",
        err=True,
    )


@store_group.command()
@click.option("--store", "store_path", default=None, help="Restore into (settings: store.path).")
@click.option(
    "--from",
    "root",
    default=None,
    help="Backup root: a directory or s3://bucket/prefix (settings: cluster.backup_root).",
)
@click.option(
    "--ordinal",
    type=int,
    default=None,
    help="Prefer this node's backups (settings: cluster.ordinal); else the latest of any node.",
)
@pass_cli
def restore(cli: CliContext, store_path: str | None, root: str | None, ordinal: int | None) -> None:
    """Restore the latest backup into an empty store directory; `serve` then catches up from
    the changelog at the backup's offsets (a node with cluster.backup_root set does this by
    itself when it starts without a store)."""
    from gss.cluster.backup import backup_root, restore_backup

    settings = cli.settings()
    path = Path(store_path or settings.store.path)
    try:
        restored = restore_backup(
            backup_root(settings, root),
            path,
            list(cli.registry().galaxies),
            ordinal if ordinal is not None else settings.cluster.ordinal,
        )
    except (ValueError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from exc
    if restored is None:
        raise click.ClickException("no complete backup found under the backup root")
    click.echo(f"restored {restored.location} (node {restored.ordinal}) into {path}", err=True)


def register(main: click.Group) -> None:
    main.add_command(store_group)
