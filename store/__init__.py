"""The RocksDB signal store: key encoding, stored records, conditional upsert, multi-get."""

from contract.keys import EntityCodec, KeyType
from store.db import AppliedBatch, SignalStore
from store.records import StoredRecord

__all__ = ["AppliedBatch", "EntityCodec", "KeyType", "SignalStore", "StoredRecord"]
