"""The RocksDB signal store; the only package that opens RocksDB.

- :mod:`store.db` — :class:`SignalStore`: one column family per galaxy, the one write path
  (``apply``: conditional upsert, offsets and outbox entries in one WriteBatch), multi-get,
  checkpoints.
- :mod:`store.records` — the stored record format (header ‖ cell) and its row decoder.
- :mod:`store.scan` — point-in-time read-only views for an export (a checkpoint of the live
  store, or a secondary instance of a store another process owns) and batch scans.
- :mod:`store.record_batches` — the same record format decoded a batch at a time into columns,
  on :mod:`store.columnar` (numpy; needs the ``export`` extra).

Key layout is the contract's (:mod:`contract.keys`).
"""

from store.db import AppliedBatch, SignalStore
from store.records import StoredRecord

__all__ = ["AppliedBatch", "SignalStore", "StoredRecord"]
