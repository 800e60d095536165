"""Topic names and topic creation.

Every galaxy has three topics (names from ``KafkaSettings``, these the defaults):
``gss.<galaxy>.changelog`` (signal records), ``gss.<galaxy>.available`` (availability events)
and ``gss.<galaxy>.dlq`` (dead letters), each with the galaxy's partition count, so an entity
is on the same partition number in all three.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from contract.errors import UnavailableError
from contract.kafka import admin_config
from contract.registry import GalaxySpec, Registry

if TYPE_CHECKING:
    from contract.settings import KafkaSettings

log = structlog.get_logger(__name__)

# Default name templates of each galaxy's topics ({galaxy} is replaced by the galaxy's name);
# KafkaSettings can rename them, and a subscriber takes the same setting.
CHANGELOG_TOPIC = "gss.{galaxy}.changelog"
AVAILABLE_TOPIC = "gss.{galaxy}.available"
DLQ_TOPIC = "gss.{galaxy}.dlq"


def galaxy_topic(template: str, galaxy: str) -> str:
    """The topic a name template gives for ``galaxy``: ``gss.{galaxy}.changelog`` -> ``gss.pins.changelog``."""
    return template.format(galaxy=galaxy)


class TopicKind(StrEnum):
    CHANGELOG = "changelog"
    AVAILABLE = "available"
    DLQ = "dlq"


def topic_name(kafka: KafkaSettings, kind: TopicKind, galaxy: str) -> str:
    template = {
        TopicKind.CHANGELOG: kafka.changelog_topic,
        TopicKind.AVAILABLE: kafka.available_topic,
        TopicKind.DLQ: kafka.dlq_topic,
    }[kind]
    return kafka.topic(template, galaxy)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    galaxy: str
    kind: TopicKind
    partitions: int


def galaxy_topics(kafka: KafkaSettings, galaxies: Iterable[GalaxySpec]) -> list[TopicSpec]:
    """The three topics of each galaxy."""
    return [
        TopicSpec(topic_name(kafka, kind, galaxy.name), galaxy.name, kind, galaxy.partitions)
        for galaxy in galaxies
        for kind in TopicKind
    ]


def ensure_topics(
    kafka: KafkaSettings,
    registry: Registry,
    *,
    admin: AdminClient | None = None,
    timeout_seconds: float = 10.0,
) -> list[str]:
    """Create the galaxies' topics that do not exist yet; returns the names created.

    An existing topic with a different partition count is left alone and logged: changing it
    would move entities between partitions.
    """
    admin = admin or AdminClient(admin_config(kafka))
    wanted = galaxy_topics(kafka, registry)
    try:
        existing = admin.list_topics(timeout=timeout_seconds).topics
    except KafkaException as exc:
        raise UnavailableError(f"cannot list topics on {kafka.bootstrap_servers}: {exc}") from exc
    for spec in wanted:
        meta = existing.get(spec.name)
        if meta is not None and meta.error is None and len(meta.partitions) != spec.partitions:
            log.warning(
                "topic_partition_count_differs",
                topic=spec.name,
                galaxy=spec.galaxy,
                partitions=len(meta.partitions),
                expected_partitions=spec.partitions,
            )
    missing = [s for s in wanted if s.name not in existing or existing[s.name].error is not None]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, kafka.replication_factor) for s in missing],
        request_timeout=timeout_seconds,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise UnavailableError(f"cannot create topic {name}: {exc}") from exc
    if created:
        log.info("topics_created", topics=sorted(created))
    return created


def topic_ids(
    admin: AdminClient, names: Iterable[str], timeout_seconds: float = 5.0
) -> dict[str, str]:
    """The broker's id of each existing topic. A topic that was deleted and created again (or a
    local broker that restarted) has a new id; absent topics are left out."""
    futures = admin.describe_topics(TopicCollection(list(names)), request_timeout=timeout_seconds)
    ids = {}
    for name, future in futures.items():
        try:
            ids[name] = str(future.result().topic_id)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise
    return ids


def position_of(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed or delivered record."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("the Kafka message has no position (not consumed or delivered)")
    return topic, partition, offset
