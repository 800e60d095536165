"""The Kafka path end to end against a real broker (tansu): changelog -> RocksDB -> outbox ->
availability events, PutSignals through the changelog, WatchSignals, the subscriber, dead letters."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition
from conftest import server_settings
from helpers import dhash_record, image_id
from kafka_support import Collector, kafka_overrides, produce

from clients.lookup import GssClient, make_record
from clients.subscriber import Subscriber
from contract import deadletter
from contract.registry import Registry
from contract.v1 import envelope_pb2, signal_service_pb2, signals_pb2
from contract.v1.signal_service_pb2_grpc import SignalServiceStub
from gss.cli import main
from gss.kafka.meta import OUTBOX_PREFIX, outbox_key
from gss.local.broker import LocalBroker
from gss.server import GssServer, start_server

pytestmark = pytest.mark.integration

APPLIED = signal_service_pb2.WRITE_OUTCOME_APPLIED
ACCEPTED = signal_service_pb2.WRITE_OUTCOME_ACCEPTED


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


@pytest.fixture
def server(tmp_path: Path, broker: LocalBroker) -> Iterator[GssServer]:
    """A GSS server in broker mode, with topics of its own on the shared broker."""
    running = start_server(
        server_settings(tmp_path, kafka=kafka_overrides(broker.bootstrap_servers))
    )
    try:
        yield running
    finally:
        running.stop(grace=0.5)


def test_put_signals_goes_through_the_changelog(server: GssServer, registry: Registry) -> None:
    """With a broker, PutSignals appends to the changelog: wait_readable returns once the
    values are readable (APPLIED); without it the answer is ACCEPTED, and the values follow."""
    with GssClient(server.address, timeout=30) as client:
        first = [dhash_record(i, i * 3) for i in range(20)]
        assert client.put(first, wait_readable=True) == [APPLIED] * 20
        rows = client.get("images", [image_id(i) for i in range(20)], ["dhash"])
        assert [r.signals["dhash"].value.hash for r in rows] == [i * 3 for i in range(20)]  # type: ignore[union-attr]
        envelope = rows[0].signals["dhash"].envelope
        assert envelope is not None
        assert envelope.source.topic.endswith(".images.changelog")
        later = [dhash_record(100 + i, 7) for i in range(5)]
        assert client.put(later) == [ACCEPTED] * 5
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(
                r.signals["dhash"].found
                for r in client.get("images", [image_id(100 + i) for i in range(5)], ["dhash"])
            ):
                break
            time.sleep(0.05)
        else:
            pytest.fail("ACCEPTED records did not become readable")
        older = dhash_record(0, 999, seconds=-60)
        assert client.put([older], wait_readable=True) == [
            signal_service_pb2.WRITE_OUTCOME_SKIPPED_NOT_NEWER
        ]


def test_changelog_records_become_events_a_subscriber_receives(
    server: GssServer, registry: Registry
) -> None:
    """Records produced straight to the changelog (as Flink does) are materialised, and a
    consumer-group subscriber gets one typed event per value and fetches the values in batches."""
    kafka = server.settings.kafka
    records = [dhash_record(i, 1000 + i) for i in range(50)]
    records.append(
        make_record("images", image_id(7), "embedding@1", signals_pb2.Embedding(values=[0.6, 0.8]))
    )
    produce(kafka, registry, records)
    with (
        Subscriber(
            kafka.bootstrap_servers or "",
            "images",
            "test-downstream",
            topic=kafka.topic(kafka.available_topic, "images"),
        ) as sub,
        GssClient(server.address) as client,
    ):
        seen: dict[str, object] = {}
        for batch in sub.batches(timeout=0.5, idle_timeout=60):
            values = sub.fetch_values(client, batch)
            for event, value in zip(batch, values, strict=True):
                assert value.found
                if event.value is not None:
                    assert event.value == value.value
                seen[f"{event.entity_id}/{event.signal}"] = event
            if len(seen) == len(records):
                break
    assert len(seen) == len(records)
    embedding = seen[f"{image_id(7)}/embedding@1"]
    assert embedding.value is None  # type: ignore[attr-defined] # embedding never rides inline
    dhash = seen[f"{image_id(3)}/dhash@1"]
    assert dhash.value.hash == 1003  # type: ignore[attr-defined]
    assert dhash.event.position.topic == kafka.topic(kafka.changelog_topic, "images")  # type: ignore[attr-defined]


def test_garbage_is_dead_lettered_and_the_partition_flows(
    server: GssServer, registry: Registry
) -> None:
    """Undecodable and invalid records between good ones (same key, so the same partition)
    go to the DLQ as gss.v1.DeadLetter values (reason, error, source position, the record as
    written); the good records after them are applied."""
    kafka = server.settings.kafka
    key = bytes.fromhex(image_id(1))
    wrong = dhash_record(1, 5)
    wrong.signal.name = "nope"
    produce(
        kafka,
        registry,
        [
            dhash_record(1, 1, seconds=1),
            (key, b"\x00\xffnot protobuf"),
            (key, wrong.SerializeToString()),
            dhash_record(1, 2, seconds=2),
        ],
    )
    with GssClient(server.address) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cell = client.get("images", [image_id(1)], ["dhash"])[0].signals["dhash"]
            if cell.found and cell.value.hash == 2:  # type: ignore[union-attr]
                break
            time.sleep(0.05)
        else:
            pytest.fail("the record after the garbage was not applied")
    dlq = kafka.topic(kafka.dlq_topic, "images")
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "dlq-check"})
    consumer.assign(
        [TopicPartition(dlq, p, -2) for p in range(registry.galaxy("images").partitions)]
    )
    letters = []
    deadline = time.monotonic() + 30
    try:
        while len(letters) < 2 and time.monotonic() < deadline:
            for msg in consumer.consume(10, 0.5):
                if msg.error() is None:
                    letters.append(deadletter.parse(msg.value()))
                    assert msg.key() == key
    finally:
        consumer.close()
    garbage, unknown = sorted(letters, key=lambda d: d.input_offset)
    assert (garbage.reason, unknown.reason) == (
        deadletter.Reason.UNDECODABLE,
        deadletter.Reason.UNKNOWN_SIGNAL,
    )
    assert garbage.input == b"\x00\xffnot protobuf"
    assert unknown.input == wrong.SerializeToString()
    assert "not a gss.v1.SignalRecord" in garbage.error
    assert "nope" in unknown.error
    changelog = kafka.topic(kafka.changelog_topic, "images")
    assert {(d.input_topic, d.input_key, d.producer) for d in letters} == {
        (changelog, key, deadletter.INGESTER)
    }
    assert garbage.input_partition == unknown.input_partition
    assert unknown.input_offset == garbage.input_offset + 1
    assert (unknown.entity_id, unknown.signal.name) == (image_id(1), "nope")


def _watch(
    address: str, request: signal_service_pb2.WatchSignalsRequest, count: int
) -> list[signal_service_pb2.WatchSignalsResponse]:
    with grpc.insecure_channel(address) as channel:
        call = SignalServiceStub(channel).WatchSignals(request, timeout=60)
        out = []
        for response in call:
            out.append(response)
            if len(out) == count:
                call.cancel()
                break
        return out


def test_watch_signals_filters_resumes_and_starts_live(
    server: GssServer, registry: Registry
) -> None:
    """WatchSignals streams only the requested signals, resumes after a position it handed
    out, and by default starts at the live end (old events are not replayed as new)."""
    with GssClient(server.address, timeout=30) as client:
        colors = signals_pb2.DominantColors(colors=[signals_pb2.WeightedColor(red=1, weight=1.0)])
        records = [dhash_record(i, i) for i in range(6)]
        records += [
            make_record("images", image_id(i), "dominant_colors@1", colors) for i in range(6)
        ]
        client.put(records, wait_readable=True)
        only_dhash = signal_service_pb2.WatchSignalsRequest(
            galaxy="images",
            signals=[envelope_pb2.SignalRef(name="dhash")],
            from_beginning=True,
        )
        first = _watch(server.address, only_dhash, 6)
        assert {r.event.signal.name for r in first} == {"dhash"}
        assert {r.event.entity_id for r in first} == {image_id(i) for i in range(6)}
        resumed_request = signal_service_pb2.WatchSignalsRequest(
            galaxy="images", signals=only_dhash.signals
        )
        # Six events over four partitions: some partition has two or more. Resume after that
        # partition's first: its later events follow; partitions not listed start live.
        by_partition: dict[int, list[signal_service_pb2.WatchSignalsResponse]] = {}
        for r in first:
            by_partition.setdefault(r.position.partition, []).append(r)
        busiest = max(by_partition.values(), key=len)
        assert len(busiest) >= 2
        resumed_request.resume_after.append(
            signal_service_pb2.WatchPosition(
                partition=busiest[0].position.partition, offset=busiest[0].position.offset
            )
        )
        again = _watch(server.address, resumed_request, len(busiest) - 1)
        assert [r.event.event_id for r in again] == [r.event.event_id for r in busiest[1:]]
        live = signal_service_pb2.WatchSignalsRequest(galaxy="images")
        with grpc.insecure_channel(server.address) as channel:
            call = SignalServiceStub(channel).WatchSignals(live, timeout=60)
            time.sleep(1.0)  # let the stream assign its partitions before the new write
            client.put([dhash_record(500, 1)], wait_readable=True)
            response = next(iter(call))
            call.cancel()
        assert response.event.entity_id == image_id(500)
    with grpc.insecure_channel(server.address) as channel:
        bad = SignalServiceStub(channel).WatchSignals(
            signal_service_pb2.WatchSignalsRequest(galaxy="nope"), timeout=10
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(bad))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_signals_without_a_broker_is_unavailable(gss_server: GssServer) -> None:
    """A server without a broker answers WatchSignals UNAVAILABLE, naming the setting."""
    with grpc.insecure_channel(gss_server.address) as channel:
        call = SignalServiceStub(channel).WatchSignals(
            signal_service_pb2.WatchSignalsRequest(galaxy="images"), timeout=10
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(call))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "bootstrap_servers" in (caught.value.details() or "")


def test_slow_and_absent_subscribers_do_not_hold_back_ingestion(
    server: GssServer, registry: Registry
) -> None:
    """With a group member that stopped polling and a WatchSignals stream nobody reads, a
    burst of records is still all applied, served, and published (the outbox drains)."""
    kafka = server.settings.kafka
    stalled = Subscriber(
        kafka.bootstrap_servers or "",
        "images",
        "stalled",
        topic=kafka.topic(kafka.available_topic, "images"),
    )
    stalled.poll(0.1)
    channel = grpc.insecure_channel(server.address)
    unread = SignalServiceStub(channel).WatchSignals(
        signal_service_pb2.WatchSignalsRequest(galaxy="images", from_beginning=True), timeout=120
    )
    try:
        count = 3000
        produce(kafka, registry, [dhash_record(10_000 + i, i) for i in range(count)])
        assert server.events is not None
        deadline = time.monotonic() + 60
        while server.events.ingester.stats.applied < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.events.ingester.stats.applied == count
        assert server.events.publisher.wait_empty(60)
        with GssClient(server.address) as client:
            rows = client.get("images", [image_id(10_000 + i) for i in range(count)], ["dhash"])
        assert all(r.signals["dhash"].found for r in rows)
    finally:
        unread.cancel()
        channel.close()
        stalled.close()


def test_gss_watch_prints_events(server: GssServer, registry: Registry) -> None:
    """`gss watch --galaxy images --signal dhash --from-beginning` prints one JSON line per
    event, through Kafka and through a server's WatchSignals (--target)."""
    with GssClient(server.address, timeout=30) as client:
        client.put([dhash_record(i, i) for i in range(3)], wait_readable=True)
    kafka = server.settings.kafka
    env = {
        "GSS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
        "GSS_KAFKA__AVAILABLE_TOPIC": kafka.available_topic,
        "GSS_LOG_LEVEL": "WARNING",
    }
    args = [
        "watch",
        "--galaxy",
        "images",
        "--signal",
        "dhash",
        "--from-beginning",
        "--max-events",
        "3",
    ]
    for extra in ([], ["--target", server.address]):
        result = CliRunner().invoke(main, args + extra, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        assert len(lines) == 3
        assert {line["entity_id"] for line in lines} == {image_id(i) for i in range(3)}
        assert all(line["signal"]["name"] == "dhash" for line in lines)


def test_an_unreadable_outbox_entry_is_dropped_not_blocking(
    server: GssServer, registry: Registry
) -> None:
    """A damaged outbox entry is logged and removed; the events behind it are still published."""
    assert server.events is not None
    server.store.apply([], meta={outbox_key(time.time_ns()): b"\x07 not an outbox entry"})
    server.events.outbox.wake()
    collector = Collector(server.settings.kafka, registry)
    try:
        with GssClient(server.address, timeout=30) as client:
            client.put([dhash_record(77, 1)], wait_readable=True)
        events = collector.wait_for(
            lambda ev: image_id(77) in {e.event.entity_id for e in ev}, timeout=30
        )
        assert image_id(77) in {e.event.entity_id for e in events}
        deadline = time.monotonic() + 30
        while list(server.store.scan_meta(OUTBOX_PREFIX)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list(server.store.scan_meta(OUTBOX_PREFIX))
    finally:
        collector.close()
