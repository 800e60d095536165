"""A deletion through the changelog: readable as absent, announced as a deletion on WatchSignals
and to a Kafka subscriber built from the same settings shape (Subscriber.from_settings)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.lookup import GssClient
from clients.subscriber import Subscriber
from contract.v1 import signal_service_pb2
from contract.v1.signal_service_pb2_grpc import SignalServiceStub
from gss.local.broker import LocalBroker
from gss.server import GssServer, start_server
from tests.conftest import server_settings
from tests.helpers import dhash_record, image_id
from tests.kafka_support import kafka_overrides

pytestmark = pytest.mark.integration

APPLIED = signal_service_pb2.WRITE_OUTCOME_APPLIED


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GssServer]:
    with LocalBroker() as broker:
        running = start_server(
            server_settings(tmp_path, kafka=kafka_overrides(broker.bootstrap_servers))
        )
        try:
            yield running
        finally:
            running.stop(grace=0.5)


def test_tombstone_hides_the_value_on_lookup_watch_and_subscriber(server: GssServer) -> None:
    """Value then tombstone through the changelog: lookup answers NOT_FOUND; WatchSignals and
    a subscriber see the value's event, then a deletion event without a value."""
    deletion = dhash_record(9, 0, seconds=2)
    deletion.ClearField("value")
    deletion.tombstone = True
    with GssClient(server.address, timeout=30) as client:
        assert client.put([dhash_record(9, 99, seconds=1)], wait_readable=True) == [APPLIED]
        assert client.get("images", [image_id(9)], ["dhash"])[0].signals["dhash"].found
        assert client.put([deletion], wait_readable=True) == [APPLIED]
        (row,) = client.get("images", [image_id(9)], ["dhash"])
        assert row.signals["dhash"].status == "not_found"
        assert row.signals["dhash"].value is None

    request = signal_service_pb2.WatchSignalsRequest(galaxy="images", from_beginning=True)
    with grpc.insecure_channel(server.address) as channel:
        call = SignalServiceStub(channel).WatchSignals(request, timeout=60)
        events = []
        for response in call:
            events.append(response.event)
            if len(events) == 2:
                call.cancel()
                break
    assert [(e.entity_id, e.deleted, e.HasField("value")) for e in events] == [
        (image_id(9), False, True),
        (image_id(9), True, False),
    ]

    kafka = server.settings.kafka
    seen = []
    with Subscriber.from_settings(kafka, "images", f"test-{uuid.uuid4().hex}") as subscriber:
        for batch in subscriber.batches(timeout=0.5, idle_timeout=30):
            seen.extend(batch)
            if len(seen) >= 2:
                break
    assert [(e.entity_id, e.deleted, e.value is None) for e in seen[:2]] == [
        (image_id(9), False, False),
        (image_id(9), True, True),
    ]
