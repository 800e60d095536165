"""Kafka clients as GSS uses them: the one place client options are chosen.

``KafkaSettings.security`` (TLS and SASL) becomes librdkafka options here
(:func:`security_config`) for every librdkafka client, and Java client properties
(:func:`java_security_properties`) for the compute job's KafkaSource and KafkaSink.
Everything in ``KafkaSettings.client_config`` is passed through unchanged and wins over the
defaults here and over ``security``, except the options the guarantees depend on
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


_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def security_config(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka's options for ``kafka.security``: security.protocol, sasl.*, ssl.*."""
    sec = kafka.security
    config = {"security.protocol": sec.protocol.lower()}
    if sec.sasl_mechanism is not None:
        config["sasl.mechanism"] = sec.sasl_mechanism
    if sec.sasl_username is not None:
        config["sasl.username"] = sec.sasl_username
    if sec.sasl_password is not None:
        config["sasl.password"] = sec.sasl_password
    if sec.ca_file is not None:
        config["ssl.ca.location"] = str(sec.ca_file)
    if sec.cert_file is not None:
        config["ssl.certificate.location"] = str(sec.cert_file)
    if sec.key_file is not None:
        config["ssl.key.location"] = str(sec.key_file)
    return config


def java_security_properties(kafka: KafkaSettings) -> dict[str, str]:
    """The same security as Java Kafka client properties (Flink's KafkaSource and KafkaSink):
    SASL through a JAAS line, PEM trust and key stores (key and certificate read here, since
    Java wants them inline when they are separate files)."""
    sec = kafka.security
    props: dict[str, str] = {"security.protocol": sec.protocol}
    if sec.sasl_mechanism is not None:
        props["sasl.mechanism"] = sec.sasl_mechanism
        if sec.sasl_username is not None:

            def quoted(text: str) -> str:
                return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

            props["sasl.jaas.config"] = (
                f"{_JAAS_MODULES[sec.sasl_mechanism]} required "
                f"username={quoted(sec.sasl_username)} password={quoted(sec.sasl_password or '')};"
            )
    if sec.ca_file is not None:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = str(sec.ca_file)
    if sec.cert_file is not None and sec.key_file is not None:
        props["ssl.keystore.type"] = "PEM"
        props["ssl.keystore.certificate.chain"] = sec.cert_file.read_text()
        props["ssl.keystore.key"] = sec.key_file.read_text()
    return props


def _base(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    if not kafka.bootstrap_servers:
        raise ValueError(
            "no Kafka broker configured: set kafka.bootstrap_servers (GSS_KAFKA__BOOTSTRAP_SERVERS)"
        )
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id,
        "logger": LIBRDKAFKA_LOGGER,
        **security_config(kafka),
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
