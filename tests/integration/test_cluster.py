"""A cluster of real `gss serve` processes on one real broker (docs/cluster.md): the
partitioner, the map, routing, read after write/event, readiness and a node killed mid-load."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.cluster import AsyncClusterClient, ClusterClient
from clients.lookup import EntityResult, GssClient, make_record
from contract.kafka import producer_config
from contract.partitions import hosted_partitions, partition_of
from contract.registry import Registry
from contract.settings import KafkaSettings, load_settings
from contract.v1 import signals_pb2
from gss.cli import main
from gss.local.broker import LocalBroker
from gss.local.cluster import LocalCluster
from tests.kafka_support import Collector, kafka_overrides, produce

pytestmark = pytest.mark.integration
SIGNAL = "save_count_1h"


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


def _kafka(broker: LocalBroker) -> KafkaSettings:
    return load_settings(kafka=kafka_overrides(broker.bootstrap_servers)).kafka


def _cluster(
    tmp_path: Path, kafka: KafkaSettings, nodes: int, replicas: int, **env: str
) -> LocalCluster:
    assert kafka.bootstrap_servers
    return LocalCluster(
        tmp_path,
        kafka.bootstrap_servers,
        nodes=nodes,
        replicas=replicas,
        env={
            "GSS_KAFKA__CHANGELOG_TOPIC": kafka.changelog_topic,
            "GSS_KAFKA__AVAILABLE_TOPIC": kafka.available_topic,
            "GSS_KAFKA__DLQ_TOPIC": kafka.dlq_topic,
            "GSS_CLUSTER__ANNOUNCE_TOPIC": kafka.changelog_topic.replace("{galaxy}", "cluster"),
            "GSS_CLUSTER__PUBLISHER_GROUP": kafka.changelog_topic.replace("{galaxy}", "outbox"),
            "GSS_CLUSTER__ANNOUNCE_INTERVAL_SECONDS": "0.3",
            "GSS_CLUSTER__NODE_TIMEOUT_SECONDS": "2",
            **env,
        },
    )


def _wait_map(client: ClusterClient, nodes: int, timeout: float = 30.0) -> None:
    """Until the map shows ``nodes`` live, serving nodes (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster = client.refresh()
        if sum(n.live and n.serving for n in cluster.nodes) == nodes:
            return
        time.sleep(0.2)
    raise AssertionError(f"the map never showed {nodes} serving nodes: {client.cluster_map}")


def _wait_node_map(address: str, nodes: int, timeout: float = 30.0) -> None:
    """Until the node at ``address`` itself describes ``nodes`` live, serving nodes (bounded)."""
    deadline = time.monotonic() + timeout
    with GssClient(address, timeout=5) as node:
        cluster = None
        while time.monotonic() < deadline:
            try:
                cluster = node.cluster_map()
            except grpc.RpcError:
                cluster = None  # starting, or busy: ask again
            if cluster is not None and sum(n.live and n.serving for n in cluster.nodes) == nodes:
                return
            time.sleep(0.2)
    raise AssertionError(f"{address} never described {nodes} serving nodes: {cluster}")


def _count(n: int) -> signals_pb2.WindowedCount:
    return signals_pb2.WindowedCount(count=n)


def test_partitioner_matches_where_kafka_producers_put_keys(broker: LocalBroker) -> None:
    """partition_of agrees with confluent-kafka's murmur2 partitioner (what every GSS producer
    uses, and what Java clients do) for 300 keys of both galaxy kinds on a 7-partition topic."""
    kafka = _kafka(broker)
    topic = kafka.changelog_topic.replace("{galaxy}", "partitioner")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 7, 1)])[topic].result(10)
    keys = [i.to_bytes(8, "big") for i in range(150)] + [
        random.Random(i).randbytes(16) for i in range(150)
    ]
    placed: dict[bytes, int] = {}
    producer = Producer(producer_config(kafka, "test-partitioner", delivery_timeout_seconds=10))

    def report(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key()] = msg.partition()

    for key in keys:
        producer.produce(topic, key=key, value=b"x", on_delivery=report)
    assert producer.flush(30) == 0
    assert placed == {key: partition_of(key, 7) for key in keys}


