"""How nodes learn about each other: announcements on a Kafka topic (docs/cluster.md, "The map").

Every node produces its own :class:`gss.v1.ClusterNode` (address, ordinal, hosted partitions
with applied positions and lag, serving or not) to ``cluster.announce_topic`` every
``announce_interval_seconds``, keyed by its address, and reads the whole topic (explicit
assignment, from the beginning, no consumer group) to keep the latest announcement of every
node. A node stopping in order writes a tombstone for its key; a node not heard from for
``node_timeout_seconds`` is shown with ``live = false``. The topic is compacted, so it holds
about one record per node.

This is a directory for routing, not an agreement: nothing here decides who owns what (the
layout does, from the settings) and a stale entry costs a client one failed call and a
failover (clients/cluster.py), never a wrong answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from contract.kafka import admin_config, consume_available, consumer_config, producer_config
from contract.settings import ClusterSettings, KafkaSettings
from contract.v1 import signal_service_pb2

log = structlog.get_logger(__name__)

Announcement = Callable[[], signal_service_pb2.ClusterNode]


def ensure_announce_topic(kafka: KafkaSettings, topic: str, timeout_seconds: float = 5.0) -> None:
    """Create the (compacted, one-partition) announcement topic if it is missing."""
    admin = AdminClient(admin_config(kafka, "gss-cluster-admin"))
    existing = admin.list_topics(timeout=timeout_seconds).topics
    if topic in existing and existing[topic].error is None:
        return
    futures = admin.create_topics(
        [NewTopic(topic, 1, kafka.replication_factor, config={"cleanup.policy": "compact"})],
        request_timeout=timeout_seconds,
    )
    for future in futures.values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise


class Membership:
    """Announces this node and follows the others' announcements. ``start()``, ``stop()``."""

    def __init__(
        self, kafka: KafkaSettings, cluster: ClusterSettings, announcement: Announcement
    ) -> None:
        self.kafka = kafka
        self.cluster = cluster
        self.announcement = announcement
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # address -> (announcement, when it was read: monotonic seconds)
        self._peers: dict[str, tuple[signal_service_pb2.ClusterNode, float]] = {}
        self._own_address: str | None = None

    def start(self) -> Membership:
        for target, name in (
            (self._announce, "gss-cluster-announce"),
            (self._follow, "gss-cluster-follow"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop following and announcing; a node stopping in order leaves the map at once."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_seconds)
        self._threads = []

    def nodes(self) -> list[signal_service_pb2.ClusterNode]:
        """Every node's latest announcement (this node's own fresh), ``live`` set by age."""
        own = self.announcement()
        now = time.monotonic()
        out = {own.address: own}
        with self._lock:
            peers = list(self._peers.items())
        for address, (node, seen) in peers:
            if address == own.address:
                continue
            copy = signal_service_pb2.ClusterNode()
            copy.CopyFrom(node)
            copy.live = now - seen <= self.cluster.node_timeout_seconds
            if not copy.live:
                copy.serving = False
            out[address] = copy
        return sorted(out.values(), key=lambda n: (n.ordinal, n.address))

    # -- the threads ---------------------------------------------------------------------------

    def _announce(self) -> None:
        producer: Producer | None = None
        address: str | None = None
        while not self._stop.is_set():
            try:
                if producer is None:
                    if self.kafka.create_topics:
                        ensure_announce_topic(self.kafka, self.cluster.announce_topic)
                    producer = Producer(
                        producer_config(
                            self.kafka,
                            "gss-cluster-announce",
                            delivery_timeout_seconds=max(1.0, self.cluster.node_timeout_seconds),
                        )
                    )
                node = self.announcement()
                address = node.address
                producer.produce(
                    self.cluster.announce_topic,
                    key=address.encode(),
                    value=node.SerializeToString(),
                )
                producer.poll(0)
            except (KafkaException, BufferError) as exc:
                log.warning("cluster_announce_failed", error=str(exc), action="retrying")
                producer = None
            self._stop.wait(self.cluster.announce_interval_seconds)
        if producer is not None and address is not None:
            # Leave the map now rather than after node_timeout_seconds.
            producer.produce(self.cluster.announce_topic, key=address.encode(), value=None)
            producer.flush(2.0)

    def _follow(self) -> None:
        consumer: Consumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    if self.kafka.create_topics:
                        ensure_announce_topic(self.kafka, self.cluster.announce_topic)
                    consumer = Consumer(
                        consumer_config(self.kafka, "gss-cluster-follow", "gss-cluster-follow")
                    )
                    consumer.assign(
                        [TopicPartition(self.cluster.announce_topic, 0, OFFSET_BEGINNING)]
                    )
                for msg in consume_available(consumer, 500, 0.2):
                    if msg.error() is not None:
                        continue
                    _kind, stamp_ms = msg.timestamp()
                    self._read(msg.key(), msg.value(), stamp_ms)
            except KafkaException as exc:
                log.warning("cluster_follow_failed", error=str(exc), action="retrying in 1 s")
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _read(self, key: bytes | None, value: bytes | None, stamp_ms: int) -> None:
        if key is None:
            return
        address = key.decode(errors="replace")
        if value is None:
            with self._lock:
                if self._peers.pop(address, None) is not None:
                    log.info("cluster_node_left", node_address=address)
            return
        node = signal_service_pb2.ClusterNode()
        try:
            node.ParseFromString(value)
        except Exception:  # a record GSS did not write: not a node
            log.warning("cluster_announcement_unreadable", node_address=address)
            return
        # Aged by the record's own timestamp: an announcement read back at start-up from a node
        # that died long ago is not taken for a live node.
        age = max(0.0, time.time() - stamp_ms / 1000) if stamp_ms > 0 else 0.0
        with self._lock:
            known = address in self._peers
            self._peers[address] = (node, time.monotonic() - age)
        if not known:
            log.info("cluster_node_seen", node_address=address, ordinal=node.ordinal)
