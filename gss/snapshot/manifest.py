"""The per-partition manifest: what was exported, how to check it, how to register it.

``_manifest.json`` in each partition lists the part files with row counts, sizes and SHA-256
checksums, the counts of expired, late and rejected values, the Arrow schema, the Thrift
descriptor, and the DDL that registers the table and the partition in Hive, Trino and DuckDB
(``dt`` is a STRING partition column everywhere). :func:`verify_partition` checks a partition
against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contract.snapshot import layout

MANIFEST_VERSION = 1
THRIFT_PROTOCOL = "binary"  # TBinaryProtocol, strict, no message envelope
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iso_us(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def table_name(galaxy: str, signal: str, version: int) -> str:
    """The SQL table of one signal version: ``<galaxy>__<signal>_v<version>``."""
    return f"{galaxy}__{signal}_v{version}"


# -- DDL ---------------------------------------------------------------------------------


def hive_type(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "STRUCT<" + ", ".join(f"`{f.name}`:{hive_type(f.type)}" for f in t) + ">"
    if pa.types.is_list(t):
        return f"ARRAY<{hive_type(t.value_type)}>"
    return _simple_type(t, "hive")


def trino_type(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "ROW(" + ", ".join(f'"{f.name}" {trino_type(f.type)}' for f in t) + ")"
    if pa.types.is_list(t):
        return f"ARRAY({trino_type(t.value_type)})"
    return _simple_type(t, "trino")


def _simple_type(t: pa.DataType, dialect: str) -> str:
    hive = dialect == "hive"
    if pa.types.is_string(t):
        return "STRING" if hive else "VARCHAR"
    if pa.types.is_binary(t):
        return "BINARY" if hive else "VARBINARY"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP" if hive else "TIMESTAMP(3)"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_int32(t):
        return "INT" if hive else "INTEGER"
    if pa.types.is_float64(t):
        return "DOUBLE"
    raise ValueError(f"no SQL type for Arrow type {t}")


@dataclass(frozen=True)
class DdlTarget:
    """Where SQL engines find the tables: database/schema, Trino catalog, location prefix."""

    database: str = "gss"
    trino_catalog: str = "hive"
    # URI of the export root as the engines see it, e.g. s3://bucket/gss-snapshots.
    location: str = ""


def ddl(
    schema: pa.Schema,
    galaxy: str,
    signal: str,
    version: int,
    dt: date,
    target: DdlTarget,
    value_type: str,
    thrift_class: str,
) -> dict[str, str]:
    """CREATE TABLE and partition registration for Hive and Trino, and a DuckDB query."""
    name = table_name(galaxy, signal, version)
    location = f"{target.location.rstrip('/')}/{galaxy}/{layout.signal_dir_name(signal, version)}"
    hive_cols = ",\n".join(f"  `{f.name}` {hive_type(f.type)}" for f in schema)
    hive = (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{target.database}`.`{name}` (\n{hive_cols}\n)\n"
        f"PARTITIONED BY (`dt` STRING)\nSTORED AS PARQUET\nLOCATION '{location}'\n"
        f"TBLPROPERTIES ('gss.value_type'='{value_type}', 'thrift.class'='{thrift_class}', "
        f"'gss.value_thrift_protocol'='{THRIFT_PROTOCOL}');\n"
        f"ALTER TABLE `{target.database}`.`{name}` ADD IF NOT EXISTS PARTITION (`dt`='{dt.isoformat()}');\n"
        f"-- or, to pick up every partition: MSCK REPAIR TABLE `{target.database}`.`{name}`;"
    )
    trino_cols = ",\n".join(f'  "{f.name}" {trino_type(f.type)}' for f in schema)
    qualified = f'"{target.trino_catalog}"."{target.database}"."{name}"'
    trino = (
        f'CREATE TABLE IF NOT EXISTS {qualified} (\n{trino_cols},\n  "dt" VARCHAR\n)\n'
        f"WITH (external_location = '{location}', format = 'PARQUET', partitioned_by = ARRAY['dt']);\n"
        f"CALL \"{target.trino_catalog}\".system.sync_partition_metadata('{target.database}', '{name}', 'ADD');"
    )
    duckdb = (
        f"SELECT * FROM read_parquet('{location}/dt=*/part-*.parquet', hive_partitioning = true, "
        "hive_types = {'dt': VARCHAR});"
    )
    return {"hive": hive, "trino": trino, "duckdb": duckdb}


# -- writing -----------------------------------------------------------------------------


@dataclass
class PartFile:
    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class PartitionManifest:
    """The manifest of one partition (JSON on disk)."""

    galaxy: str
    signal: str
    version: int
    value_type: str
    dt: str
    export_id: str
    snapshot_time_us: int
    source: str
    thrift_struct: str
    thrift_class: str
    rows: int = 0
    expired_rows: int = 0
    rows_after_dt: int = 0
    rejected_rows: int = 0
    rejected_samples: list[dict[str, str]] = field(default_factory=list)
    rejects_file: dict[str, Any] | None = None
    min_event_time_us: int | None = None
    max_event_time_us: int | None = None
    files: list[PartFile] = field(default_factory=list)
    schema: list[dict[str, str]] = field(default_factory=list)
    thrift_descriptor: dict[str, Any] = field(default_factory=dict)
    ddl: dict[str, str] = field(default_factory=dict)
    gss_version: str = ""
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "table": {
                "galaxy": self.galaxy,
                "signal": self.signal,
                "version": self.version,
                "name": table_name(self.galaxy, self.signal, self.version),
                "value_type": self.value_type,
                "thrift_struct": self.thrift_struct,
                "thrift_class": self.thrift_class,
                "value_thrift_protocol": THRIFT_PROTOCOL,
            },
            "dt": self.dt,
            "export_id": self.export_id,
            "snapshot_time": iso_us(self.snapshot_time_us),
            "snapshot_time_us": self.snapshot_time_us,
            "source": self.source,
            "gss_version": self.gss_version,
            "created_at": self.created_at,
            "rows": self.rows,
            "expired_rows": self.expired_rows,
            "rows_after_dt": self.rows_after_dt,
            "rejected_rows": self.rejected_rows,
            "rejected_samples": self.rejected_samples,
            "rejects_file": self.rejects_file,
            "min_event_time": iso_us(self.min_event_time_us),
            "max_event_time": iso_us(self.max_event_time_us),
            "files": [vars(f) for f in self.files],
            "schema": self.schema,
            "thrift_descriptor": self.thrift_descriptor,
            "ddl": self.ddl,
        }


def schema_json(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def describe_file(path: Path) -> PartFile:
    """Row count (from the footer), size and checksum of a finished part file."""
    rows = pq.ParquetFile(path).metadata.num_rows
    return PartFile(path.name, rows, path.stat().st_size, sha256_of(path))


def read_manifest(partition: Path) -> dict[str, Any]:
    return json.loads((partition / layout.MANIFEST).read_text())  # type: ignore[no-any-return]


# -- verification ------------------------------------------------------------------------


@dataclass
class VerifyResult:
    partition: Path
    problems: list[str]
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_partition(partition: Path) -> VerifyResult:
    """Check a partition against its manifest: ``_SUCCESS``, files, footers, rows, checksums."""
    result = VerifyResult(partition, [])
    problems = result.problems
    if not (partition / layout.SUCCESS).is_file():
        problems.append("no _SUCCESS marker: the export of this partition did not complete")
    try:
        manifest = read_manifest(partition)
    except FileNotFoundError:
        problems.append(f"no {layout.MANIFEST}")
        return result
    except ValueError as exc:
        problems.append(f"{layout.MANIFEST} is not valid JSON: {exc}")
        return result
    listed = {f["name"]: f for f in manifest.get("files", [])}
    present = {p.name for p in partition.glob(layout.PART_PATTERN)}
    for name in sorted(present - set(listed)):
        problems.append(f"{name} is not in the manifest")
    total = 0
    thrift_class = manifest.get("table", {}).get("thrift_class")
    for name, entry in sorted(listed.items()):
        path = partition / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{name} is {size} bytes; the manifest says {entry['bytes']}")
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            problems.append(f"{name} has SHA-256 {digest}; the manifest says {entry['sha256']}")
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            problems.append(f"{name} has no readable Parquet footer: {exc}")
            continue
        if meta.num_rows != entry["rows"]:
            problems.append(f"{name} has {meta.num_rows} rows; the manifest says {entry['rows']}")
        footer = meta.metadata or {}
        if footer.get(b"thrift.class", b"").decode() != thrift_class:
            problems.append(f"{name} footer thrift.class is not {thrift_class}")
        if b"thrift.descriptor" not in footer:
            problems.append(f"{name} footer has no thrift.descriptor")
        total += meta.num_rows
    if total != manifest.get("rows"):
        problems.append(f"the files hold {total} rows; the manifest says {manifest.get('rows')}")
    rejects = manifest.get("rejects_file")
    if rejects:
        path = partition / rejects["name"]
        if not path.is_file():
            problems.append(f"{rejects['name']} is missing")
        elif sha256_of(path) != rejects["sha256"]:
            problems.append(f"{rejects['name']} does not match its checksum")
    result.rows = total
    return result
