"""The daily snapshot export: the store's state, as Thrift-twin Parquet, one partition per signal.

What ``dt=D`` holds: every value in the store at ``snapshot_time`` (a daily dump of the
materialised state, taken when the export runs, normally just after day D ends), one row per
(entity, signal version). Values whose TTL had passed at ``snapshot_time`` are kept and
flagged ``expired = true``; values with an event time after D are kept too (the store holds
only the latest value per key, so leaving them out would lose the entity) and are counted as
``rows_after_dt`` in the manifest. Because only the current state exists, a date more than
``late_days`` in the past is refused unless asked for explicitly.

Every partition is written to a hidden staging directory, completed with its manifest and
``_SUCCESS``, then swapped in (:func:`contract.snapshot.layout.publish`). An export killed midway
leaves the previous partition untouched and only hidden staging files behind, which the next
run removes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

import gss
from contract.errors import InvalidArgumentError
from contract.registry import GalaxySpec, Registry, SignalSpec
from contract.settings import ExportSettings
from contract.snapshot import layout
from contract.snapshot.idl import java_class
from gss.snapshot import manifest
from gss.snapshot.convert import transcoder
from gss.snapshot.pool import make_pool
from gss.snapshot.worker import GalaxyJob, SignalJob, SignalStats, WorkerResult, open_part_writer
from store.db import SignalStore
from store.scan import StoreView

log = structlog.get_logger(__name__)

# Rows read from the store per batch: a batch is converted in one go (one unit per signal),
# by this process or a worker, so it is large enough for the columnar conversion to run at full
# speed and small enough to keep both processes busy to the end.
BATCH_ROWS = 16384
# Below this many stored values, converting in-process beats starting worker processes.
MIN_ROWS_FOR_WORKERS = 50_000
PROGRESS_LOG_SECONDS = 10.0


@dataclass
class PartitionResult:
    """One published partition."""

    galaxy: str
    signal: str
    version: int
    path: Path
    rows: int
    expired_rows: int
    rejected_rows: int
    files: int

    def summary(self) -> dict[str, object]:
        """The partition as run reports and ``gss export --json`` show it."""
        return {
            "galaxy": self.galaxy,
            "signal": self.signal,
            "version": self.version,
            "rows": self.rows,
            "expired_rows": self.expired_rows,
            "rejected_rows": self.rejected_rows,
            "path": str(self.path),
        }


@dataclass
class ExportResult:
    """What one ``gss export`` run did."""

    export_id: str
    dt: date
    snapshot_time_us: int
    source: str
    partitions: list[PartitionResult] = field(default_factory=list)
    # galaxy -> {"name@version": count} of stored values whose signal the registry lacks.
    unregistered: dict[str, dict[str, int]] = field(default_factory=dict)
    malformed_keys: int = 0
    duration_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def rejected_rows(self) -> int:
        return sum(p.rejected_rows for p in self.partitions)


def check_date(dt: date, *, now: datetime, late_days: int, allow_late: bool) -> None:
    """Refuse dates the store's current state cannot stand for."""
    today = now.astimezone(UTC).date()
    if dt > today:
        raise InvalidArgumentError(
            f"dt={dt.isoformat()} is in the future (today is {today.isoformat()} UTC); "
            "export a day once it has begun, normally the day after (the default is yesterday)"
        )
    if not allow_late and dt < today - timedelta(days=late_days + 1):
        raise InvalidArgumentError(
            f"dt={dt.isoformat()} ended more than {late_days} days ago: the store holds only its "
            "current state, so a snapshot taken now would not be that day's. Pass --allow-late "
            "to label the current state with that date anyway"
        )


