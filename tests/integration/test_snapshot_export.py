"""The snapshot export against a real RocksDB: consistency under writes, layout, faults."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from google.protobuf import any_pb2

from clients.snapshot import SnapshotReader
from contract.errors import NotFoundError
from contract.registry import Registry
from contract.snapshot import layout
from contract.v1 import envelope_pb2, signals_pb2
from gss.snapshot import export_snapshot, verify_partition
from gss.snapshot.convert import transcoder
from gss.writes import to_writes
from store import records
from store.db import SignalStore, Write
from tests.snapshot_fixtures import (
    example_records,
    example_value,
    export_settings,
    read_partition,
    store_content,
    write,
)

pytestmark = pytest.mark.integration

DT = layout.yesterday_utc()
GSS = [sys.executable, "-m", "gss"]


def _run_gss(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GSS, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GSS_LOG_FORMAT": "json", **(env or {})},
    )


def _pins_batch(
    registry: Registry, generation: int, rng: random.Random, entities: int
) -> list[Write]:
    """Batch ``generation``: count=generation for a random subset of pins (event time grows)."""
    chosen = rng.sample(range(entities), 50)
    recs = []
    for pin in chosen:
        rec = envelope_pb2.SignalRecord(galaxy="pins", entity_id=str(pin))
        rec.signal.name, rec.signal.version = "save_count_1h", 1
        rec.value.Pack(signals_pb2.WindowedCount(count=generation))
        rec.envelope.event_time.FromDatetime(datetime.now(UTC) + timedelta(microseconds=generation))
        recs.append(rec)
    return to_writes(registry, recs)


def _check_prefix_consistent(exported: dict[str, int], batches: list[list[str]], acked: int) -> int:
    """The exported counts equal the store after some prefix of the batches, at least ``acked`` long.

    Returns the prefix length. batches[k-1] holds the pins batch k wrote (count=k).
    """
    newest = max(exported.values(), default=0)
    assert newest >= acked, (
        f"writes acknowledged before the snapshot are missing ({newest} < {acked})"
    )
    expected: dict[str, int] = {}
    for k, pins in enumerate(batches[:newest], start=1):
        for pin in pins:
            expected[pin] = k
    assert exported == expected, "the export is not the store's state after one atomic batch"
    return newest


# -- consistency while writes continue ---------------------------------------------------


def test_export_while_writes_continue_equals_the_store_at_the_checkpoint(
    tmp_path: Path, registry: Registry
) -> None:
    """With a writer applying batches concurrently, two worker processes export exactly the
    state after one batch (no torn batch), including every batch acknowledged before the
    snapshot; every signal of the untouched galaxy equals the store byte for byte."""
    store = SignalStore(tmp_path / "store", list(registry.galaxies), sync_writes=False)
    try:
        write(registry, store, example_records(registry, "images", 300))
        images_before = {
            k: v for k, v in store_content(store, registry).items() if k[0] == "images"
        }
        rng = random.Random(7)
        batches: list[list[str]] = []
        acked_at: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            generation = 0
            while not stop.is_set() and generation < 5000:
                generation += 1
                writes = _pins_batch(registry, generation, rng, 2000)
                batches.append([registry.galaxy("pins").codec.to_text(w.key[:8]) for w in writes])
                store.apply(writes)
                acked_at.append(time.time())

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        while len(acked_at) < 20:
            time.sleep(0.01)
        result = export_snapshot(
            registry,
            export_settings(tmp_path / "out", workers=2, row_group_rows=500),
            store=store,
            dt=DT,
            min_rows_for_workers=0,
        )
        time.sleep(0.2)  # writes carry on after the snapshot
        stop.set()
        thread.join(timeout=30)
    finally:
        store.close()
    assert result.source == "checkpoint"
    snapshot_s = result.snapshot_time_us / 1e6
    acked = sum(1 for t in acked_at if t < snapshot_s)
    pins = read_partition(tmp_path / "out" / "pins" / "save_count_1h_v1" / f"dt={DT}")
    exported = dict(
        zip(
            pins["entity_id"].to_pylist(),
            [v["count"] for v in pins["value"].to_pylist()],
            strict=True,
        )
    )
    prefix = _check_prefix_consistent(exported, batches, acked)
    assert prefix < len(batches), "the writer should have gone on after the snapshot"
    # The untouched galaxy: every stored value is exported, with identical envelope and value.
    for spec in registry.galaxy("images").signals:
        table = read_partition(tmp_path / "out" / "images" / f"{spec.name}_v1" / f"dt={DT}")
        assert len(table) == 300
        tc = transcoder(spec.message_class)
        for row in table.to_pylist():
            stored = records.StoredRecord.decode(
                images_before[("images", row["entity_id"], f"{spec.name}@1")]
            )
            assert row["event_time"].timestamp() * 1e6 == pytest.approx(stored.event_time_us, abs=1)
            assert row["producer"] == stored.envelope.producer
            assert row["model_version"] == stored.envelope.model_version
            assert row["value_thrift"] == tc.encode(spec.unpack(stored.value))
    assert {p.path.name for p in result.partitions} == {f"dt={DT}"}
    assert not list((tmp_path / "store.export").iterdir()), "the checkpoint is removed afterwards"


WRITER = textwrap.dedent("""
    import random, sys, time
    from datetime import UTC, datetime, timedelta
    from contract.registry import DEFAULT_REGISTRY_PATH, load_registry
    from contract.v1 import envelope_pb2, signals_pb2
    from gss.writes import to_writes
    from store.db import SignalStore
    registry = load_registry(DEFAULT_REGISTRY_PATH)
    store = SignalStore(sys.argv[1], list(registry.galaxies), sync_writes=False)
    rng = random.Random(11)
    with open(sys.argv[2], "a") as log:
        for generation in range(1, 100_000):
            recs = []
            for pin in rng.sample(range(2000), 50):
                rec = envelope_pb2.SignalRecord(galaxy="pins", entity_id=str(pin))
                rec.signal.name, rec.signal.version = "save_count_1h", 1
                rec.value.Pack(signals_pb2.WindowedCount(count=generation))
                rec.envelope.event_time.FromDatetime(datetime.now(UTC) + timedelta(microseconds=generation))
                recs.append(rec)
            store.apply(to_writes(registry, recs))
            log.write(f"{generation} {time.time()} {' '.join(r.entity_id for r in recs)}\\n")
            log.flush()
            time.sleep(0.002)