def test_map_routing_refusal_and_read_after_write(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """3 nodes, 2 replicas: every node hosts exactly its partitions and says so in the map; the
    routing client writes and reads 300 entities in request order; a node asked for an entity
    it does not host refuses, naming the partition and the nodes that host it; a read with a
    write's positions (or an event's) always finds the value: 0 misses."""
    kafka = _kafka(broker)
    with _cluster(tmp_path, kafka, 3, 2) as cluster:
        client = ClusterClient(cluster.addresses[1], timeout=5)
        _wait_map(client, 3)
        # Each node learns the others from its own view of the membership: wait for all three.
        for address in cluster.addresses:
            _wait_node_map(address, 3)
        status = CliRunner().invoke(
            main, ["cluster", "status", "--target", cluster.addresses[2], "--json"]
        )
        assert status.exit_code == 0, status.output
        assert sorted(n["ordinal"] for n in json.loads(status.output)["nodes"]) == [0, 1, 2]
        partitions = {g.galaxy: g.partitions for g in client.cluster_map.galaxies}
        by_ordinal = {n.ordinal: n for n in client.cluster_map.nodes}
        for ordinal, node in by_ordinal.items():
            assert sorted(p.partition for p in node.partitions if p.galaxy == "pins") == (
                hosted_partitions(ordinal, partitions["pins"], 3, 2)
            )

        ids = list(range(1, 301))
        random.Random(3).shuffle(ids)
        written = client.put([make_record("pins", i, f"{SIGNAL}@1", _count(i)) for i in ids])
        assert len(written.positions) == len(ids)
        # Read your writes: with the write's positions, every value is there at once.
        rows = client.get("pins", ids, [SIGNAL], min_positions=list(written.positions))
        assert [r.entity_id for r in rows] == [str(i) for i in ids]
        assert [r.signals[SIGNAL].value.count for r in rows] == ids  # type: ignore[union-attr]

        # The asyncio client routes the same way.
        async def read_async() -> list[EntityResult]:
            async with AsyncClusterClient(cluster.addresses[2], timeout=5) as routed:
                return await routed.get(
                    "pins", ids, [SIGNAL], min_positions=list(written.positions)
                )

        assert [r.signals[SIGNAL].value for r in asyncio.run(read_async())] == [
            r.signals[SIGNAL].value for r in rows
        ]

        # A node asked for an entity it does not host refuses and says where it lives.
        node0 = by_ordinal[0]
        foreign = next(
            i
            for i in ids
            if partition_of(i.to_bytes(8, "big"), 4)
            not in {p.partition for p in node0.partitions if p.galaxy == "pins"}
        )
        with GssClient(node0.address) as direct, pytest.raises(grpc.RpcError) as refused:
            direct.get("pins", [foreign], [SIGNAL])
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        partition = partition_of(foreign.to_bytes(8, "big"), 4)
        assert f"partition {partition} of galaxy pins" in (refused.value.details() or "")
        for owner in (partition % 3, (partition + 1) % 3):
            assert by_ordinal[owner].address in (refused.value.details() or "")

        # Read after event: every announced value is found at the event's position.
        collector = Collector(kafka, registry, "pins")
        try:
            events = collector.wait_for(
                lambda got: {w.event.entity_id for w in got} >= {str(i) for i in ids}
            )
        finally:
            collector.close()
        assert {w.event.entity_id for w in events} >= {str(i) for i in ids}
        unique = {w.event.event_id: w.event for w in events}
        misses = 0
        for event in unique.values():
            (row,) = client.get("pins", [event.entity_id], [SIGNAL], min_positions=[event.position])
            cell = row.signals[SIGNAL]
            if (
                not cell.found
                or cell.envelope is None
                or (cell.envelope.source.offset < event.position.offset)
            ):
                misses += 1
        assert misses == 0
        client.close()


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="gss.v1.SignalService"), timeout=5
        )
    return int(reply.status)


