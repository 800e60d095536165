"""The daily snapshot export: the store's values as Thrift twins in Hive-partitioned Parquet.

See docs/export.md. Entry points: :func:`export_snapshot` (``gss export``) and
:func:`verify_partition` (``gss export verify``); the batch reader is ``clients.snapshot``.
Attributes load lazily, so worker processes import only the conversion modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gss.snapshot.exporter import ExportResult, PartitionResult, export_snapshot
    from gss.snapshot.manifest import VerifyResult, verify_partition

_LAZY = {
    "ExportResult": "gss.snapshot.exporter",
    "PartitionResult": "gss.snapshot.exporter",
    "export_snapshot": "gss.snapshot.exporter",
    "VerifyResult": "gss.snapshot.manifest",
    "verify_partition": "gss.snapshot.manifest",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gss.snapshot' has no attribute {name!r}")


__all__ = ["ExportResult", "PartitionResult", "VerifyResult", "export_snapshot", "verify_partition"]
