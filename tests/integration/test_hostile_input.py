"""Hostile input against a live `gss serve`: fuzzed request bytes and fields, 10,000 malformed
requests, oversize messages, calls without a deadline, one caller flooding the server.

Hypothesis runs ``GSS_FUZZ_EXAMPLES`` examples per property (default 200, a few seconds); for
a longer run (docs/security.md, "Fuzzing"):

    GSS_FUZZ_EXAMPLES=50000 .venv/bin/pytest -q tests/integration/test_hostile_input.py -k fuzz
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.lookup import make_record
from contract.v1 import envelope_pb2, signal_service_pb2, signals_pb2
from gss.server import start_server
from tests.conftest import server_settings
from tests.helpers import dhash_record, image_id, server_process

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = int(os.environ.get("GSS_FUZZ_EXAMPLES", "200"))
METHODS = ("GetSignals", "PutSignals", "ListGalaxies", "DescribeGalaxy", "WatchSignals")
# Codes that would mean the server did not understand its own failure.
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
MAX_REQUEST_BYTES = 1 << 20
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {"GSS_SERVER__MAX_RECEIVE_MESSAGE_BYTES": str(MAX_REQUEST_BYTES)}
    with server_process(tmp_path_factory.mktemp("hostile"), env) as running:
        yield running


@pytest.fixture(scope="module")
def channel(live: tuple[subprocess.Popen[str], str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live[1]) as opened:
        yield opened


def _raw(channel: grpc.Channel, method: str) -> Any:
    path = f"/gss.v1.SignalService/{method}"
    if method == "WatchSignals":
        return channel.unary_stream(path)
    return channel.unary_unary(path)


def _code(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """The status of one call with ``payload`` as its request bytes."""
    try:
        result = _raw(channel, method)(payload, timeout=10)
        if method == "WatchSignals":
            list(result)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _alive(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[no-any-return]


@FUZZ
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=2048))
def test_fuzz_request_bytes(channel: grpc.Channel, method: str, payload: bytes) -> None:
    """Arbitrary request bytes on every RPC: never UNKNOWN or INTERNAL."""
    assert _code(channel, method, payload) not in BAD


_texts = st.text(max_size=40)
_uint32 = st.integers(0, 2**32 - 1)
_refs = st.builds(
    envelope_pb2.SignalRef,
    name=st.one_of(st.sampled_from(["dhash", "embedding", "save_count_1h"]), _texts),
    version=_uint32,
)
_galaxies = st.one_of(st.sampled_from(["images", "pins"]), _texts)
_entity_ids = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.binary(max_size=20).map(bytes.hex), _texts
)


@st.composite
def _records(draw: st.DrawFn) -> envelope_pb2.SignalRecord:
    record = envelope_pb2.SignalRecord(
        galaxy=draw(_galaxies), entity_id=draw(_entity_ids), signal=draw(_refs)
    )
    if draw(st.booleans()):
        record.value.type_url = draw(
            st.one_of(
                st.sampled_from(
                    ["type.googleapis.com/gss.v1.DHash", "type.googleapis.com/gss.v1.WindowedCount"]
                ),
                _texts,
            )
        )
        record.value.value = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        record.envelope.event_time.seconds = draw(st.integers(-(2**63), 2**63 - 1))
        record.envelope.event_time.nanos = draw(st.integers(-(2**31), 2**31 - 1))
    record.envelope.producer = draw(_texts)
    record.tombstone = draw(st.booleans())
    record.override_ordering = draw(st.booleans())
    return record


_requests = st.one_of(
    st.builds(
        signal_service_pb2.GetSignalsRequest,
        galaxy=_galaxies,
        entity_ids=st.lists(_entity_ids, max_size=8),
        signals=st.lists(_refs, max_size=4),
    ).map(lambda r: ("GetSignals", r)),
    st.builds(
        signal_service_pb2.PutSignalsRequest,
        records=st.lists(_records(), max_size=6),
        wait_readable=st.booleans(),
    ).map(lambda r: ("PutSignals", r)),
    st.builds(signal_service_pb2.DescribeGalaxyRequest, galaxy=_galaxies).map(
        lambda r: ("DescribeGalaxy", r)
    ),
    st.builds(
        signal_service_pb2.WatchSignalsRequest,
        galaxy=_galaxies,
        signals=st.lists(_refs, max_size=3),
        from_beginning=st.booleans(),
    ).map(lambda r: ("WatchSignals", r)),
)


@FUZZ
@given(call=_requests)
def test_fuzz_request_fields(channel: grpc.Channel, call: tuple[str, Any]) -> None:
    """Well-formed messages with hostile fields (ids, names, versions, values, timestamps out
    of range, flags): never UNKNOWN or INTERNAL."""
    method, request = call
    assert _code(channel, method, request.SerializeToString()) not in BAD


def _malformed(rng: random.Random) -> list[tuple[str, bytes]]:
    """10,000 (method, bytes): random bytes, truncated and corrupted valid requests, requests
    of another RPC, invalid UTF-8 in string fields, absurd lengths."""
    valid = {
        "GetSignals": signal_service_pb2.GetSignalsRequest(
            galaxy="images",
            entity_ids=[image_id(1)],
            signals=[envelope_pb2.SignalRef(name="dhash")],
        ).SerializeToString(),
        "PutSignals": signal_service_pb2.PutSignalsRequest(
            records=[dhash_record(1, 5)]
        ).SerializeToString(),
        "DescribeGalaxy": signal_service_pb2.DescribeGalaxyRequest(
            galaxy="images"
        ).SerializeToString(),
        "ListGalaxies": b"",
        "WatchSignals": signal_service_pb2.WatchSignalsRequest(galaxy="images").SerializeToString(),
    }
    out = []
    for i in range(10_000):
        method = METHODS[i % len(METHODS)]
        base = valid[method] or valid["GetSignals"]
        kind = i % 6
        if kind == 0:
            payload = rng.randbytes(rng.randrange(1, 300))
        elif kind == 1:
            payload = base[: rng.randrange(1, max(2, len(base)))]
        elif kind == 2:
            corrupt = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
            payload = bytes(corrupt)
        elif kind == 3:
            payload = valid[METHODS[(i + 1) % len(METHODS)]] or base
        elif kind == 4:
            payload = b"\x0a\x04\xff\xfe\xfd\xfc"  # field 1 (a string) holding invalid UTF-8
        else:
            payload = b"\x0a\xff\xff\xff\xff\x0f" + rng.randbytes(8)  # a length far past the end
        out.append((method, payload))
    return out


def test_ten_thousand_malformed_requests(
    live: tuple[subprocess.Popen[str], str], channel: grpc.Channel
) -> None:
    """10,000 malformed requests (64 in flight): 0 UNKNOWN/INTERNAL, the server stays alive and
    serving, and its resident memory stays steady (measured after a warm-up)."""
    proc, _ = live
    requests = _malformed(random.Random(12))
    codes: Counter[str] = Counter()
    rss: list[int] = []

    def run(chunk: list[tuple[str, bytes]]) -> None:
        futures: list[tuple[str, Future[Any] | Any]] = []
        for method, payload in chunk:
            if method == "WatchSignals":
                codes[_code(channel, method, payload).name] += 1
            else:
                futures.append((method, _raw(channel, method).future(payload, timeout=10)))
            if len(futures) >= 64:
                _drain(futures, codes)
        _drain(futures, codes)

    run(requests[:2000])
    rss.append(_rss_bytes(proc.pid))
    for start in range(2000, 10_000, 2000):
        run(requests[start : start + 2000])
        rss.append(_rss_bytes(proc.pid))
    assert sum(codes.values()) == 10_000
    assert codes["UNKNOWN"] + codes["INTERNAL"] == 0, codes
    assert codes["INVALID_ARGUMENT"] > 5000, codes
    assert proc.poll() is None
    assert _alive(channel)
    growth = rss[-1] - rss[0]
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB: {rss}"


def _drain(futures: list[tuple[str, Any]], codes: Counter[str]) -> None:
    for _, future in futures:
        try:
            future.result()
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
    futures.clear()


def test_oversize_request_is_resource_exhausted(channel: grpc.Channel) -> None:
    """A request over server.max_receive_message_bytes: RESOURCE_EXHAUSTED, server fine."""
    code = _code(channel, "GetSignals", b"\x0a" + b"\x80\x80\x40" + b"x" * (MAX_REQUEST_BYTES + 10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _alive(channel)


def test_calls_without_deadline_are_capped_and_callers_bounded(tmp_path: Path) -> None:
    """A call without a deadline is cut off at server.default_deadline_seconds
    (DEADLINE_EXCEEDED); a caller over server.max_calls_per_caller is refused
    (RESOURCE_EXHAUSTED) while its other calls complete."""
    settings = server_settings(tmp_path)
    settings.server.default_deadline_seconds = 0.001
    settings.server.max_calls_per_caller = 2
    server = start_server(settings, registry_poll_seconds=None)
    now = datetime.now(UTC)
    big = signal_service_pb2.PutSignalsRequest(
        records=[
            make_record(
                "pins", n, "save_count_1h@1", signals_pb2.WindowedCount(count=n), event_time=now
            )
            for n in range(1, 5001)
        ]
    )
    try:
        with grpc.insecure_channel(server.address) as chan:
            put = chan.unary_unary(
                "/gss.v1.SignalService/PutSignals",
                request_serializer=signal_service_pb2.PutSignalsRequest.SerializeToString,
            )
            with pytest.raises(grpc.RpcError) as err:
                put(big)  # no deadline
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "default_deadline_seconds" in (err.value.details() or "")
            futures = [put.future(big, timeout=60) for _ in range(12)]
            codes = Counter()
            for future in futures:
                try:
                    future.result()
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
            assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
            assert codes["OK"] >= 2
    finally:
        server.stop(grace=0.5)
