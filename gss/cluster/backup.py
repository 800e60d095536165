"""Store backups: RocksDB checkpoints shipped to a directory or an object store, and seeding a
new replica from the latest one (docs/cluster.md, "Backups").

A backup is a RocksDB checkpoint of the whole store (values, the changelog offsets they are
applied up to, the outbox: one consistent cut, since they share every WriteBatch), copied to
``<root>/node-<ordinal>/<UTC time>/``, then ``MANIFEST.json`` (the files and the changelog
offsets) in it, then ``<root>/node-<ordinal>/LATEST`` naming it: a backup without its manifest
is incomplete and never restored.

A restore copies the files of the latest complete backup (this ordinal's, else any node's)
into an empty store directory and drops the copied outbox (those events were the source
node's to publish). The node then resumes each partition's changelog at the stored offset.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from contract.archive import ArchiveRoot, archive_root
from contract.settings import Settings
from gss.kafka.meta import BACKFILL_OUTBOX_PREFIX, OFFSET_PREFIX, OUTBOX_PREFIX, parse_offset_entry
from store.db import SignalStore

log = structlog.get_logger(__name__)
MANIFEST = "MANIFEST.json"
LATEST = "LATEST"


@dataclass(frozen=True, slots=True)
class Backup:
    """One complete backup: where it is, when it was taken, what it holds."""

    location: str
    ordinal: int
    created_at: str
    files: int
    size_bytes: int
    changelog_offsets: dict[str, dict[str, int]]


def backup_root(settings: Settings, root: str | None = None) -> ArchiveRoot:
    """The backup root (``root``, else ``cluster.backup_root``) as a file system."""
    chosen = root or settings.cluster.backup_root
    if not chosen:
        raise ValueError("no backup root: pass one or set cluster.backup_root")
    return archive_root(settings.archive.model_copy(update={"root": chosen}))


def _offsets(store: SignalStore) -> dict[str, dict[str, int]]:
    offsets: dict[str, dict[str, int]] = {}
    for key, value in store.scan_meta(OFFSET_PREFIX):
        topic, partition, next_offset = parse_offset_entry(key, value)
        offsets.setdefault(topic, {})[str(partition)] = next_offset
    return offsets


def take_backup(store: SignalStore, root: ArchiveRoot, ordinal: int, galaxies: list[str]) -> Backup:
    """Checkpoint ``store`` (open, even while it serves) and ship it to ``root``."""
    from pyarrow import fs as pafs

    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    rel = f"node-{ordinal}/{stamp}"
    work = Path(tempfile.mkdtemp(prefix="gss-backup-", dir=store.path.parent))
    try:
        checkpoint = store.checkpoint(work / "checkpoint")
        with SignalStore(checkpoint, galaxies, sync_writes=False) as copy:
            offsets = _offsets(copy)
        files = sorted(p for p in checkpoint.iterdir() if p.is_file())
        root.fs.create_dir(root.path(rel), recursive=True)
        pafs.copy_files(
            str(checkpoint),
            root.path(rel),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=root.fs,
            # pyarrow 16's threaded copy hangs against an S3 endpoint (seen with moto's server).
            use_threads=False,
        )
        size = sum(p.stat().st_size for p in files)
        manifest = {
            "ordinal": ordinal,
            "created_at": stamp,
            "files": [{"name": p.name, "size": p.stat().st_size} for p in files],
            "changelog_offsets": offsets,
        }
        _write(root, f"{rel}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        _write(root, f"node-{ordinal}/{LATEST}", stamp.encode())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    backup = Backup(root.uri_of(rel), ordinal, stamp, len(files), size, offsets)
    log.info(
        "store_backup_taken",
        backup=backup.location,
        files=backup.files,
        size_bytes=size,
        duration_seconds=round(time.monotonic() - started, 3),
    )
    return backup


def _write(root: ArchiveRoot, rel: str, data: bytes) -> None:
    with root.fs.open_output_stream(root.path(rel)) as out:
        out.write(data)


def _read(root: ArchiveRoot, rel: str) -> bytes | None:
    try:
        with root.fs.open_input_stream(root.path(rel)) as stream:
            return bytes(stream.read())
    except (FileNotFoundError, OSError):
        return None


def latest_backup(root: ArchiveRoot, ordinal: int | None = None) -> Backup | None:
    """The latest complete backup of ``ordinal`` (else of any node, newest first)."""
    from pyarrow import fs as pafs

    candidates: list[tuple[str, int]] = []
    try:
        infos = root.fs.get_file_info(pafs.FileSelector(root.base, allow_not_found=True))
    except OSError:
        infos = []
    for info in infos:
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("node-"):
            node = int(name.removeprefix("node-"))
            latest = _read(root, f"{name}/{LATEST}")
            if latest:
                candidates.append((latest.decode().strip(), node))
    mine = [c for c in candidates if c[1] == ordinal]
    for stamp, node in sorted(mine or candidates, reverse=True):
        raw = _read(root, f"node-{node}/{stamp}/{MANIFEST}")
        if raw is None:
            continue
        manifest: dict[str, Any] = json.loads(raw)
        return Backup(
            root.uri_of(f"node-{node}/{stamp}"),
            node,
            stamp,
            len(manifest["files"]),
            sum(f["size"] for f in manifest["files"]),
            manifest["changelog_offsets"],
        )
    return None


def restore_backup(
    root: ArchiveRoot, store_path: Path, galaxies: list[str], ordinal: int | None = None
) -> Backup | None:
    """Copy the latest backup (``ordinal``'s, else any node's) into ``store_path``, which must
    not hold a store; drop its outbox. None when there is no backup."""
    from pyarrow import fs as pafs

    if (store_path / "CURRENT").exists():
        raise FileExistsError(
            f"{store_path} already holds a store: restore into an empty directory "
            "(move or delete the old store first)"
        )
    backup = latest_backup(root, ordinal)
    if backup is None:
        return None
    started = time.monotonic()
    rel = f"node-{backup.ordinal}/{backup.created_at}"
    store_path.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        root.path(rel),
        str(store_path),
        source_filesystem=root.fs,
        destination_filesystem=pafs.LocalFileSystem(),
        use_threads=False,
    )
    (store_path / MANIFEST).unlink(missing_ok=True)
    with SignalStore(store_path, galaxies, sync_writes=True) as store:
        # The source node's pending events are its own to publish (or its partitions' elected
        # publisher's): a seeded replica announces only what it applies itself.
        for prefix in (OUTBOX_PREFIX, BACKFILL_OUTBOX_PREFIX):
            store.delete_meta([key for key, _ in store.scan_meta(prefix)])
    log.info(
        "store_backup_restored",
        backup=backup.location,
        store_path=str(store_path),
        files=backup.files,
        size_bytes=backup.size_bytes,
        duration_seconds=round(time.monotonic() - started, 3),
    )
    return backup
