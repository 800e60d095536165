"""Kafka clients as GSS uses them: the one place client options are chosen.

Everything in ``KafkaSettings.client_config`` (security.protocol, sasl.*, ssl.*, ...) is passed
through unchanged and wins over the defaults here, except the options the guarantees depend on
(idempotence, acks, and the murmur2 partitioner Java clients and Flink's KafkaSink use, so an
entity's records land on one partition whoever produced them), which are forced: every
producer of GSS — the changelog writer, the outbox publisher, the content generator — takes
:func:`producer_config`. :func:`consume_available` is how GSS's consumers (the ingester, the
event watch, the subscriber) take records without adding a poll timeout to latency.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, Message

if TYPE_CHECKING:
    from contract.settings import KafkaSettings

# librdkafka's own log lines go through stdlib logging, which contract.logs routes with the rest.
LIBRDKAFKA_LOGGER = logging.getLogger("gss.kafka.librdkafka")


def _base(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    if not kafka.bootstrap_servers:
        raise ValueError(
            "no Kafka broker configured: set kafka.bootstrap_servers (GSS_KAFKA__BOOTSTRAP_SERVERS)"
        )
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id,
        "logger": LIBRDKAFKA_LOGGER,
        **kafka.client_config,
    }


def producer_config(
    kafka: KafkaSettings, client_id: str, *, delivery_timeout_seconds: float
) -> dict[str, Any]:
    """An idempotent, acks=all producer that partitions keys like Java clients (murmur2).

    ``delivery_timeout_seconds`` bounds how long a record may wait for the broker before its
    delivery report says it failed (librdkafka's message.timeout.ms).
    """
    config = {
        "linger.ms": 5,
        "compression.type": "lz4",
        # Topics are created with each galaxy's partition count, never implicitly by a write.
        "allow.auto.create.topics": False,
        **_base(kafka, client_id),
    }
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "message.timeout.ms": max(1, int(delivery_timeout_seconds * 1000)),
        }
    )
    return config


def consumer_config(kafka: KafkaSettings, client_id: str, group_id: str) -> dict[str, Any]:
    """A consumer; offsets are managed by the caller (the ingester keeps them in RocksDB)."""
    return {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # The local broker answers a waiting fetch only when this runs out, not when a record
        # arrives (Kafka answers at once), so it bounds end-to-end latency there.
        "fetch.wait.max.ms": 20,
        # A group member gets its first records about 3 s after subscribing instead of about 23 s
        # (measured against the local broker with librdkafka's defaults; docs/events.md).
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        **_base(kafka, client_id),
    }


def admin_config(kafka: KafkaSettings, client_id: str = "gss-admin") -> dict[str, Any]:
    return _base(kafka, client_id)


def consume_available(
    consumer: Consumer, max_records: int, timeout_seconds: float
) -> list[Message]:
    """Up to ``max_records`` records: whatever is already fetched, or else the first to arrive
    within ``timeout_seconds`` plus whatever came with it. (``Consumer.consume`` itself waits
    the whole timeout unless ``max_records`` are ready, which adds its timeout to latency.)"""
    msgs = consumer.consume(max_records, 0)
    if msgs:
        return msgs
    msgs = consumer.consume(1, timeout_seconds)
    if msgs and max_records > 1:
        msgs.extend(consumer.consume(max_records - 1, 0))
    return msgs
