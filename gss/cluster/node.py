"""This node as a member of the cluster: what it hosts, its map, its readiness.

:class:`ClusterNode` is what the service consults: :meth:`ClusterNode.check_hosted` refuses
entities on partitions this node does not host (naming the partition and the nodes that host
it), :meth:`ClusterNode.describe` answers DescribeCluster, :meth:`ClusterNode.applied` tells
whether minimum positions of a read are applied here. The single-node default (no cluster
settings) hosts every partition and refuses nothing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from contract.errors import WrongNodeError
from contract.partitions import partitions_of
from contract.registry import GalaxySpec, Registry
from contract.settings import Settings
from contract.topics import TopicKind, topic_name
from contract.v1 import envelope_pb2, signal_service_pb2
from gss.cluster.layout import NodeLayout
from gss.cluster.membership import Membership
from gss.kafka.election import PublisherElection
from gss.kafka.ingester import Ingester


class ClusterNode:
    """One node's view of the cluster. ``attach`` the ingester when a broker is configured."""

    def __init__(self, settings: Settings, registry: Registry, hostname: str | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.layout = NodeLayout.from_settings(settings.cluster, hostname or socket.gethostname())
        self.hosted = self.layout.hosted(registry)
        self.address = ""
        self.ingester: Ingester | None = None
        self.election: PublisherElection | None = None
        self.membership: Membership | None = None
        self._serving = False
        # A reader process (gss.readers) answers min_positions from the offsets its view of
        # the store holds, having no ingester of its own.
        self.applied_by: Callable[[Sequence[envelope_pb2.ChangelogPosition]], bool] | None = None

    def attach(self, ingester: Ingester, election: PublisherElection | None = None) -> None:
        """Follow ``ingester`` for positions and readiness (and ``election`` for which
        partitions this node publishes), and, in a cluster of several nodes, announce this
        node on Kafka and follow the others."""
        self.ingester = ingester
        self.election = election
        if self.settings.cluster.nodes > 1:
            # One node needs no directory: its map is itself (and no topic is made for it).
            self.membership = Membership(
                self.settings.kafka, self.settings.cluster, self.announcement
            )

    def bound(self, address: str) -> None:
        """The server is listening: announce ``cluster.advertised_address`` or ``address``."""
        host, _, port = address.rpartition(":")
        if host in ("0.0.0.0", "[::]", "::", ""):
            # Listening on every interface: peers and clients need a name, not the wildcard.
            address = f"{socket.getfqdn()}:{port}"
        self.address = self.settings.cluster.advertised_address or address
        if self.membership is not None:
            self.membership.start()

    def stop(self) -> None:
        if self.membership is not None:
            self.membership.stop()

    # -- readiness -----------------------------------------------------------------------------

    def ready(self) -> bool:
        """Caught up: every hosted partition read to its end once and within the allowed lag
        (always, without a broker: the store is all there is)."""
        if self.ingester is None:
            return True
        return self.ingester.caught_up(self.settings.cluster.max_ready_lag_records)

    def set_serving(self, serving: bool) -> None:
        self._serving = serving

    # -- routing -------------------------------------------------------------------------------

    def check_hosted(self, galaxy: GalaxySpec, entities: Sequence[bytes], field: str) -> None:
        """Raise WrongNodeError naming the first entity on a partition this node does not host."""
        if self.layout.hosts_everything:
            return
        hosted = set(self.hosted[galaxy.name])
        for i, partition in enumerate(partitions_of(entities, galaxy.partitions)):
            if partition not in hosted:
                owners = self._owner_addresses(partition)
                raise WrongNodeError(
                    f"{field}[{i}] ({galaxy.codec.to_text(entities[i])}) is on partition "
                    f"{partition} of galaxy {galaxy.name}, which this node (ordinal "
                    f"{self.layout.ordinal}, {self.address}) does not host; it lives on "
                    f"{owners}: route lookups by the cluster map (DescribeCluster, "
                    "docs/cluster.md) or use clients.cluster.ClusterClient"
                )

    def _owner_addresses(self, partition: int) -> str:
        by_ordinal = {n.ordinal: n.address for n in self.nodes() if n.live}
        return ", ".join(
            f"node {o} ({by_ordinal.get(o, 'not announced')})"
            for o in self.layout.owners(partition)
        )

    def applied(self, positions: Iterable[envelope_pb2.ChangelogPosition]) -> bool:
        """Whether this node has applied every given changelog position (True without a broker,
        where every acknowledged write is applied before it is acknowledged)."""
        if self.applied_by is not None:
            return self.applied_by(list(positions))
        return self.ingester is None or self.ingester.applied(positions)

    # -- the map -------------------------------------------------------------------------------

    def announcement(self) -> signal_service_pb2.ClusterNode:
        """This node as it announces itself."""
        stamp = Timestamp()
        stamp.FromNanoseconds(time.time_ns())
        node = signal_service_pb2.ClusterNode(
            address=self.address,
            ordinal=self.layout.ordinal,
            serving=self._serving,
            live=True,
            announced_at=stamp,
            cluster_nodes=self.layout.nodes,
            cluster_replicas=self.layout.replicas,
        )
        if self.ingester is not None:
            changelog = {
                g.name: topic_name(self.settings.kafka, TopicKind.CHANGELOG, g.name)
                for g in self.registry
            }
            for row in self.ingester.replica_partitions():
                node.partitions.add(
                    galaxy=row.galaxy,
                    partition=row.partition,
                    next_offset=row.next_offset,
                    end_offset=row.end_offset,
                    lag_records=row.lag,
                    caught_up=row.caught_up,
                    publishing=self.election is None
                    or self.election.owns(changelog[row.galaxy], row.partition),
                )
        else:
            for galaxy, partitions in self.hosted.items():
                for partition in partitions:
                    node.partitions.add(
                        galaxy=galaxy, partition=partition, next_offset=-1, end_offset=-1
                    )
        return node

    def nodes(self) -> list[signal_service_pb2.ClusterNode]:
        if self.membership is None:
            return [self.announcement()]
        return self.membership.nodes()

    def describe(self) -> signal_service_pb2.ClusterMap:
        """The cluster map as this node knows it."""
        kafka = self.settings.kafka
        return signal_service_pb2.ClusterMap(
            nodes=self.nodes(),
            galaxies=[
                signal_service_pb2.GalaxyPartitioning(
                    galaxy=g.name,
                    key_type=g.key.type.value,
                    key_length=g.codec.length,
                    partitions=g.partitions,
                    changelog_topic=topic_name(kafka, TopicKind.CHANGELOG, g.name),
                )
                for g in self.registry
            ],
            answered_by=self.address,
        )