def test_a_replica_is_not_serving_until_it_caught_up(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """A node started over 20,000 changelog records (ingesting 20 a batch) reports NOT_SERVING
    while it catches up, SERVING once it has, and then answers every one of its keys."""
    kafka = _kafka(broker)
    ids = list(range(1, 20_001))
    produce(
        kafka,
        registry,
        (make_record("pins", i, f"{SIGNAL}@1", _count(i)) for i in ids),
        galaxy="pins",
    )
    with _cluster(tmp_path, kafka, 2, 1, GSS_KAFKA__INGEST_BATCH_MAX_RECORDS="20") as cluster:
        statuses = [_health(address) for address in cluster.addresses]
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
            _health(a) != health_pb2.HealthCheckResponse.SERVING for a in cluster.addresses
        ):
            time.sleep(0.2)
        assert all(_health(a) == health_pb2.HealthCheckResponse.SERVING for a in cluster.addresses)
        with ClusterClient(cluster.addresses, timeout=10) as client:
            rows = client.get("pins", ids, [SIGNAL])
            _wait_map(client, 2)
            # The map shows each partition applied to its end, by the one node hosting it.
            pins = [p for n in client.cluster_map.nodes for p in n.partitions if p.galaxy == "pins"]
        assert [r.signals[SIGNAL].value.count for r in rows] == ids  # type: ignore[union-attr]
        assert sorted(p.partition for p in pins) == [0, 1, 2, 3]
        assert sum(p.next_offset for p in pins) == len(ids)
        assert all(p.caught_up and p.lag_records == 0 for p in pins)


