"""Which replica publishes the outbox of each changelog partition: elected by Kafka.

Among the replicas of a partition exactly one publishes its availability events (and dead
letters); the others keep theirs until the publisher has sent them, then drop them. The
election is Kafka's consumer-group protocol, nothing written here: the replicas sharing a
replica set (the partitions ``p`` with the same ``p % cluster.nodes``) are the members of one
group, ``<cluster.publisher_group>-<p % nodes>``, subscribed to the galaxies' changelogs; the
member the group assigns a partition publishes it. The members never read through these
consumers (every assigned partition is paused at once): the ingester reads the changelog.

The publisher commits to its group, per partition, the changelog offset before which the
broker acknowledged every event (gss.kafka.publisher: the oldest offset still in its outbox).
The other replicas read those commits and delete outbox entries below them; a replica that
takes a partition over (its publisher died, so the group moved the partition after the
session timeout) starts after the committed offset and sends again what lies beyond it —
events the old publisher sent but had not committed are sent twice, with the same event ids
(consumers dedupe on them: docs/events.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from contract.kafka import consumer_config
from contract.settings import ClusterSettings, KafkaSettings

log = structlog.get_logger(__name__)
# How often the other replicas' committed offsets are read (and pending commits sent).
_SYNC_SECONDS = 1.0

Partition = tuple[str, int]  # (changelog topic, partition)


class PublisherElection:
    """Which hosted changelog partitions this node publishes; ``start()``, ``stop()``.

    ``hosted``: the changelog partitions this node hosts, per changelog topic.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        cluster: ClusterSettings,
        ordinal: int,
        hosted: Mapping[str, Sequence[int]],
    ) -> None:
        self.kafka = kafka
        self.cluster = cluster
        self.ordinal = ordinal
        self.hosted = {(t, p) for t, parts in hosted.items() for p in parts}
        # The replica sets this node belongs to: residues of p % nodes it hosts.
        self.groups = sorted({p % cluster.nodes for _, p in self.hosted})
        self._lock = threading.Lock()
        self._owned: dict[int, set[Partition]] = {g: set() for g in self.groups}
        self._committed: dict[Partition, int] = {}
        self._to_commit: dict[Partition, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.generation = 0  # grows whenever the owned set changes

    def start(self) -> PublisherElection:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gss-election", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_seconds: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            self._thread = None

    # -- what the publisher asks -----------------------------------------------------------------

    def owns(self, topic: str, partition: int) -> bool:
        """Whether this node publishes the events of ``partition`` of changelog ``topic``."""
        with self._lock:
            return (topic, partition) in self._owned.get(partition % self.cluster.nodes, ())

    def owned(self) -> tuple[int, set[Partition]]:
        """(generation, the partitions this node publishes), read together."""
        with self._lock:
            return self.generation, set().union(*self._owned.values())

    def committed(self, topic: str, partition: int) -> int:
        """The offset before which the partition's publisher has sent every event (0: none)."""
        with self._lock:
            return self._committed.get((topic, partition), 0)

    def published(self, offsets: Mapping[Partition, int]) -> None:
        """The broker acknowledged the events of these changelog offsets and of every offset
        before them, per partition: commit the offset after each, for the other replicas."""
        with self._lock:
            for key, offset in offsets.items():
                if offset + 1 > self._to_commit.get(key, self._committed.get(key, 0)):
                    self._to_commit[key] = offset + 1

    # -- the thread ------------------------------------------------------------------------------

    def _consumer(self, group: int) -> Consumer:
        consumer = Consumer(
            consumer_config(
                self.kafka,
                f"gss-outbox-election-{self.ordinal}",
                f"{self.cluster.publisher_group}-{group}",
            )
        )

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            c.pause(partitions)  # never read here: the ingester reads the changelog
            self._set_owned(group, partitions)

        def on_revoke(_c: Consumer, _partitions: list[TopicPartition]) -> None:
            self._set_owned(group, [])

        topics = sorted({t for t, _ in self.hosted})
        consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        return consumer

    def _set_owned(self, group: int, partitions: Iterable[TopicPartition]) -> None:
        owned = {
            (tp.topic, tp.partition)
            for tp in partitions
            if tp.partition % self.cluster.nodes == group
            and (tp.topic, tp.partition) in self.hosted
        }
        with self._lock:
            if owned == self._owned[group]:
                return
            self._owned[group] = owned
            self.generation += 1
        log.info(
            "outbox_publisher_elected",
            replica_set=group,
            changelog_partitions=sorted(f"{t}:{p}" for t, p in owned),
        )

    def _run(self) -> None:
        consumers: dict[int, Consumer] = {}
        next_sync = 0.0
        while not self._stop.is_set():
            try:
                for group in self.groups:
                    if group not in consumers:
                        consumers[group] = self._consumer(group)
                for consumer in consumers.values():
                    consumer.poll(0.05)  # serves the group protocol's callbacks
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + _SYNC_SECONDS
                    self._sync(consumers)
            except KafkaException as exc:
                log.warning("outbox_election_failed", error=str(exc), action="rejoining in 1 s")
                for consumer in consumers.values():
                    consumer.close()
                consumers.clear()
                with self._lock:
                    self._owned = {g: set() for g in self.groups}
                    self.generation += 1
                self._stop.wait(1.0)
        self._sync(consumers)  # the last acknowledged offsets, for whoever takes over
        for consumer in consumers.values():
            consumer.close()

    def _sync(self, consumers: Mapping[int, Consumer]) -> None:
        """Send pending commits of owned partitions; read everyone's committed offsets."""
        with self._lock:
            pending, self._to_commit = self._to_commit, {}
        for group, consumer in consumers.items():
            mine = [
                TopicPartition(t, p, offset)
                for (t, p), offset in pending.items()
                if p % self.cluster.nodes == group
            ]
            if mine:
                try:
                    consumer.commit(offsets=mine, asynchronous=False)
                except KafkaException as exc:
                    log.info("outbox_commit_failed", error=str(exc))
            asked = [
                TopicPartition(t, p) for t, p in self.hosted if p % self.cluster.nodes == group
            ]
            try:
                answers = consumer.committed(asked, timeout=2.0)
            except KafkaException as exc:
                log.info("outbox_committed_unavailable", error=str(exc))
                continue
            with self._lock:
                for tp in answers:
                    if tp.offset >= 0 and tp.offset > self._committed.get(
                        (tp.topic, tp.partition), 0
                    ):
                        self._committed[(tp.topic, tp.partition)] = tp.offset
                for key, offset in pending.items():
                    if offset > self._committed.get(key, 0):
                        self._committed[key] = offset
