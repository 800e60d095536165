"""Cluster benchmark (docs/cluster.md): routing, scale-out on this machine, failover, seeding.

1. Throughput: 100-key lookups from 8 client threads for ``SECONDS`` each, through
   :class:`clients.cluster.ClusterClient` against one node and against a local 3-node,
   2-replica cluster, and through the plain :class:`clients.lookup.GssClient` against the one
   node (the baseline without routing). Every node is a real `gss serve` process on one broker.
   This machine has 2 cores shared by the servers *and* the client threads, so a cluster
   cannot gain here: the figure shows what routing and scatter/gather cost, not what more
   machines give (each node would bring its own cores there).
2. Routing overhead per call: sequential 100-key and 1-key calls, ClusterClient against
   GssClient on the same node (mean µs per call), and the routing work alone in-process
   (murmur2 and grouping of 100 keys).
3. Failover: a client reads keys hosted by a node that is then killed with SIGKILL; the time
   from the kill to the first successful call of those keys, and the slowest call around it.
4. Seeding: ``GSS_BENCH_CLUSTER_RECORDS`` (default 1,000,000) changelog records; seconds
   until a fresh node reports SERVING by replaying the whole changelog, against a node seeded
   from a backup (RocksDB checkpoint) of the first one's store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from confluent_kafka import Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.cluster import ClusterClient
from clients.lookup import GssClient, make_record
from contract.kafka import producer_config
from contract.partitions import partition_of
from contract.registry import load_registry
from contract.settings import load_settings
from contract.v1 import signals_pb2
from gss.cluster.backup import backup_root, take_backup
from gss.local.broker import LocalBroker
from gss.local.cluster import LocalCluster
from store.db import SignalStore

SECONDS = 5.0
THREADS = 8
KEYS = 20_000
SIGNAL = "save_count_1h"


def _env(prefix: str) -> dict[str, str]:
    return {
        "GSS_KAFKA__CHANGELOG_TOPIC": prefix + ".{galaxy}.changelog",
        "GSS_KAFKA__AVAILABLE_TOPIC": prefix + ".{galaxy}.available",
        "GSS_KAFKA__DLQ_TOPIC": prefix + ".{galaxy}.dlq",
        "GSS_CLUSTER__ANNOUNCE_TOPIC": prefix + ".cluster",
        "GSS_CLUSTER__PUBLISHER_GROUP": prefix + ".outbox",
        "GSS_CLUSTER__ANNOUNCE_INTERVAL_SECONDS": "0.5",
        "GSS_CLUSTER__NODE_TIMEOUT_SECONDS": "2",
    }


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="gss.v1.SignalService"), timeout=2
            )
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _wait_serving(addresses: list[str], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_serving(a) for a in addresses):
            return
        time.sleep(0.1)
    raise TimeoutError(f"not SERVING within {timeout} s: {addresses}")


def _load(client: ClusterClient) -> None:
    ids = list(range(1, KEYS + 1))
    for start in range(0, KEYS, 5000):
        client.put(
            [
                make_record("pins", i, f"{SIGNAL}@1", signals_pb2.WindowedCount(count=i))
                for i in ids[start : start + 5000]
            ],
            wait_readable=False,
            timeout=60,
        )
    # Readable everywhere before measuring.
    client.get("pins", ids, [SIGNAL], timeout=60)
    time.sleep(2.0)


def _throughput(get: Callable[[list[int]], object]) -> float:
    """Keys a second of 100-key lookups from THREADS threads for SECONDS."""
    stop = time.monotonic() + SECONDS
    counts = [0] * THREADS

    def run(t: int) -> None:
        n = t * 7919
        while time.monotonic() < stop:
            n = (n + 100) % (KEYS - 100)
            get(list(range(n + 1, n + 101)))
            counts[t] += 100

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / SECONDS


def _per_call_us(get: Callable[[list[int]], object], keys: int, rounds: int = 400) -> float:
    ids = list(range(1, keys + 1))
    get(ids)
    start = time.perf_counter()
    for _ in range(rounds):
        get(ids)
    return (time.perf_counter() - start) / rounds * 1e6


def _routing_only_us() -> float:
    keys = [i.to_bytes(8, "big") for i in range(1, 101)]
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(partition_of(key, 4), []).append(i)
    return (time.perf_counter() - start) / rounds * 1e6


def _failover(cluster: LocalCluster, client: ClusterClient) -> dict[str, float]:
    victim = cluster.nodes[0]
    hosted = {
        p.partition
        for n in client.cluster_map.nodes
        if n.address == victim.address
        for p in n.partitions
        if p.galaxy == "pins"
    }
    # Keys whose first replica in this client's order is the victim.
    keys = [i for i in range(1, KEYS + 1) if partition_of(i.to_bytes(8, "big"), 4) in hosted][:50]
    latencies: list[tuple[float, float, bool]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                client.get("pins", keys, [SIGNAL], timeout=2.0)
                ok = True
            except Exception:
                ok = False
            latencies.append((began, time.monotonic(), ok))

    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(1.0)
    killed = time.monotonic()
    victim.kill()
    time.sleep(3.0)
    stop.set()
    thread.join(10)
    after = [(b, e, ok) for b, e, ok in latencies if e > killed]
    first_ok = min(e for b, e, ok in after if ok)
    return {
        "failover_seconds": round(first_ok - killed, 4),
        "failover_slowest_call_seconds": round(max(e - b for b, e, _ in after), 4),
        "failover_failed_calls": sum(1 for _, _, ok in after if not ok),
        "failover_calls_after_kill": len(after),
    }


def _produce(bootstrap: str, topic: str, records: int) -> float:
    settings = load_settings(kafka={"bootstrap_servers": bootstrap})
    producer = Producer(
        producer_config(settings.kafka, "bench-cluster", delivery_timeout_seconds=120)
    )
    start = time.perf_counter()
    for i in range(records):
        record = make_record("pins", i, f"{SIGNAL}@1", signals_pb2.WindowedCount(count=i))
        while True:
            try:
                producer.produce(topic, key=i.to_bytes(8, "big"), value=record.SerializeToString())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(300) == 0
    return time.perf_counter() - start


def _seed(broker: LocalBroker, work: Path, records: int) -> dict[str, Any]:
    env = _env("seed")
    topic = env["GSS_KAFKA__CHANGELOG_TOPIC"].replace("{galaxy}", "pins")
    registry = load_registry(load_settings().registry_path)
    LocalCluster(
        work / "create", broker.bootstrap_servers, nodes=1, replicas=1, env=env
    ).start().stop()
    produced = _produce(broker.bootstrap_servers, topic, records)

    replay = LocalCluster(work / "replay", broker.bootstrap_servers, nodes=1, replicas=1, env=env)
    start = time.monotonic()
    replay.start()
    _wait_serving(replay.addresses)
    replay_seconds = time.monotonic() - start
    replay.stop()

    backups = work / "backups"
    root = backup_root(load_settings(), str(backups))
    started = time.monotonic()
    with SignalStore(replay.nodes[0].data, list(registry.galaxies), sync_writes=False) as store:
        backup = take_backup(store, root, 0, list(registry.galaxies))
    backup_seconds = time.monotonic() - started

    seeded = LocalCluster(
        work / "seeded",
        broker.bootstrap_servers,
        nodes=1,
        replicas=1,
        env={**env, "GSS_CLUSTER__BACKUP_ROOT": str(backups)},
    )
    start = time.monotonic()
    seeded.start()
    _wait_serving(seeded.addresses)
    seed_seconds = time.monotonic() - start
    seeded.stop()
    return {
        "seed_records": records,
        "seed_produce_seconds": round(produced, 2),
        "seed_full_replay_seconds": round(replay_seconds, 2),
        "seed_backup_take_seconds": round(backup_seconds, 2),
        "seed_backup_bytes": backup.size_bytes,
        "seed_from_backup_seconds": round(seed_seconds, 2),
        "seed_replay_over_backup": round(replay_seconds / seed_seconds, 2),
    }


def run(report_dir: Path) -> dict[str, Any]:
    records = int(os.environ.get("GSS_BENCH_CLUSTER_RECORDS", "1000000"))
    work = Path(tempfile.mkdtemp(prefix="gss-bench-cluster-"))
    result: dict[str, Any] = {"threads": THREADS, "keys": KEYS, "seconds_per_run": SECONDS}
    try:
        with LocalBroker() as broker:
            single = LocalCluster(
                work / "one", broker.bootstrap_servers, nodes=1, replicas=1, env=_env("one")
            ).start()
            three = LocalCluster(
                work / "three", broker.bootstrap_servers, nodes=3, replicas=2, env=_env("three")
            ).start()
            try:
                routed_one = ClusterClient(single.addresses, timeout=30)
                routed_three = ClusterClient(three.addresses, timeout=30)
                _wait_serving(single.addresses + three.addresses)
                _load(routed_one)
                _load(routed_three)
                direct = GssClient(single.addresses[0], timeout=30)

                def direct_get(ids: list[int]) -> object:
                    return direct.get("pins", ids, [SIGNAL])

                def one_get(ids: list[int]) -> object:
                    return routed_one.get("pins", ids, [SIGNAL])

                def three_get(ids: list[int]) -> object:
                    return routed_three.get("pins", ids, [SIGNAL])

                direct_kps = _throughput(direct_get)
                one_kps = _throughput(one_get)
                three_kps = _throughput(three_get)
                direct_100 = _per_call_us(direct_get, 100)
                routed_100 = _per_call_us(one_get, 100)
                direct_1 = _per_call_us(direct_get, 1)
                routed_1 = _per_call_us(one_get, 1)
                cluster_100 = _per_call_us(three_get, 100)
                result.update(
                    {
                        "direct_one_node_keys_per_s": round(direct_kps),
                        "routed_one_node_keys_per_s": round(one_kps),
                        "routed_three_nodes_keys_per_s": round(three_kps),
                        "routed_over_direct_one_node": round(one_kps / direct_kps, 3),
                        "three_nodes_over_one_node": round(three_kps / one_kps, 3),
                        "call_us_100_direct": round(direct_100),
                        "call_us_100_routed": round(routed_100),
                        "routing_overhead_us_100": round(routed_100 - direct_100),
                        "call_us_1_direct": round(direct_1),
                        "call_us_1_routed": round(routed_1),
                        "routing_overhead_us_1": round(routed_1 - direct_1),
                        "call_us_100_three_nodes_scatter": round(cluster_100),
                        "routing_cpu_us_100_keys": round(_routing_only_us(), 1),
                    }
                )
                result.update(_failover(three, routed_three))
                direct.close()
                routed_one.close()
                routed_three.close()
            finally:
                three.stop()
                single.stop()
            result.update(_seed(broker, work, records))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
