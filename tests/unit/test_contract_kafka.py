"""librdkafka configuration from settings: guarantees forced, security settings passed through."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.kafka import (
    admin_config,
    consumer_config,
    java_security_properties,
    producer_config,
    security_config,
)
from contract.registry import Registry
from contract.settings import KafkaSecuritySettings, KafkaSettings
from contract.topics import TopicKind, galaxy_topics, topic_name

SECURE = KafkaSettings(
    bootstrap_servers="kafka-0:9093",
    client_config={
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "acks": "1",
        "partitioner": "consistent_random",
        "linger.ms": "20",
    },
)


def test_producers_keep_their_guarantees_whatever_is_passed_through() -> None:
    """TLS/SASL options reach librdkafka; acks, idempotence and the murmur2 partitioner
    cannot be overridden (ordering and no-loss depend on them); tuning options can."""
    config = producer_config(SECURE, "test", delivery_timeout_seconds=2.5)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random"
    assert config["message.timeout.ms"] == 2500
    assert config["linger.ms"] == "20"


def test_consumers_join_groups_quickly_and_never_auto_commit() -> None:
    """Consumers use the short session/heartbeat that make groups usable, and commit nothing
    by themselves (the ingester's offsets live in RocksDB)."""
    config = consumer_config(SECURE, "test", "group")
    assert config["session.timeout.ms"] == 6000
    assert config["heartbeat.interval.ms"] == 500
    assert config["enable.auto.commit"] is False
    assert config["security.protocol"] == "SASL_SSL"


def test_no_broker_is_a_clear_error() -> None:
    """Without bootstrap servers the error says which setting to set."""
    with pytest.raises(ValueError, match="GSS_KAFKA__BOOTSTRAP_SERVERS"):
        producer_config(KafkaSettings(), "test", delivery_timeout_seconds=1)


def test_topics_follow_the_templates_and_galaxy_partitions(registry: Registry) -> None:
    """Each galaxy has changelog, available and dlq topics with its partition count."""
    kafka = KafkaSettings(changelog_topic="prod.{galaxy}.log")
    specs = {s.name: s for s in galaxy_topics(kafka, registry)}
    assert topic_name(kafka, TopicKind.CHANGELOG, "images") == "prod.images.log"
    assert specs["gss.pins.dlq"].partitions == registry.galaxy("pins").partitions
    assert len(specs) == 3 * len(registry.galaxies)


def test_strimzi_topics_match_the_registry(registry: Registry) -> None:
    """deploy/kafka declares every galaxy's three topics with the galaxy's partition count."""
    manifest = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "topics.yaml"
    declared = {
        doc["spec"]["topicName"]: doc["spec"]["partitions"]
        for doc in yaml.safe_load_all(manifest.read_text())
        if doc and doc.get("kind") == "KafkaTopic"
    }
    wanted = {spec.name: spec.partitions for spec in galaxy_topics(KafkaSettings(), registry)}
    assert declared == wanted


def test_security_settings_reach_librdkafka_and_java_clients(tmp_path: Path) -> None:
    """kafka.security becomes librdkafka options for every librdkafka client (through the
    shared base config) and Java properties for the compute job; client_config still wins."""
    (tmp_path / "client.crt").write_text("CERT")
    (tmp_path / "client.key").write_text("KEY")
    kafka = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security=KafkaSecuritySettings(
            protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="gss",
            sasl_password='p"w',
            ca_file=tmp_path / "ca.pem",
            cert_file=tmp_path / "client.crt",
            key_file=tmp_path / "client.key",
        ),
        client_config={"ssl.endpoint.identification.algorithm": "none"},
    )
    for config in (
        consumer_config(kafka, "test", "group"),
        producer_config(kafka, "test", delivery_timeout_seconds=1),
        admin_config(kafka),
    ):
        assert config["security.protocol"] == "sasl_ssl"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert (config["sasl.username"], config["sasl.password"]) == ("gss", 'p"w')
        assert config["ssl.ca.location"] == str(tmp_path / "ca.pem")
        assert config["ssl.certificate.location"] == str(tmp_path / "client.crt")
        assert config["ssl.endpoint.identification.algorithm"] == "none"
    java = java_security_properties(kafka)
    assert java["security.protocol"] == "SASL_SSL"
    assert java["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="gss" password="p\\"w";'
    )
    assert (java["ssl.truststore.type"], java["ssl.truststore.location"]) == (
        "PEM",
        str(tmp_path / "ca.pem"),
    )
    assert (java["ssl.keystore.certificate.chain"], java["ssl.keystore.key"]) == ("CERT", "KEY")
    assert security_config(KafkaSettings()) == {"security.protocol": "plaintext"}
