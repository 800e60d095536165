"""The partitioner and the partition layout of a cluster (docs/cluster.md)."""

from __future__ import annotations

import pytest

from contract.errors import InvalidArgumentError
from contract.partitions import hosted_partitions, murmur2, partition_of, replica_nodes
from contract.registry import Registry
from contract.settings import ClusterSettings
from gss.cluster.layout import NodeLayout, ordinal_from_hostname

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2), as Java's signed ints.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_is_kafkas(key: bytes, expected: int) -> None:
    """murmur2 gives what Kafka's Utils.murmur2 gives (as an unsigned 32-bit value)."""
    assert murmur2(key) == expected & 0xFFFFFFFF


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    """partition_of is Utils.toPositive(murmur2(key)) % partitions, as Kafka's producers do."""
    for key, signed in KAFKA_VECTORS.items():
        assert partition_of(key, 7) == (signed & 0x7FFFFFFF) % 7


@pytest.mark.parametrize(("nodes", "replicas"), [(1, 1), (3, 1), (3, 2), (6, 2), (4, 4)])
def test_every_partition_has_exactly_r_replicas_on_distinct_nodes(
    nodes: int, replicas: int
) -> None:
    """Each of 12 partitions is hosted by ``replicas`` distinct nodes, and a node's hosted
    list is exactly the partitions naming it among their replicas."""
    for partition in range(12):
        owners = replica_nodes(partition, nodes, replicas)
        assert len(set(owners)) == replicas
    for ordinal in range(nodes):
        hosted = hosted_partitions(ordinal, 12, nodes, replicas)
        assert hosted == [p for p in range(12) if ordinal in replica_nodes(p, nodes, replicas)]


def test_three_nodes_two_replicas_spread_load_evenly() -> None:
    """With 3 nodes and 2 replicas of 6 partitions, every node hosts 4 partitions."""
    assert [len(hosted_partitions(o, 6, 3, 2)) for o in range(3)] == [4, 4, 4]


def test_ordinal_comes_from_a_statefulset_host_name() -> None:
    assert ordinal_from_hostname("gss-3") == 3
    assert ordinal_from_hostname("gss-12.gss-headless.default.svc") == 12
    assert ordinal_from_hostname("laptop") is None


def test_layout_from_settings(registry: Registry) -> None:
    """The default is one node hosting everything; a cluster node takes its ordinal from the
    settings, else from its host name, and refuses impossible shapes with what to change."""
    single = NodeLayout.from_settings(ClusterSettings(), "laptop")
    assert single.hosts_everything
    assert single.hosted(registry) == {g.name: list(range(g.partitions)) for g in registry}

    node = NodeLayout.from_settings(ClusterSettings(nodes=3, replicas=2), "gss-2")
    assert (node.ordinal, node.hosts_everything) == (2, False)
    assert node.hosted(registry)["pins"] == hosted_partitions(2, 4, 3, 2)

    with pytest.raises(InvalidArgumentError, match=r"cluster\.ordinal"):
        NodeLayout.from_settings(ClusterSettings(nodes=3), "laptop")
    with pytest.raises(InvalidArgumentError, match="outside the cluster"):
        NodeLayout.from_settings(ClusterSettings(nodes=3, ordinal=3), "laptop")
    with pytest.raises(InvalidArgumentError, match="more replicas"):
        NodeLayout.from_settings(ClusterSettings(nodes=2, replicas=3, ordinal=0), "laptop")
