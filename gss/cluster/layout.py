"""Which changelog partitions a node hosts, from ``cluster.nodes``, ``cluster.replicas`` and the
node's ordinal (docs/cluster.md, "The partition model")."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from contract.errors import InvalidArgumentError
from contract.partitions import hosted_partitions, replica_nodes
from contract.registry import Registry
from contract.settings import ClusterSettings

_ORDINAL = re.compile(r"-(\d+)$")


def ordinal_from_hostname(hostname: str) -> int | None:
    """The ordinal of a StatefulSet pod's host name (``gss-3`` -> 3), None if it has none."""
    match = _ORDINAL.search(hostname.split(".", 1)[0])
    return int(match[1]) if match else None


@dataclass(frozen=True, slots=True)
class NodeLayout:
    """This node's place in the cluster: its ordinal among ``nodes``, ``replicas`` per partition."""

    ordinal: int
    nodes: int
    replicas: int

    @classmethod
    def from_settings(cls, cluster: ClusterSettings, hostname: str | None = None) -> NodeLayout:
        """The layout the settings give; the ordinal from the host name when not set."""
        if cluster.replicas > cluster.nodes:
            raise InvalidArgumentError(
                f"cluster.replicas is {cluster.replicas} but there are only {cluster.nodes} "
                "nodes: a partition cannot have more replicas than the cluster has nodes"
            )
        ordinal = cluster.ordinal
        if ordinal is None and cluster.nodes > 1:
            name = hostname or socket.gethostname()
            ordinal = ordinal_from_hostname(name)
            if ordinal is None:
                raise InvalidArgumentError(
                    f"cluster.nodes is {cluster.nodes} but this node has no ordinal: set "
                    f"cluster.ordinal (GSS_CLUSTER__ORDINAL) or run it as a StatefulSet pod "
                    f"named <name>-<ordinal> (the host name is {name!r})"
                )
        ordinal = ordinal or 0
        if ordinal >= cluster.nodes:
            raise InvalidArgumentError(
                f"cluster.ordinal {ordinal} is outside the cluster of {cluster.nodes} nodes "
                f"(ordinals 0..{cluster.nodes - 1}): raise cluster.nodes first"
            )
        return cls(ordinal, cluster.nodes, cluster.replicas)

    @property
    def hosts_everything(self) -> bool:
        return self.replicas >= self.nodes

    def hosted(self, registry: Registry) -> dict[str, list[int]]:
        """The partitions this node hosts, per galaxy name."""
        return {
            galaxy.name: hosted_partitions(
                self.ordinal, galaxy.partitions, self.nodes, self.replicas
            )
            for galaxy in registry
        }

    def hosts(self, partition: int) -> bool:
        return (self.ordinal - partition) % self.nodes < self.replicas

    def owners(self, partition: int) -> list[int]:
        """The ordinals of the nodes hosting ``partition``."""
        return replica_nodes(partition, self.nodes, self.replicas)