def export_snapshot(
    registry: Registry,
    settings: ExportSettings,
    *,
    dt: date | None = None,
    galaxies: list[str] | None = None,
    store: SignalStore | None = None,
    store_path: Path | None = None,
    root: Path | None = None,
    allow_late: bool = False,
    progress: bool | None = None,
    log_level: str = "INFO",
    now: datetime | None = None,
    min_rows_for_workers: int = MIN_ROWS_FOR_WORKERS,
) -> ExportResult:
    """Export every signal version of the galaxies (all by default) as ``dt`` partitions.

    Give either ``store`` (a live, open store: it is checkpointed) or ``store_path`` (a store
    directory, possibly in use by a running server: it is read through a secondary instance).
    """
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    dt = dt or layout.yesterday_utc(now)
    check_date(dt, now=now, late_days=settings.late_days, allow_late=allow_late)
    specs = [registry.galaxy(name) for name in galaxies] if galaxies else list(registry)
    if not specs:
        raise InvalidArgumentError("the registry declares no galaxies: nothing to export")
    root = (root or settings.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (store is None) == (store_path is None):
        raise ValueError("give exactly one of store or store_path")
    source_path = store.path if store is not None else store_path
    assert source_path is not None
    work_dir = (settings.work_dir or source_path.with_name(source_path.name + ".export")).resolve()
    export_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    view = (
        StoreView.from_store(store, work_dir)
        if store is not None
        else StoreView.from_path(source_path, work_dir)
    )
    result = ExportResult(export_id, dt, view.snapshot_time_us, view.mode)
    log.info(
        "export_started",
        export_id=export_id,
        dt=dt.isoformat(),
        galaxies=[g.name for g in specs],
        export_root=str(root),
        source=view.mode,
    )
    total_estimate = sum(view.estimated_keys(g.name) for g in specs)
    workers = settings.workers if total_estimate >= min_rows_for_workers else 1
    pool = make_pool(workers, log_level, "json")
    try:
        for galaxy in specs:
            with layout.exclusive_lock(
                root / galaxy.name / layout.LOCK_NAME, f"galaxy {galaxy.name}"
            ):
                _export_galaxy(
                    galaxy, registry, settings, view, pool, root, dt, export_id, result, progress
                )
    finally:
        pool.close()
        view.close()
    result.duration_seconds = round(time.perf_counter() - started, 3)
    log.info(
        "export_finished",
        export_id=export_id,
        dt=dt.isoformat(),
        rows=result.rows,
        rejected_rows=result.rejected_rows,
        partitions=len(result.partitions),
        duration_seconds=result.duration_seconds,
    )
    return result


def _export_galaxy(
    galaxy: GalaxySpec,
    registry: Registry,
    settings: ExportSettings,
    view: StoreView,
    pool: Any,
    root: Path,
    dt: date,
    export_id: str,
    result: ExportResult,
    progress: bool | None,
) -> None:
    if not galaxy.signals:
        log.warning("export_galaxy_has_no_signals", galaxy=galaxy.name)
        return
    if not view.has_galaxy(galaxy.name):
        log.warning(
            "export_galaxy_not_in_store",
            galaxy=galaxy.name,
            hint="the store has never held this galaxy; its partitions will be empty",
        )
    stagings: dict[tuple[str, int], Path] = {}
    sig_jobs = []
    for spec in galaxy.signals:
        table = layout.table_dir(root, galaxy.name, spec.name, spec.version)
        table.mkdir(parents=True, exist_ok=True)
        layout.remove_stale(table)
        staging = layout.staging_dir(table, dt, export_id)
        staging.mkdir()
        stagings[(spec.name, spec.version)] = staging
        ttl_us = int(spec.ttl.total_seconds() * 1_000_000) if spec.ttl is not None else None
        sig_jobs.append(
            SignalJob(
                spec.name, spec.version, spec.value_type, spec.key_suffix, ttl_us, str(staging)
            )
        )
    dt_end = datetime(dt.year, dt.month, dt.day, tzinfo=UTC) + timedelta(days=1)
    job = GalaxyJob(
        galaxy=galaxy.name,
        key_type=str(galaxy.key.type),
        key_length=galaxy.codec.length,
        signals=tuple(sig_jobs),
        imports=registry.imports,
        snapshot_time_us=view.snapshot_time_us,
        dt_end_us=int(dt_end.timestamp() * 1_000_000),
        compression=settings.compression,
        row_group_rows=settings.row_group_rows,
        row_group_bytes=64 * 1024 * 1024,
    )
    try:
        worker_results = _convert(galaxy.name, view, pool, job, progress)
        unregistered: dict[str, int] = {}
        for wr in worker_results:
            for ref, count in wr.unregistered.items():
                unregistered[ref] = unregistered.get(ref, 0) + count
        malformed = sum(wr.malformed_keys for wr in worker_results)
        result.malformed_keys += malformed
        if unregistered:
            result.unregistered[galaxy.name] = unregistered
        for spec in galaxy.signals:
            stats = [wr.signals[(spec.name, spec.version)] for wr in worker_results]
            final = layout.partition_dir(root, galaxy.name, spec.name, spec.version, dt)
            part = _finish_partition(
                galaxy.name,
                spec,
                stats,
                stagings[(spec.name, spec.version)],
                final,
                dt,
                export_id,
                view,
                settings,
                root,
            )
            result.partitions.append(part)
        _write_report(root, galaxy.name, dt, export_id, view, result, unregistered, malformed)
    except BaseException:
        for staging in stagings.values():
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _convert(
    galaxy: str, view: StoreView, pool: Any, job: GalaxyJob, progress: bool | None
) -> list[WorkerResult]:
    """Scan the galaxy once, feeding the workers; returns what each wrote."""
    estimate = view.estimated_keys(galaxy)
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(
            total=estimate, unit="rows", unit_scale=True, desc=f"export {galaxy}", file=sys.stderr
        )
    scanned = 0
    last_log = time.monotonic()
    started = time.perf_counter()
    pool.begin(job)
    for batch in view.batches(galaxy, BATCH_ROWS):
        pool.submit(batch)
        scanned += len(batch)
        if bar is not None:
            bar.update(len(batch))
        elif time.monotonic() - last_log >= PROGRESS_LOG_SECONDS:
            last_log = time.monotonic()
            log.info(
                "export_progress", galaxy=galaxy, rows_scanned=scanned, rows_estimated=estimate
            )
    results = pool.end()
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    log.info(
        "export_galaxy_converted",
        galaxy=galaxy,
        rows_scanned=scanned,
        duration_seconds=round(elapsed, 3),
        rows_per_second=round(scanned / elapsed) if elapsed > 0 else None,
    )
    return results  # type: ignore[no-any-return]


def _finish_partition(
    galaxy: str,
    spec: SignalSpec,
    stats: list[SignalStats],
    staging: Path,
    final: Path,
    dt: date,
    export_id: str,
    view: StoreView,
    settings: ExportSettings,
    root: Path,
) -> PartitionResult:
    """Complete a staging partition (empty file, rejects, manifest, _SUCCESS) and publish it."""
    signal, version, value_type = spec.name, spec.version, spec.value_type
    tc = transcoder(spec.message_class)
    schema = tc.schema.with_metadata(tc.footer_metadata())
    parts = sorted((s.part_file for s in stats if s.part_file), key=lambda f: f.name)
    if not parts:
        # An empty partition still gets one (empty) file, so engines can read its schema.
        empty = staging / layout.part_file_name(0)
        open_part_writer(empty, schema, settings.compression).close()
        layout.fsync_file(empty)
        parts = [manifest.describe_file(empty)]
    m = manifest.PartitionManifest(
        galaxy=galaxy,
        signal=signal,
        version=version,
        value_type=value_type,
        dt=dt.isoformat(),
        export_id=export_id,
        snapshot_time_us=view.snapshot_time_us,
        source=view.mode,
        thrift_struct=tc.thrift_class.__name__,
        thrift_class=java_class(tc.row_class),
        gss_version=gss.__version__,
        created_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )
    for s in stats:
        m.rows += s.rows
        m.expired_rows += s.expired_rows
        m.rows_after_dt += s.rows_after_dt
        m.rejected_rows += s.rejected_rows
        m.rejected_samples.extend(s.reject_samples)
    lows = [s.min_event_time_us for s in stats if s.min_event_time_us is not None]
    highs = [s.max_event_time_us for s in stats if s.max_event_time_us is not None]
    m.min_event_time_us = min(lows) if lows else None
    m.max_event_time_us = max(highs) if highs else None
    m.rejected_samples = m.rejected_samples[:10]
    reject_files = sorted(s.rejects_file for s in stats if s.rejects_file)
    if reject_files:
        merged = staging / layout.REJECTS
        with open(merged, "wb") as out:
            for name in reject_files:
                with open(staging / name, "rb") as fh:
                    shutil.copyfileobj(fh, out)
                os.unlink(staging / name)
        layout.fsync_file(merged)
        m.rejects_file = {
            "name": merged.name,
            "rows": m.rejected_rows,
            "sha256": manifest.sha256_of(merged),
        }
    m.files = parts
    m.schema = manifest.schema_json(tc.schema)
    m.thrift_descriptor = tc.row_descriptor()
    location = settings.location_uri or root.as_uri()
    target = manifest.DdlTarget(settings.ddl_database, settings.trino_catalog, location)
    m.ddl = manifest.ddl(tc.schema, galaxy, signal, version, dt, target, value_type, m.thrift_class)
    if sum(f.rows for f in m.files) != m.rows:
        raise RuntimeError(
            f"{galaxy}/{signal}@{version}: files hold {sum(f.rows for f in m.files)} rows, "
            f"workers reported {m.rows}"
        )
    layout.write_file_durably(staging / layout.MANIFEST, json.dumps(m.to_json(), indent=2).encode())
    # _SUCCESS last: its presence means everything above is complete and durable.
    layout.write_file_durably(staging / layout.SUCCESS, b"")
    layout.publish(staging, final)
    log.info(
        "export_partition_published",
        galaxy=galaxy,
        signal=signal,
        signal_version=version,
        dt=dt.isoformat(),
        rows=m.rows,
        expired_rows=m.expired_rows,
        rejected_rows=m.rejected_rows,
        partition_path=str(final),
    )
    if m.rejected_rows:
        log.warning(
            "export_values_rejected",
            galaxy=galaxy,
            signal=signal,
            signal_version=version,
            rejected_rows=m.rejected_rows,
            rejects_path=str(final / layout.REJECTS),
        )
    return PartitionResult(
        galaxy, signal, version, final, m.rows, m.expired_rows, m.rejected_rows, len(m.files)
    )


def _write_report(
    root: Path,
    galaxy: str,
    dt: date,
    export_id: str,
    view: StoreView,
    result: ExportResult,
    unregistered: dict[str, int],
    malformed_keys: int,
) -> None:
    """The galaxy's run report: its partitions, and values no partition could take."""
    report = {
        "galaxy": galaxy,
        "dt": dt.isoformat(),
        "export_id": export_id,
        "snapshot_time": manifest.iso_us(view.snapshot_time_us),
        "partitions": [p.summary() for p in result.partitions if p.galaxy == galaxy],
        "unregistered_signal_values": unregistered,
        # Keys that are not signal keys at all (not written by GSS's write path).
        "malformed_keys": malformed_keys,
    }
    path = layout.report_path(root, galaxy, dt)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.write_file_durably(path, json.dumps(report, indent=2).encode())
    if unregistered:
        log.warning(
            "export_unregistered_values",
            galaxy=galaxy,
            counts=unregistered,
            report_path=str(path),
            hint="values of signals the registry no longer declares are not exported",
        )
