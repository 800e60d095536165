"""The partitioner: which changelog partition an entity's records are on.

Every producer of GSS (and Java's clients, so Flink's KafkaSink) puts a keyed record on
partition ``(murmur2(key) & 0x7fffffff) % partitions``, the key being the entity's canonical
bytes (:mod:`contract.keys`); librdkafka producers do the same with
``partitioner=murmur2_random`` (:mod:`contract.kafka` forces it). Routing a lookup to the node
that hosts an entity must use the very same function, so it lives here, in the bottom layer,
for the server (which refuses entities it does not host) and the routing client alike.

murmur2 is Kafka's 32-bit MurmurHash2 with seed ``0x9747b28c`` (Java:
``org.apache.kafka.common.utils.Utils.murmur2``); docs/cluster.md spells it out for callers in
other languages. No maintained Python package exposes it without a whole second Kafka client,
and it is twenty lines; ``tests/integration/test_cluster.py`` checks it against where
confluent-kafka's own murmur2 partitioner puts keys on a real broker.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit integer."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length // 4
    # All 4-byte little-endian words at once: the lookup path hashes every requested id.
    for word in struct.unpack_from(f"<{whole}I", data):
        k = (word * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length % 4
    if tail:
        rest = data[whole * 4 :]
        if tail == 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition a record keyed ``key`` goes to among ``partitions`` (Kafka's
    ``Utils.toPositive(Utils.murmur2(key)) % numPartitions``)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_of(keys: Iterable[bytes], partitions: int) -> list[int]:
    """:func:`partition_of` of each key, in order."""
    return [(murmur2(key) & 0x7FFFFFFF) % partitions for key in keys]


def replica_nodes(partition: int, nodes: int, replicas: int) -> list[int]:
    """The ordinals of the nodes hosting ``partition`` in a cluster of ``nodes`` nodes with
    ``replicas`` replicas per partition: ``partition % nodes`` and the next ``replicas - 1``
    ordinals after it, wrapping (Kafka's own round-robin replica placement)."""
    return [(partition + i) % nodes for i in range(replicas)]


def hosted_partitions(ordinal: int, partitions: int, nodes: int, replicas: int) -> list[int]:
    """The partitions (of a galaxy with ``partitions`` partitions) node ``ordinal`` hosts."""
    return [p for p in range(partitions) if (ordinal - p) % nodes < replicas]
