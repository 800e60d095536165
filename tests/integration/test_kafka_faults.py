"""Faults against the real broker: a broker outage (a restarted, empty tansu) and GSS killed
with kill -9 mid-stream. Nothing applied may be lost, applied twice, or left unannounced."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import server_settings
from helpers import dhash_record, image_id
from kafka_support import Collector, kafka_overrides, produce

from clients.lookup import GssClient
from contract.errors import UnavailableError
from contract.registry import Registry
from contract.settings import load_settings
from contract.v1 import signal_service_pb2
from gss.kafka.events_runtime import EventsRuntime
from gss.kafka.ingester import stored_offsets
from gss.kafka.meta import OUTBOX_PREFIX
from gss.local.broker import LocalBroker
from gss.server import start_server
from gss.writes import to_writes
from store import records
from store.db import SignalStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


def test_broker_outage_delays_events_and_loses_none(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """The broker dies (and comes back empty) while values keep being applied and PutSignals
    keeps retrying: afterwards every applied value has its event delivered, none lost."""
    settings = load_settings(kafka=kafka_overrides(broker.bootstrap_servers))
    with SignalStore(tmp_path / "store", list(registry.galaxies)) as store:
        runtime = EventsRuntime(settings, registry, store).start()
        collector = Collector(settings.kafka, registry)
        try:
            before = [dhash_record(i, i) for i in range(200)]
            runtime.writer.put(before, wait_readable=True)
            seen = collector.wait_for(lambda ev: len({e.event.entity_id for e in ev}) >= 200)
            assert len({e.event.entity_id for e in seen}) >= 200  # wait_for returns on timeout too
            broker.stop()
            # Values applied while the broker is down (the store's direct write path, with events).
            during = [dhash_record(1000 + i, i) for i in range(300)]
            runtime.outbox.apply_with_events(to_writes(registry, during))
            assert runtime.outbox.depth >= 300
            # PutSignals during the outage fails with UNAVAILABLE; its caller retries.
            retried = [dhash_record(2000 + i, i) for i in range(50)]
            put_done = threading.Event()
            refused: list[str] = []

            def keep_putting() -> None:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    try:
                        runtime.writer.put(retried, wait_readable=True, timeout_seconds=10)
                        put_done.set()
                        return
                    except UnavailableError as exc:
                        refused.append(str(exc))
                        time.sleep(0.2)

            putter = threading.Thread(target=keep_putting, daemon=True)
            putter.start()
            time.sleep(2.0)
            assert runtime.outbox.depth >= 300  # nothing could be published, nothing was dropped
            broker.start()  # the same port, and empty: the topics are created again by GSS
            putter.join(100)
            assert put_done.is_set(), "PutSignals never succeeded after the broker came back"
            assert refused, "PutSignals was never refused while the broker was down"
            wanted = {image_id(1000 + i) for i in range(300)} | {
                image_id(2000 + i) for i in range(50)
            }
            events = collector.wait_for(
                lambda ev: wanted <= {e.event.entity_id for e in ev}, timeout=90
            )
            missing = wanted - {e.event.entity_id for e in events}
            assert not missing, f"{len(missing)} applied values were never announced"
            assert runtime.publisher.wait_empty(30)
            assert runtime.publisher.failures >= 1
            values = store.get_many(
                "images", [bytes.fromhex(e) + b"dhash\x00\x00\x00\x00\x01" for e in wanted]
            )
            assert all(v is not None for v in values)
        finally:
            collector.close()
            runtime.stop()


def _ingest_process(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gss", "ingest"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("ab"),
    )


def _log_events(log_path: Path, name: str) -> list[dict[str, object]]:
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                out.append(entry)
    return out


def test_kill_9_mid_stream_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, broker: LocalBroker, registry: Registry
) -> None:
    """`gss ingest` is killed with SIGKILL while records stream in, then restarted: every
    acknowledged record ends up stored (from its own changelog position), the restarted
    ingester reads exactly the records after the committed offsets (none twice, none skipped),
    and every applied value's event is published."""
    # A publisher that keeps few events in flight lags the ingester, so the kill also finds
    # events waiting in the outbox.
    overrides = kafka_overrides(broker.bootstrap_servers, outbox_max_in_flight=50)
    settings = load_settings(kafka=overrides)
    store_path = tmp_path / "store"
    env = {
        **os.environ,
        "GSS_STORE__PATH": str(store_path),
        "GSS_LOG_FORMAT": "json",
        **{f"GSS_KAFKA__{k.upper()}": str(v) for k, v in overrides.items()},
    }
    log_path = tmp_path / "ingest.log"
    total = 12_000
    batches = [
        [dhash_record(i, i) for i in range(start, start + 1000)] for start in range(0, total, 1000)
    ]
    acked: list[tuple[int, int]] = produce(settings.kafka, registry, batches[0])
    collector = Collector(settings.kafka, registry)
    process = _ingest_process(env, log_path)
    try:
        producer_done = threading.Event()

        def keep_producing() -> None:
            for batch in batches[1:]:
                acked.extend(produce(settings.kafka, registry, batch))
            producer_done.set()

        threading.Thread(target=keep_producing, daemon=True).start()
        collector.wait_for(lambda ev: len(ev) >= 2500, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert producer_done.wait(60)
        with SignalStore(store_path, list(registry.galaxies)) as store:
            committed = stored_offsets(
                store, settings.kafka.topic(settings.kafka.changelog_topic, "images")
            )
            pending_events = sum(1 for _ in store.scan_meta(OUTBOX_PREFIX))
        assert 0 < sum(committed.values()) < total, "the kill did not land mid-stream"
        process = _ingest_process(env, log_path)
        wanted = set(acked)
        events = collector.wait_for(
            lambda ev: (
                wanted <= {(e.event.position.partition, e.event.position.offset) for e in ev}
            ),
            timeout=120,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        collector.close()
    announced = {(e.event.position.partition, e.event.position.offset) for e in events}
    assert not wanted - announced, f"{len(wanted - announced)} applied values were never announced"
    (stopped,) = _log_events(log_path, "ingester_stopped")
    assert stopped["consumed"] == total - sum(committed.values())
    assert stopped["applied"] == total - sum(committed.values())
    assert len(acked) == total
    with SignalStore(store_path, list(registry.galaxies)) as store:
        stored = dict(store.scan("images"))
    assert len(stored) == total
    positions = {
        (r.envelope.source.partition, r.envelope.source.offset)
        for r in map(records.StoredRecord.decode, stored.values())
    }
    assert positions == wanted
    print(
        f"killed with {sum(committed.values())} records committed and {pending_events} events in the outbox"
    )


def test_a_broker_absent_at_start_delays_ingestion_not_serving(
    tmp_path: Path, registry: Registry
) -> None:
    """GSS starts and serves its store while the configured broker is down; once the broker
    is up, PutSignals and the changelog flow without a restart of GSS."""
    port = _free_port()
    settings = server_settings(tmp_path, kafka=kafka_overrides(f"127.0.0.1:{port}"))
    server = start_server(settings)
    try:
        with GssClient(server.address, timeout=30) as client:
            assert not client.get("images", [image_id(1)], ["dhash"])[0].signals["dhash"].found
            with LocalBroker(port=port):
                deadline = time.monotonic() + 60
                outcomes: list[int] = []
                codes = set()
                while time.monotonic() < deadline and not outcomes:
                    try:
                        outcomes = client.put([dhash_record(1, 42)], wait_readable=True)
                    except grpc.RpcError as exc:
                        codes.add(exc.code())
                        time.sleep(0.5)
                assert codes <= {grpc.StatusCode.UNAVAILABLE}
                assert outcomes == [signal_service_pb2.WRITE_OUTCOME_APPLIED]
                cell = client.get("images", [image_id(1)], ["dhash"])[0].signals["dhash"]
                assert cell.value.hash == 42  # type: ignore[union-attr]
                server.stop(grace=0.5)
    finally:
        server.stop(grace=0.5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
