"""The batch reader of the daily snapshot (``gss export``): Arrow tables or Thrift rows.

    reader = SnapshotReader("/data/gss-snapshots")
    table = reader.read_table("images", "dominant_colors", start="2024-05-01", end="2024-05-07")
    for dt, row in reader.read_rows("images", "dhash@1", start="2024-05-07"):
        row.entity_id, row.value.hash          # a gss_signals DHashSnapshotRow

Only complete partitions are read: a ``dt=`` directory without ``_SUCCESS`` (an export still
running, or one that was killed) is skipped, and so is every ``_``- or ``.``-prefixed entry
(staging directories, manifests, rejects). Files are the ones the partition's manifest lists.
Thrift values are decoded from the ``value_thrift`` column (binary protocol), so rows carry
exactly the bytes the export wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contract.errors import InvalidArgumentError, NotFoundError
from contract.snapshot import idl, layout

DateLike = date | str


@dataclass(frozen=True)
class Partition:
    """One complete partition of one signal version."""

    galaxy: str
    signal: str
    version: int
    dt: date
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / layout.MANIFEST).read_text())  # type: ignore[no-any-return]

    def files(self) -> list[Path]:
        """The part files, as the manifest lists them (any non-hidden Parquet file without one)."""
        manifest_path = self.path / layout.MANIFEST
        if manifest_path.is_file():
            return [self.path / f["name"] for f in self.manifest["files"]]
        return sorted(p for p in self.path.glob("*.parquet") if not layout.is_hidden(p.name))


def _as_date(value: DateLike | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return layout.parse_date(value)


class SnapshotReader:
    """Reads the snapshot tables under an export root (a local or mounted directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"snapshot root {self.root} does not exist")

    def galaxies(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not layout.is_hidden(p.name)
        )

    def signals(self, galaxy: str) -> list[tuple[str, int]]:
        """(name, version) of every exported signal of a galaxy."""
        galaxy_dir = self._galaxy_dir(galaxy)
        found = []
        for entry in galaxy_dir.iterdir():
            m = layout.SIGNAL_DIR.match(entry.name)
            if m and entry.is_dir():
                found.append((m.group(1), int(m.group(2))))
        return sorted(found)

    def _galaxy_dir(self, galaxy: str) -> Path:
        path = self.root / galaxy
        if layout.is_hidden(galaxy) or not path.is_dir():
            known = ", ".join(self.galaxies()) or "none"
            raise NotFoundError(
                f"no snapshot of galaxy {galaxy!r} under {self.root} (exported: {known})"
            )
        return path

    def _resolve(self, galaxy: str, signal: str) -> tuple[str, int]:
        """``name`` (latest exported version) or ``name@version``."""
        name, _, version_text = signal.partition("@")
        available = [v for n, v in self.signals(galaxy) if n == name]
        if version_text:
            try:
                version = int(version_text)
            except ValueError:
                raise InvalidArgumentError(
                    f"signal {signal!r}: the version after @ must be a number"
                ) from None
            if version not in available:
                raise NotFoundError(
                    f"no snapshot of {galaxy}/{name}@{version} (exported versions: {available or 'none'})"
                )
            return name, version
        if not available:
            known = ", ".join(f"{n}@{v}" for n, v in self.signals(galaxy)) or "none"
            raise NotFoundError(
                f"no snapshot of signal {name!r} in galaxy {galaxy!r} (exported: {known})"
            )
        return name, max(available)

    def partitions(
        self,
        galaxy: str,
        signal: str,
        *,
        start: DateLike | None = None,
        end: DateLike | None = None,
    ) -> list[Partition]:
        """Complete partitions of a signal with ``start <= dt <= end`` (both optional), oldest first."""
        name, version = self._resolve(galaxy, signal)
        low, high = _as_date(start), _as_date(end)
        table = layout.table_dir(self.root, galaxy, name, version)
        return [
            Partition(galaxy, name, version, dt, path)
            for dt, path in layout.complete_partitions(table)
            if (low is None or dt >= low) and (high is None or dt <= high)
        ]

    def _partitions_or_raise(
        self, galaxy: str, signal: str, start: DateLike | None, end: DateLike | None
    ) -> list[Partition]:
        found = self.partitions(galaxy, signal, start=start, end=end)
        if not found:
            name, version = self._resolve(galaxy, signal)
            table = layout.table_dir(self.root, galaxy, name, version)
            have = [dt.isoformat() for dt, _ in layout.complete_partitions(table)]
            span = f"{_as_date(start) or '…'} to {_as_date(end) or '…'}"
            raise NotFoundError(
                f"no complete partition of {galaxy}/{name}@{version} for dt {span} "
                f"(complete: {', '.join(have[-10:]) if have else 'none'})"
            )
        return found

    def read_table(
        self,
        galaxy: str,
        signal: str,
        *,
        start: DateLike | None = None,
        end: DateLike | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """The rows of the partitions as one Arrow table, with a string ``dt`` column added."""
        tables = []
        for part in self._partitions_or_raise(galaxy, signal, start, end):
            for path in part.files():
                t = pq.read_table(path, columns=columns)
                tables.append(
                    t.append_column("dt", pa.array([part.dt.isoformat()] * t.num_rows, pa.string()))
                )
        return pa.concat_tables(tables)

    def read_rows(
        self,
        galaxy: str,
        signal: str,
        *,
        start: DateLike | None = None,
        end: DateLike | None = None,
        batch_rows: int = 10_000,
    ) -> Iterator[tuple[date, Any]]:
        """``(dt, row)`` pairs; ``row`` is the Thrift ``<ValueType>SnapshotRow`` of the IDL.

        ``row.value`` is decoded from ``value_thrift``; times are µs since the epoch (UTC).
        """
        from thriftpy2.protocol import TCyBinaryProtocolFactory
        from thriftpy2.utils import deserialize

        factory = TCyBinaryProtocolFactory()  # type: ignore[no-untyped-call]
        for part in self._partitions_or_raise(galaxy, signal, start, end):
            value_type = part.manifest["table"]["value_type"]
            value_cls, row_cls = idl.value_struct(value_type), idl.row_struct(value_type)
            columns = [
                "entity_id",
                "event_time",
                "write_time",
                "producer",
                "model_name",
                "model_version",
                "expired",
                "value_thrift",
            ]
            for path in part.files():
                for batch in pq.ParquetFile(path).iter_batches(
                    batch_size=batch_rows, columns=columns
                ):
                    cols = {name: batch.column(name) for name in columns}
                    event = cols["event_time"].cast(pa.int64()).to_pylist()
                    write = cols["write_time"].cast(pa.int64()).to_pylist()
                    lists = {
                        n: cols[n].to_pylist()
                        for n in (
                            "entity_id",
                            "producer",
                            "model_name",
                            "model_version",
                            "expired",
                            "value_thrift",
                        )
                    }
                    for i in range(batch.num_rows):
                        raw = lists["value_thrift"][i]
                        yield (
                            part.dt,
                            row_cls(
                                entity_id=lists["entity_id"][i],
                                event_time=event[i],
                                write_time=write[i],
                                producer=lists["producer"][i],
                                model_name=lists["model_name"][i],
                                model_version=lists["model_version"][i],
                                expired=lists["expired"][i],
                                value=deserialize(value_cls(), raw, factory),
                                value_thrift=raw,
                            ),
                        )
