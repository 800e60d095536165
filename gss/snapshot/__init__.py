"""The daily snapshot export: the store's values as Thrift twins in Hive-partitioned Parquet.

See docs/export.md. Entry points: :func:`export_snapshot` (``gss export``) and
:func:`verify_partition` (``gss export verify``); the batch reader is ``clients.snapshot``.
"""

from gss.snapshot.exporter import ExportResult, PartitionResult, export_snapshot
from gss.snapshot.manifest import VerifyResult, verify_partition

__all__ = ["ExportResult", "PartitionResult", "VerifyResult", "export_snapshot", "verify_partition"]