""")


def test_export_by_path_while_a_server_process_writes(tmp_path: Path) -> None:
    """`gss export --store` reads a store another process has open and keeps writing to (a
    RocksDB secondary, caught up once): the export is the primary's state after one batch,
    with every batch acknowledged before the snapshot."""
    store_dir, log_path = tmp_path / "store", tmp_path / "writer.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store_dir), str(log_path)], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while (
            not log_path.exists() or len(log_path.read_text().splitlines()) < 30
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        done = _run_gss(
            "export",
            "--store",
            str(store_dir),
            "--root",
            str(tmp_path / "out"),
            "--galaxy",
            "pins",
            "--date",
            DT.isoformat(),
            "--json",
        )
        time.sleep(0.3)
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["partitions"][0]["rows"] > 0
    partition = tmp_path / "out" / "pins" / "save_count_1h_v1" / f"dt={DT}"
    manifest = json.loads((partition / layout.MANIFEST).read_text())
    assert manifest["source"] == "secondary"
    lines = [line.split() for line in log_path.read_text().splitlines() if line.strip()]
    batches = [parts[2:] for parts in lines]
    acked = sum(1 for parts in lines if float(parts[1]) < manifest["snapshot_time_us"] / 1e6)
    pins = read_partition(partition)
    exported = dict(
        zip(
            pins["entity_id"].to_pylist(),
            [v["count"] for v in pins["value"].to_pylist()],
            strict=True,
        )
    )
    prefix = _check_prefix_consistent(exported, batches, acked)
    assert prefix < len(batches)


# -- layout, reading, idempotence --------------------------------------------------------


@pytest.fixture
def filled_store(tmp_path: Path, registry: Registry) -> Iterator[SignalStore]:
    """A store with 40 images (every image signal) and 30 pins."""
    store = SignalStore(tmp_path / "store", list(registry.galaxies), sync_writes=False)
    try:
        write(registry, store, example_records(registry, "images", 40))
        write(registry, store, example_records(registry, "pins", 30, event_time=datetime.now(UTC)))
        yield store
    finally:
        store.close()


def test_thrift_round_trip_of_every_example_signal_through_the_table(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """Read back as Thrift rows, every value equals the proto written; flattened columns too."""
    export_snapshot(registry, export_settings(tmp_path / "out"), store=filled_store, dt=DT)
    reader = SnapshotReader(tmp_path / "out")
    for galaxy, count in (("images", 40), ("pins", 30)):
        spec = registry.galaxy(galaxy)
        for sig in spec.signals:
            rows = list(reader.read_rows(galaxy, sig.name))
            assert len(rows) == count
            table = reader.read_table(galaxy, sig.name).sort_by("entity_id")
            tc = transcoder(sig.message_class)
            for dt, row in rows:
                n = int(row.entity_id, 16) if spec.key.type == "bytes" else int(row.entity_id)
                expected = example_value(sig.name, n)
                assert dt == DT
                assert tc.decode(tc.encode(expected)) == row.value
                assert row.producer == "test"
                assert row.model_name == f"model-{sig.name}"
                assert row.expired is False
            assert table["dt"].unique().to_pylist() == [DT.isoformat()]
            first = table.slice(0, 1).to_pylist()[0]
            n = int(first["entity_id"], 16) if spec.key.type == "bytes" else int(first["entity_id"])
            assert tc.decode(first["value_thrift"]) == tc.decode(
                tc.encode(example_value(sig.name, n))
            )


def test_partition_files_follow_the_parquet_thrift_convention(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """Footers carry thrift.class and thrift.descriptor; lists are 3-level; the manifest lists
    the files with rows and checksums, the schema and the DDL; _SUCCESS is present."""
    export_snapshot(registry, export_settings(tmp_path / "out"), store=filled_store, dt=DT)
    partition = tmp_path / "out" / "images" / "dominant_colors_v1" / f"dt={DT}"
    assert sorted(p.name for p in partition.iterdir()) == [
        "_SUCCESS",
        "_manifest.json",
        "part-00000.parquet",
    ]
    pf = pq.ParquetFile(partition / "part-00000.parquet")
    footer = pf.metadata.metadata
    assert footer[b"thrift.class"] == b"gss.thrift.v1.DominantColorsSnapshotRow"
    assert json.loads(footer[b"thrift.descriptor"])["children"][7]["name"] == "value"
    paths = [pf.schema.column(i).path for i in range(len(pf.schema))]
    assert "value.colors.list.element.red" in paths  # 3-level list
    manifest = json.loads((partition / layout.MANIFEST).read_text())
    assert manifest["rows"] == 40
    assert manifest["files"][0]["rows"] == 40
    assert len(manifest["files"][0]["sha256"]) == 64
    assert manifest["table"]["value_thrift_protocol"] == "binary"
    assert "PARTITIONED BY (`dt` STRING)" in manifest["ddl"]["hive"]
    assert verify_partition(partition).ok
    report = json.loads(layout.report_path(tmp_path / "out", "images", DT).read_text())
    assert {p["signal"] for p in report["partitions"]} == {
        s.name for s in registry.galaxy("images").signals
    }


def test_empty_galaxy_gets_empty_complete_partitions(tmp_path: Path, registry: Registry) -> None:
    """A galaxy without values still gets a readable, verified, empty partition per signal."""
    with SignalStore(tmp_path / "store", list(registry.galaxies)) as store:
        write(registry, store, example_records(registry, "images", 3))
        result = export_snapshot(
            registry, export_settings(tmp_path / "out"), store=store, dt=DT, galaxies=["pins"]
        )
    assert [(p.signal, p.rows) for p in result.partitions] == [
        ("save_count_1h", 0),
        ("save_count_last_hour", 0),
    ]
    partition = result.partitions[0].path
    assert (partition / layout.SUCCESS).is_file()
    assert verify_partition(partition).ok
    table = SnapshotReader(tmp_path / "out").read_table("pins", "save_count_1h")
    assert table.num_rows == 0
    assert "value" in table.column_names
    assert not (tmp_path / "out" / "images").exists()


def test_rerun_is_idempotent_and_replaces_the_partition(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """Exporting a date again gives the same rows; after new writes, the new state replaces the
    old partition; no staging directory is left behind."""
    settings = export_settings(tmp_path / "out")
    first = export_snapshot(registry, settings, store=filled_store, dt=DT)
    before = read_partition(first.partitions[0].path)
    second = export_snapshot(registry, settings, store=filled_store, dt=DT)
    assert read_partition(second.partitions[0].path).equals(before)
    assert [p.rows for p in first.partitions] == [p.rows for p in second.partitions]
    write(
        registry,
        filled_store,
        example_records(registry, "images", 5, first=1000, signals=["embedding"]),
    )
    third = export_snapshot(registry, settings, store=filled_store, dt=DT, galaxies=["images"])
    embedding = next(p for p in third.partitions if p.signal == "embedding")
    assert embedding.rows == 45
    assert (
        json.loads((embedding.path / layout.MANIFEST).read_text())["export_id"] == third.export_id
    )
    table_dir = embedding.path.parent
    assert sorted(p.name for p in table_dir.iterdir()) == [f"dt={DT}"]


def test_reader_skips_incomplete_and_hidden_partitions_and_filters_dates(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """Only partitions with _SUCCESS in the date range are read; _-prefixed entries never."""
    settings = export_settings(tmp_path / "out")
    now = datetime.now(UTC)
    days = [DT - timedelta(days=2), DT - timedelta(days=1), DT]
    for day in days:
        export_snapshot(
            registry,
            settings,
            store=filled_store,
            dt=day,
            galaxies=["pins"],
            allow_late=True,
            now=now,
        )
    table = tmp_path / "out" / "pins" / "save_count_1h_v1"
    (table / f"dt={DT - timedelta(days=1)}" / layout.SUCCESS).unlink()  # as if still being written
    os.rename(table / f"dt={days[0]}", table / f"_staging-dt={days[0]}-x")
    reader = SnapshotReader(tmp_path / "out")
    assert [p.dt for p in reader.partitions("pins", "save_count_1h")] == [DT]
    assert reader.read_table("pins", "save_count_1h@1", start=DT, end=DT).num_rows == 30
    with pytest.raises(NotFoundError, match="no complete partition"):
        reader.read_table("pins", "save_count_1h", end=DT - timedelta(days=1))
    with pytest.raises(NotFoundError, match="no snapshot of galaxy"):
        reader.read_table("boards", "x")


# -- bad input and faults ----------------------------------------------------------------


def test_unconvertible_values_are_counted_and_kept_never_dropped(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """A value with the wrong type, one that does not parse, and a value of a signal the
    registry no longer has: counted in the manifest and report, kept in _rejects.jsonl."""
    good = to_writes(
        registry, example_records(registry, "images", 1, first=500, signals=["dhash"])
    )[0]
    envelope = records.StoredRecord.decode(good.stored).envelope
    wrong_type = any_pb2.Any()
    wrong_type.Pack(signals_pb2.SafetyScore(score=0.5))
    garbage = any_pb2.Any(type_url="type.googleapis.com/gss.v1.DHash", value=b"\xff\xff\xff")
    entity = good.key[:16]
    bad = [
        Write("images", good.key, records.encode(1, wrong_type, envelope)),
        Write(
            "images",
            (777).to_bytes(16, "big") + good.key[16:],
            records.encode(1, garbage, envelope),
        ),
        Write("images", entity + b"retired_signal\x00\x00\x00\x00\x01", good.stored),
    ]
    filled_store.apply(bad)
    result = export_snapshot(
        registry, export_settings(tmp_path / "out"), store=filled_store, dt=DT, galaxies=["images"]
    )
    dhash = next(p for p in result.partitions if p.signal == "dhash")
    assert (dhash.rows, dhash.rejected_rows) == (40, 2)
    manifest = json.loads((dhash.path / layout.MANIFEST).read_text())
    assert manifest["rejected_rows"] == 2
    reasons = " ".join(s["reason"] for s in manifest["rejected_samples"])
    assert "gss.v1.SafetyScore" in reasons
    assert "DecodeError" in reasons
    rejects = [json.loads(line) for line in (dhash.path / layout.REJECTS).read_text().splitlines()]
    assert {r["entity_id"] for r in rejects} == {entity.hex(), ((777).to_bytes(16, "big")).hex()}
    assert all(r["stored_base64"] for r in rejects)
    assert result.unregistered == {"images": {"retired_signal@1": 1}}
    report = json.loads(layout.report_path(tmp_path / "out", "images", DT).read_text())
    assert report["unregistered_signal_values"] == {"retired_signal@1": 1}
    assert verify_partition(dhash.path).ok


def test_verify_detects_a_corrupted_file_and_a_missing_marker(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """`gss export verify` passes a fresh export, then fails on a flipped byte and on a
    partition without _SUCCESS, naming the problem."""
    export_snapshot(registry, export_settings(tmp_path / "out"), store=filled_store, dt=DT)
    root = str(tmp_path / "out")
    ok = _run_gss("export", "verify", "--date", DT.isoformat(), "--root", root)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok ") == sum(len(g.signals) for g in registry)  # one per version
    part = tmp_path / "out" / "images" / "embedding_v1" / f"dt={DT}" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    (tmp_path / "out" / "pins" / "save_count_1h_v1" / f"dt={DT}" / layout.SUCCESS).unlink()
    bad = _run_gss("export", "verify", "--date", DT.isoformat(), "--root", root)
    assert bad.returncode == 1
    assert "FAIL images/embedding_v1" in bad.stdout
    assert "SHA-256" in bad.stdout
    assert "no _SUCCESS" in bad.stdout
    missing = _run_gss("export", "verify", "--date", "2001-01-01", "--root", root)
    assert missing.returncode == 1
    assert "no dt=2001-01-01 partition" in missing.stderr


def test_cli_reports_unknown_galaxy_and_bad_dates_clearly(
    tmp_path: Path, filled_store: SignalStore
) -> None:
    """Unknown galaxy, future date and a date long gone are refused with what to do."""
    store = str(filled_store.path)
    unknown = _run_gss(
        "export", "--store", store, "--root", str(tmp_path / "out"), "--galaxy", "boards"
    )
    assert unknown.returncode == 1
    assert "unknown galaxy 'boards' (known: images, pins)" in unknown.stderr
    future = (date.today() + timedelta(days=3)).isoformat()
    ahead = _run_gss("export", "--store", store, "--root", str(tmp_path / "out"), "--date", future)
    assert ahead.returncode == 1
    assert "in the future" in ahead.stderr
    late = _run_gss(
        "export", "--store", store, "--root", str(tmp_path / "out"), "--date", "2020-01-01"
    )
    assert late.returncode == 1
    assert "--allow-late" in late.stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(p) for p in task.read_text().split())
    return found


def test_killed_export_leaves_the_previous_partition_intact(
    tmp_path: Path, registry: Registry
) -> None:
    """kill -9 of `gss export` midway: the previous partition stays complete and verified,
    the broken one has no _SUCCESS (and is hidden), the workers exit, and a rerun succeeds."""
    store_dir, root = tmp_path / "store", tmp_path / "out"
    with SignalStore(store_dir, list(registry.galaxies), sync_writes=False) as store:
        write(registry, store, example_records(registry, "images", 20_000))
    env = {"GSS_EXPORT__WORKERS": "2", "GSS_EXPORT__ROW_GROUP_ROWS": "500"}
    args = [
        "export",
        "--store",
        str(store_dir),
        "--root",
        str(root),
        "--galaxy",
        "images",
        "--date",
        DT.isoformat(),
    ]
    first = _run_gss(*args, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    table = root / "images" / "embedding_v1"
    partition = table / f"dt={DT}"
    before = json.loads((partition / layout.MANIFEST).read_text())

    proc = subprocess.Popen(
        [*GSS, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GSS_LOG_FORMAT": "json", **env},
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in _children(proc.pid) if p not in workers] or workers
            if any(table.glob(f"{layout.STAGING_PREFIX}*/part-*.parquet")):
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the export finished before it could be killed"
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if Path(f"/proc/{p}").exists()]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "worker processes outlived the killed export"
    stagings = list(table.glob(f"{layout.STAGING_PREFIX}*"))
    assert stagings
    assert not any((s / layout.SUCCESS).exists() for s in stagings)
    assert json.loads((partition / layout.MANIFEST).read_text())["export_id"] == before["export_id"]
    assert verify_partition(partition).ok
    assert SnapshotReader(root).read_table("images", "embedding").num_rows == 20_000
    again = _run_gss(*args, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(table.glob(f"{layout.STAGING_PREFIX}*"))
    assert verify_partition(partition).ok


def test_duckdb_queries_fields_with_the_manifest_query(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """The DuckDB query in the manifest reads the table (a real SQL engine): struct fields are
    queryable, dt stays a string, and a staging directory's files are not picked up."""
    import duckdb  # a dev dependency: never skipped

    export_snapshot(registry, export_settings(tmp_path / "out"), store=filled_store, dt=DT)
    partition = tmp_path / "out" / "images" / "dominant_colors_v1" / f"dt={DT}"
    staging = partition.with_name(f"{layout.STAGING_PREFIX}dt={DT}-x")
    staging.mkdir()
    (staging / "part-00000.parquet").write_bytes((partition / "part-00000.parquet").read_bytes())
    query = json.loads((partition / layout.MANIFEST).read_text())["ddl"]["duckdb"].rstrip(";")
    con = duckdb.connect()
    ((dt_type, rows, colors),) = con.execute(
        query.replace("SELECT *", "SELECT any_value(typeof(dt)), count(*), sum(len(value.colors))")
    ).fetchall()
    assert dt_type == "VARCHAR"
    assert rows == 40
    assert colors == sum(n % 6 for n in range(40))


