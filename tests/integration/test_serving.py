"""The serving core end to end: a real server on a free port, the real clients, real RocksDB."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from clients.lookup import AsyncGssClient, GssClient
from contract.v1 import signal_service_pb2, signals_pb2
from contract.v1.signal_service_pb2_grpc import SignalServiceStub
from gss.cli import main as gss_cli
from gss.server import GssServer, start_server
from tests.conftest import server_settings
from tests.helpers import count_record, dhash_record, image_id

pytestmark = pytest.mark.integration

APPLIED = signal_service_pb2.WRITE_OUTCOME_APPLIED
SKIPPED = signal_service_pb2.WRITE_OUTCOME_SKIPPED_NOT_NEWER


def test_put_then_get_round_trips_typed_values(gss_server: GssServer) -> None:
    """Values written with PutSignals come back decoded, in request order, with envelopes."""
    with GssClient(gss_server.address) as client:
        assert client.put([dhash_record(1, 111), count_record(7, 3)]) == [APPLIED, APPLIED]
        assert client.put([dhash_record(1, 111)]) == [SKIPPED]
        rows = client.get("images", [image_id(2), image_id(1)], ["dhash", "dominant_colors@1"])
        assert [row.entity_id for row in rows] == [image_id(2), image_id(1)]
        assert rows[0].signals["dhash"].status == "not_found"
        cell = rows[1].signals["dhash"]
        assert cell.found
        assert cell.version == 1
        assert cell.value == signals_pb2.DHash(hash=111)
        assert cell.envelope is not None
        assert cell.envelope.producer == "test"
        assert rows[1].signals["dominant_colors@1"].status == "not_found"
        (pin,) = client.get("pins", [7], ["save_count_1h@1"])
        assert pin.signals["save_count_1h@1"].value == signals_pb2.WindowedCount(count=3)


def test_bad_input_gets_precise_codes_and_stores_nothing(gss_server: GssServer) -> None:
    """Unknown names -> NOT_FOUND; bad records -> INVALID_ARGUMENT naming the record; all or nothing."""
    with GssClient(gss_server.address) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.get("videos", [1], ["x"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "videos" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.get("images", [image_id(1)], ["dhash@5"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "signals[0]" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.get("pins", ["-3"], ["save_count_1h"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        bad = dhash_record(11, 1)
        bad.value.value = b"\xff\xff"
        with pytest.raises(grpc.RpcError) as err:
            client.put([dhash_record(10, 1), bad])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "records[1]" in err.value.details()
        rows = client.get("images", [image_id(10), image_id(11)], ["dhash"])
        assert [row.signals["dhash"].status for row in rows] == ["not_found", "not_found"]


def test_limits_are_enforced_with_a_message(tmp_path: Path) -> None:
    """Empty batches, batches over max_put_records and lookups over max_lookup_cells are refused."""
    settings = server_settings(tmp_path)
    settings.server.max_put_records = 3
    settings.server.max_lookup_cells = 4
    server = start_server(settings)
    try:
        stub_client = GssClient(server.address, max_cells_per_call=1000, max_records_per_call=1000)
        with pytest.raises(grpc.RpcError) as err:
            stub_client.put([dhash_record(i, i) for i in range(4)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is 3" in err.value.details()
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as err:
            SignalServiceStub(channel).PutSignals(signal_service_pb2.PutSignalsRequest(), timeout=5)
        assert "records is empty" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub_client.get("images", [image_id(i) for i in range(5)], ["dhash"])
        assert "limit is 4" in err.value.details()
        # The client splits large requests itself when told the server's limits.
        with GssClient(server.address, max_cells_per_call=4, max_records_per_call=3) as client:
            assert client.put([dhash_record(i, i, seconds=1) for i in range(7)]) == [APPLIED] * 7
            rows = client.get("images", [image_id(i) for i in range(7)], ["dhash"])
            assert [row.signals["dhash"].value for row in rows] == [
                signals_pb2.DHash(hash=i) for i in range(7)
            ]
        stub_client.close()
    finally:
        server.stop(grace=1.0)


def test_async_client_splits_and_keeps_order(gss_server: GssServer) -> None:
    """The asyncio client sends chunks concurrently and returns rows in request order."""

    async def scenario() -> list[int | None]:
        async with AsyncGssClient(gss_server.address, max_cells_per_call=3) as client:
            await client.put([dhash_record(i, i * 10) for i in range(10)])
            rows = await client.get("images", [image_id(i) for i in reversed(range(12))], ["dhash"])
            galaxies = await client.galaxies()
            assert {g.name for g in galaxies} == {"images", "pins"}
            return [
                r.signals["dhash"].value.hash if r.signals["dhash"].found else None for r in rows
            ]  # type: ignore[union-attr]

    assert asyncio.run(scenario()) == [None, None] + [i * 10 for i in reversed(range(10))]


def test_registry_calls_describe_value_types(gss_server: GssServer) -> None:
    """ListGalaxies and DescribeGalaxy expose key types, signals, value types and TTLs."""
    with GssClient(gss_server.address) as client:
        pins = client.describe("pins")
        assert pins.key_type == "int64"
        assert pins.key_length == 8
        assert [(s.name, s.version, s.value_type, s.ttl.seconds) for s in pins.signals] == [
            ("save_count_1h", 1, "gss.v1.WindowedCount", 7200),
            ("save_count_last_hour", 1, "gss.v1.WindowedCount", 7200),
        ]
        assert [g.name for g in client.galaxies()] == ["images", "pins"]


def test_health_reflection_and_metrics_for_generic_tools(gss_server: GssServer) -> None:
    """grpc.health.v1 says SERVING; reflection lists and describes the service; /metrics counts calls."""
    with grpc.insecure_channel(gss_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gss.v1.SignalService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="gss.v1.SignalService"),
        ]
        listed, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=5))
        names = {s.name for s in listed.list_services_response.service}
        assert {"gss.v1.SignalService", "grpc.health.v1.Health"} <= names
        assert described.file_descriptor_response.file_descriptor_proto

    def written(outcome: str) -> float:
        labels = {"galaxy": "images", "outcome": outcome}
        return REGISTRY.get_sample_value("gss_values_written_total", labels) or 0.0

    before = written("applied"), written("skipped")
    with GssClient(gss_server.address) as client:
        client.put([dhash_record(1, 1), dhash_record(2, 2), dhash_record(2, 2)])
        client.get("images", [image_id(3)], ["dhash"])
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{gss_server.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="GetSignals"' in body
    assert 'gss_lookup_cells_total{galaxy="images",status="not_found"}' in body
    assert "gss_store_size_bytes" in body
    assert 'gss_values_written_total{galaxy="images",outcome="applied"}' in body
    assert (written("applied") - before[0], written("skipped") - before[1]) == (2, 1)
    assert 'gss_signal_freshness_seconds{galaxy="images",signal="dhash@1"}' in body


def test_data_survives_a_restart(tmp_path: Path) -> None:
    """A server restarted on the same directory serves what the first one stored."""
    server = start_server(server_settings(tmp_path))
    with GssClient(server.address) as client:
        client.put([dhash_record(5, 55), count_record(9, 99)])
    server.stop(grace=1.0)
    server = start_server(server_settings(tmp_path))
    try:
        with GssClient(server.address) as client:
            assert client.get("images", [image_id(5)], ["dhash"])[0].signals[
                "dhash"
            ].value == signals_pb2.DHash(hash=55)
            assert client.get("pins", [9], ["save_count_1h"])[0].signals["save_count_1h"].found
    finally:
        server.stop(grace=1.0)


def test_cli_put_get_galaxies_against_a_live_server(gss_server: GssServer, tmp_path: Path) -> None:
    """`gss put` takes JSON lines, `gss get --json` returns them, errors exit non-zero with the reason."""
    runner = CliRunner()
    target = ["--target", gss_server.address]
    records = tmp_path / "records.jsonl"
    records.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "galaxy": "pins",
                    "entity_id": 42,
                    "signal": "save_count_1h@1",
                    "value": {"count": "12"},
                    "event_time": datetime.now(UTC).isoformat(),
                },
                {
                    "galaxy": "images",
                    "entity_id": image_id(3),
                    "signal": "dhash@1",
                    "value": {"hash": "255"},
                },
            ]
        )
    )
    result = runner.invoke(gss_cli, ["put", str(records), *target])
    assert result.exit_code == 0, result.output
    assert "2 applied" in result.output
    result = runner.invoke(
        gss_cli, ["get", "pins", "42", "43", "-s", "save_count_1h", "--json", *target]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["signals"]["save_count_1h"]["value"] == {"count": "12"}
    assert rows[1]["signals"]["save_count_1h"]["status"] == "not_found"
    result = runner.invoke(gss_cli, ["get", "images", image_id(3), "-s", "dhash", *target])
    assert result.exit_code == 0
    assert '"hash":"255"' in result.output
    result = runner.invoke(gss_cli, ["galaxies", *target])
    assert "save_count_1h@1" in result.output
    assert "gss.v1.DominantColors" in result.output
    result = runner.invoke(gss_cli, ["get", "videos", "1", "-s", "x", *target])
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output
    records.write_text(
        json.dumps(
            {"galaxy": "pins", "entity_id": 1, "signal": "save_count_1h@1", "value": {"nope": 1}}
        )
    )
    result = runner.invoke(gss_cli, ["put", str(records), *target])
    assert result.exit_code == 1
    assert "record 1: value is not a gss.v1.WindowedCount" in result.output