def test_kill_9_of_a_node_under_load(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """3 nodes, 2 replicas; a reader and a writer go through the routing client while one node
    is killed with SIGKILL. No call fails after the first deadline past the kill; every
    acknowledged write is readable afterwards; every entity's last value is announced, and
    each event id names one changelog position (so dedupe by id keeps every value once)."""
    kafka = _kafka(broker)
    deadline_seconds = 2.0
    with _cluster(tmp_path, kafka, 3, 2) as cluster:
        client = ClusterClient(cluster.addresses, timeout=deadline_seconds, avoid_seconds=5)
        _wait_map(client, 3)
        collector = Collector(kafka, registry, "pins")
        stop = threading.Event()
        failures: list[tuple[float, str]] = []
        reads = 0
        acked: dict[int, int] = {}  # entity -> highest acknowledged count
        last: dict[int, tuple[int, int]] = {}  # entity -> changelog position of that write
        positions: list[Any] = []

        def writer() -> None:
            count = 0
            while not stop.is_set() and count < 400:
                count += 1
                batch = [make_record("pins", i, f"{SIGNAL}@1", _count(count)) for i in range(1, 41)]
                try:
                    response = client.put(batch)
                except Exception as exc:
                    failures.append((time.monotonic(), f"put: {exc}"))
                    continue
                positions.extend(response.positions)
                for i, position in zip(range(1, 41), response.positions, strict=True):
                    acked[i] = count
                    last[i] = (position.partition, position.offset)
                time.sleep(0.02)

        def reader() -> None:
            nonlocal reads
            while not stop.is_set():
                try:
                    rows = client.get("pins", range(1, 41), [SIGNAL])
                    assert len(rows) == 40
                    reads += 1
                except Exception as exc:
                    failures.append((time.monotonic(), f"get: {exc}"))

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        victim = cluster.nodes[1]
        killed_at = time.monotonic()
        victim.kill()
        time.sleep(4.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        late = [f for at, f in failures if at > killed_at + deadline_seconds]
        assert late == [], late[:3]
        assert reads > 20
        assert acked, "the writer never got an acknowledgement"

        # Every acknowledged write is readable (or a newer value of the entity is).
        rows = client.get("pins", sorted(acked), [SIGNAL], min_positions=positions, timeout=20)
        assert all(
            r.signals[SIGNAL].value.count >= acked[int(r.entity_id)]  # type: ignore[union-attr]
            for r in rows
        )
        # Every entity's last value has its event. (Not every write does: one older than the
        # entity's value before it, or repeating it, does not: docs/events.md.)
        wanted = set(last.values())
        events = collector.wait_for(
            lambda got: (
                wanted <= {(w.event.position.partition, w.event.position.offset) for w in got}
            )
        )
        collector.close()
        announced = {(w.event.position.partition, w.event.position.offset) for w in events}
        assert wanted - announced == set()
        by_id: dict[str, set[tuple[int, int]]] = {}
        for w in events:
            by_id.setdefault(w.event.event_id, set()).add(
                (w.event.position.partition, w.event.position.offset)
            )
        assert all(len(spots) == 1 for spots in by_id.values())
        client.close()


def _publisher(
    client: ClusterClient,
    topic: str,
    partition: int,
    *,
    other_than: int = -1,
    timeout: float = 40.0,
) -> int:
    """The ordinal of the one live node (not ``other_than``) publishing ``partition`` (waits,
    bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster = client.refresh()
        publishing = [
            n.ordinal
            for n in cluster.nodes
            if n.live and n.ordinal != other_than
            for p in n.partitions
            if p.galaxy == "pins" and p.partition == partition and p.publishing
        ]
        if len(publishing) == 1:
            return publishing[0]
        time.sleep(0.2)
    raise AssertionError(f"no single publisher of {topic}:{partition}: {client.cluster_map}")


def test_killing_the_publishing_replica_repeatedly(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """2 nodes, 2 replicas: exactly one publishes each partition. Killed three times (and
    restarted), the publisher hands over through the consumer group; every entity's last
    acknowledged value is announced, and each entity's events (after dedupe by event id) come
    in the order its values were written: (event time, changelog position) never goes back.

    A put whose answer was lost (the node killed under it) may still have been written, and
    its retry too: every event counts, its value read from the event itself (inline)."""
    kafka = _kafka(broker)
    topic = kafka.topic(kafka.changelog_topic, "pins")
    entities = range(1, 21)
    partition = partition_of((1).to_bytes(8, "big"), 4)
    with _cluster(tmp_path, kafka, 2, 2) as cluster:
        client = ClusterClient(cluster.addresses, timeout=5)
        _wait_map(client, 2)
        collector = Collector(kafka, registry, "pins")
        stop = threading.Event()
        last: dict[str, int] = {}  # entity -> its last acknowledged count
        attempted = 0

        def writer() -> None:
            nonlocal attempted
            count = 0
            while not stop.is_set() and count < 2000:
                count += 1
                attempted = count
                records = [make_record("pins", i, f"{SIGNAL}@1", _count(count)) for i in entities]
                try:
                    client.put(records, timeout=10)
                except Exception:
                    continue  # not acknowledged: maybe written, maybe not
                for i in entities:
                    last[str(i)] = count
                time.sleep(0.05)

        def announced(events: list[Any]) -> set[tuple[str, int]]:
            return {(w.event.entity_id, _announced_count(w)) for w in events}

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for _ in range(3):
                victim = _publisher(client, topic, partition)
                cluster.nodes[victim].kill()
                _publisher(client, topic, partition, other_than=victim)
                cluster.nodes[victim].start()
                _wait_map(client, 2)
        finally:
            stop.set()
            thread.join(30)
        assert last, "the writer never got an acknowledgement"
        events = collector.wait_for(lambda got: announced(got) >= set(last.items()), timeout=60)
        collector.close()
        client.close()
    assert announced(events) >= set(last.items())
    seen: set[str] = set()
    order: dict[str, list[tuple[int, int, int]]] = {}  # entity -> (event time, offset, count)
    for w in sorted(events, key=lambda w: (w.partition, w.offset)):
        if w.event.event_id in seen:
            continue
        seen.add(w.event.event_id)
        order.setdefault(w.event.entity_id, []).append(
            (
                w.event.event_time.ToMicroseconds(),
                w.event.position.offset,
                _announced_count(w),
            )
        )
    assert order.keys() == last.keys()
    for entity, seq in order.items():
        backwards = [(a, b) for a, b in itertools.pairwise(seq) if b <= a]
        assert not backwards, f"entity {entity}: events went back: {backwards[:3]}"
        counts = [count for _, _, count in seq]
        assert counts == sorted(set(counts)), f"entity {entity}: {counts}"
        assert last[entity] <= counts[-1] <= attempted


def _announced_count(w: Any) -> int:
    """The count an event of the test's signal announces (its inline value)."""
    assert w.event.HasField("value"), "the test's signal is announced with its value"
    return signals_pb2.WindowedCount.FromString(w.event.value.value).count


def test_a_wiped_replica_seeds_from_a_backup_under_load(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """2 nodes, 2 replicas, each backing its store up every second. One node is killed and its
    store wiped while writes go on; started again, it restores the latest backup, reports
    NOT_SERVING while it catches up from the backup's offsets, then serves values equal to its
    peer's for 100% of the keys."""
    from gss.cluster.backup import backup_root, latest_backup

    kafka = _kafka(broker)
    backups = tmp_path / "backups"
    ids = list(range(1, 3001))
    with _cluster(
        tmp_path / "nodes",
        kafka,
        2,
        2,
        GSS_CLUSTER__BACKUP_ROOT=str(backups),
        GSS_CLUSTER__BACKUP_INTERVAL_SECONDS="1",
    ) as cluster:
        client = ClusterClient(cluster.addresses, timeout=10)
        _wait_map(client, 2)
        client.put([make_record("pins", i, f"{SIGNAL}@1", _count(1)) for i in ids])
        root = backup_root(load_settings(), str(backups))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and latest_backup(root, 1) is None:
            time.sleep(0.2)
        time.sleep(1.5)  # a backup taken after the first writes were applied
        assert latest_backup(root, 1) is not None

        wiped = cluster.nodes[1]
        wiped.kill()
        for path in sorted(wiped.data.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        for n in range(2, 8):  # load while it is gone: the backup is behind it all
            client.put([make_record("pins", i, f"{SIGNAL}@1", _count(n)) for i in ids])
        wiped.env["GSS_KAFKA__INGEST_BATCH_MAX_RECORDS"] = "20"
        wiped.env["GSS_CLUSTER__BACKUP_INTERVAL_SECONDS"] = "3600"
        wiped.start()
        assert wiped.address is not None
        first = _health(wiped.address)
        assert any("store_backup_restored" in line for line in wiped.log_lines)
        assert first == health_pb2.HealthCheckResponse.NOT_SERVING
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            _health(wiped.address) != health_pb2.HealthCheckResponse.SERVING
        ):
            time.sleep(0.2)
        assert _health(wiped.address) == health_pb2.HealthCheckResponse.SERVING
        peer = cluster.nodes[0].address
        assert peer is not None
        with GssClient(wiped.address) as seeded, GssClient(peer) as other:
            mine = seeded.get("pins", ids, [SIGNAL])
            theirs = other.get("pins", ids, [SIGNAL])
        assert [r.signals[SIGNAL].value for r in mine] == [r.signals[SIGNAL].value for r in theirs]
        assert {r.signals[SIGNAL].value.count for r in mine} == {7}  # type: ignore[union-attr]
        client.close()