def test_expired_and_after_dt_rows_are_flagged_and_counted(
    tmp_path: Path, registry: Registry
) -> None:
    """pins/save_count_1h has a 2-hour TTL: values older than that at snapshot time are kept
    with expired = true; values whose event time is after D are kept and counted in the
    manifest's rows_after_dt — both exactly as many as were written."""
    from tests.snapshot_fixtures import example_records, write

    now = datetime.now(UTC).replace(microsecond=0)
    day_end = datetime.combine(DT + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    times = {
        "old": day_end - timedelta(hours=5),  # in D, 2h TTL long past at snapshot time
        "fresh": now - timedelta(minutes=30),  # within its TTL
        "late": now - timedelta(minutes=1),  # within its TTL too
    }
    with SignalStore(tmp_path / "store", list(registry.galaxies)) as store:
        first = 0
        for name, moment in times.items():
            count = {"old": 3, "fresh": 2, "late": 4}[name]
            write(
                registry,
                store,
                example_records(
                    registry,
                    "pins",
                    count,
                    first=first,
                    event_time=moment,
                    signals=["save_count_1h"],
                ),
            )
            first += count
        result = export_snapshot(
            registry, export_settings(tmp_path / "out"), store=store, dt=DT, galaxies=["pins"]
        )
    (partition,) = [p for p in result.partitions if p.signal == "save_count_1h"]
    table = read_partition(partition.path)
    expired = table.column("expired").to_pylist()
    ttl = timedelta(hours=2)
    expected_expired = sum(
        n for name, n in (("old", 3), ("fresh", 2), ("late", 4)) if times[name] + ttl <= now
    )
    expected_after = sum(
        n for name, n in (("old", 3), ("fresh", 2), ("late", 4)) if times[name] >= day_end
    )
    assert sum(expired) == expected_expired == 3
    manifest = json.loads((partition.path / layout.MANIFEST).read_text())
    assert manifest["expired_rows"] == expected_expired
    assert manifest["rows_after_dt"] == expected_after
    assert manifest["rows"] == table.num_rows == 9


def _replaced(fd: int, live: Path) -> bool:
    """Whether the directory open as ``fd`` is no longer the one at ``live``."""
    try:
        return os.fstat(fd).st_ino != os.stat(live).st_ino
    except FileNotFoundError:
        return True


def test_readers_never_see_a_partial_partition_while_it_is_replaced(
    tmp_path: Path, registry: Registry, filled_store: SignalStore
) -> None:
    """The date is exported again and again (with new values each time) while a reader lists
    the live partition: every listing is a complete partition (_SUCCESS, manifest and every
    part file it names); with renameat2's exchange the partition is never even missing."""
    from contract.snapshot.layout import _exchange

    settings = export_settings(tmp_path / "out")
    first = export_snapshot(registry, settings, store=filled_store, dt=DT, galaxies=["images"])
    live = next(p for p in first.partitions if p.signal == "embedding").path
    probe_a, probe_b = tmp_path / "probe-a", tmp_path / "probe-b"
    probe_a.mkdir()
    probe_b.mkdir()
    exchange = _exchange(probe_a, probe_b)
    done = threading.Event()
    seen = {"complete": 0, "missing": 0, "vanished": 0}
    problems: list[str] = []

    def read_continuously() -> None:
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            try:
                fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                seen["missing"] += 1
                continue
            try:
                names = set(os.listdir(fd))
                problem = None
                if layout.SUCCESS not in names or layout.MANIFEST not in names:
                    problem = f"incomplete listing: {sorted(names)}"
                else:
                    with open(os.open(layout.MANIFEST, os.O_RDONLY, dir_fd=fd)) as f:
                        manifest = json.load(f)
                    wanted = {entry["name"] for entry in manifest["files"]}
                    if not wanted <= names:
                        problem = f"manifest names {sorted(wanted - names)} not in the listing"
                if problem is not None and _replaced(fd, live):
                    # Read through a descriptor of the partition that was swapped out and is
                    # being deleted: what a reader opening the live path sees is the new one.
                    seen["vanished"] += 1
                    continue
                if problem is not None:
                    problems.append(problem)
                    continue
                seen["complete"] += 1
            except FileNotFoundError:
                seen["vanished"] += 1  # the replaced directory was deleted under our fd
            finally:
                os.close(fd)

    reader = threading.Thread(target=read_continuously, daemon=True)
    reader.start()
    for round_ in range(8):
        write(
            registry,
            filled_store,
            example_records(registry, "images", 3, first=5000 + 10 * round_, signals=["embedding"]),
        )
        export_snapshot(registry, settings, store=filled_store, dt=DT, galaxies=["images"])
    done.set()
    reader.join(10)
    assert problems == []
    assert seen["complete"] > 0
    if exchange:
        # With the exchange the live path always names a partition; only a replaced one, read
        # through an open descriptor, can vanish.
        assert seen["missing"] == 0, seen
