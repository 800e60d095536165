"""The RocksDB signal store: key encoding, stored records, conditional upsert, multi-get."""

from store.db import AppliedBatch, SignalStore
from store.keys import EntityCodec, KeyType
from store.records import StoredRecord

__all__ = ["AppliedBatch", "EntityCodec", "KeyType", "SignalStore", "StoredRecord"]
