"""Several serving processes on one port (server.processes, gss.readers), end to end.

A real ``gss serve`` with reader processes over RocksDB secondary instances and a real broker:
every availability event's value is readable, the moment the event arrives, through
connections to every serving process; a reader killed with SIGKILL or hung (SIGSTOP) holds
no event back for long and is replaced; writes through any process are acknowledged only once
every process reads them; SIGTERM leaves no process behind; the writer's /metrics counts the
calls of every serving process, and a killed reader's counts stay.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import _descendants, server_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import count_record, dhash_record, image_id
from kafka_support import Collector, kafka_overrides, produce
from prometheus_client.parser import text_string_to_metric_families

from clients.lookup import GssClient
from contract.registry import Registry
from contract.settings import KafkaSettings
from contract.v1 import envelope_pb2, signal_service_pb2, signals_pb2
from contract.v1.signal_service_pb2_grpc import SignalServiceStub
from gss.local.broker import LocalBroker
from gss.readers import BOUND
from gss.server import GssServer, start_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FOUND = signal_service_pb2.CELL_STATUS_FOUND
APPLIED = signal_service_pb2.WRITE_OUTCOME_APPLIED
PROCESSES = 3


@dataclass
class Conn:
    """One connection and the serving process it landed on (0: the writer)."""

    channel: grpc.Channel
    stub: SignalServiceStub
    process: int


def connect(address: str) -> Conn:
    # A local subchannel pool: a connection of its own, not one shared with other channels.
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = SignalServiceStub(channel)
    _, call = stub.ListGalaxies.with_call(signal_service_pb2.ListGalaxiesRequest(), timeout=10)
    return Conn(channel, stub, int(dict(call.trailing_metadata())["gss-process"]))


def connections_to_every_process(address: str, processes: int, tries: int = 200) -> list[Conn]:
    """Fresh connections until one has landed on each serving process (bounded)."""
    by_process: dict[int, Conn] = {}
    for _ in range(tries):
        conn = connect(address)
        if conn.process in by_process:
            conn.channel.close()
        else:
            by_process[conn.process] = conn
        if len(by_process) == processes:
            return [by_process[p] for p in sorted(by_process)]
    for conn in by_process.values():
        conn.channel.close()
    raise AssertionError(f"only reached processes {sorted(by_process)} in {tries} connections")


def lookup_dhash(conn: Conn, entity: str) -> int | None:
    response = conn.stub.GetSignals(
        signal_service_pb2.GetSignalsRequest(
            galaxy="images",
            entity_ids=[entity],
            signals=[envelope_pb2.SignalRef(name="dhash", version=1)],
        ),
        timeout=10,
    )
    cell = response.entities[0].cells[0]
    if cell.status != FOUND:
        return None
    value = signals_pb2.DHash()
    cell.value.Unpack(value)
    return int(value.hash)


class Serve:
    """A real ``gss serve`` subprocess (with its reader processes)."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gss", "serve", "--port", "0", "--data", str(tmp_path / "s")],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={
                **os.environ,
                "GSS_SERVER__HOST": "127.0.0.1",
                "GSS_SERVER__METRICS_PORT": "-1",
                "GSS_SERVER__SHUTDOWN_GRACE_SECONDS": "1",
                "GSS_LOG_FORMAT": "json",
                **env,
            },
            cwd=ROOT,
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None
        address = None
        deadline = time.monotonic() + 90
        while address is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            self.lines.append(line)
            if match := re.search(r"GSS serving on (\S+)", line):
                address = match[1]
            elif not line and self.process.poll() is not None:
                raise AssertionError("gss serve exited:\n" + "".join(self.lines[-30:]))
        if address is None:
            self.process.kill()
            raise AssertionError("gss serve did not start:\n" + "".join(self.lines[-30:]))
        self.address = address
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def readers(self) -> list[int]:
        return list(_descendants(self.process.pid))

    def logged(self, event: str) -> int:
        return sum(f'"{event}"' in line for line in list(self.lines))

    def stop(self) -> int:
        """SIGTERM; returns the exit code. Every reader must be gone with it."""
        readers = self.readers()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in readers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in readers if _alive(p)]
        assert not left, f"reader processes left behind: {left}"
        return code


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_serving(conns: list[Conn], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for conn in conns:
        health = health_pb2_grpc.HealthStub(conn.channel)
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            assert time.monotonic() < deadline, f"process {conn.process} never SERVING"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


@pytest.fixture
def served(tmp_path: Path, broker: LocalBroker) -> Iterator[tuple[Serve, KafkaSettings]]:
    kafka = kafka_overrides(broker.bootstrap_servers)
    env = {f"GSS_KAFKA__{k.upper()}": str(v) for k, v in kafka.items()}
    env |= {
        "GSS_SERVER__PROCESSES": str(PROCESSES),
        "GSS_SERVER__READER_CATCH_UP_TIMEOUT_SECONDS": "1.0",
    }
    serve = Serve(tmp_path, env)
    settings = server_settings(tmp_path, kafka=kafka)
    try:
        yield serve, settings.kafka
    finally:
        if serve.process.poll() is None:
            assert serve.stop() == 0


def _check_events(
    serve: Serve,
    collector: Collector,
    expected: dict[str, int],
    persistent: list[Conn],
    *,
    fresh_every: int = 1,
    every_process: bool = True,
    timeout: float = 90,
) -> int:
    """For every event as it arrives: its value through the persistent connection to each
    process at once, then through fresh connections landing on every process. Returns how
    many events were checked; fails on the first stale read."""
    checked: set[str] = set()
    handled = 0
    deadline = time.monotonic() + timeout
    while len(checked) < len(expected) and time.monotonic() < deadline:
        events = collector.snapshot()
        for watched in events[handled:]:
            entity = watched.event.entity_id
            handled += 1
            if entity not in expected:
                continue
            for conn in persistent:
                if _alive_conn(conn):
                    got = lookup_dhash(conn, entity)
                    assert got == expected[entity], (
                        f"event for {entity} published but process {conn.process} reads {got}"
                    )
            if len(checked) % fresh_every == 0:
                fresh = (
                    connections_to_every_process(serve.address, PROCESSES)
                    if every_process
                    # While a replacement reader starts: whichever processes serve now.
                    else [connect(serve.address) for _ in range(6)]
                )
                try:
                    for conn in fresh:
                        got = lookup_dhash(conn, entity)
                        assert got == expected[entity], (
                            f"event for {entity} published but a fresh connection to process "
                            f"{conn.process} reads {got}"
                        )
                finally:
                    for conn in fresh:
                        conn.channel.close()
            checked.add(entity)
        time.sleep(0.005)
    assert len(checked) == len(expected), (
        f"{len(expected) - len(checked)} events never arrived (blocked?)"
    )
    return len(checked)


def _alive_conn(conn: Conn) -> bool:
    state = conn.channel._channel.check_connectivity_state(False)  # type: ignore[attr-defined]
    return bool(state in (0, 2))  # IDLE or READY (not a connection to a killed process)


def test_every_event_is_readable_through_every_serving_process(
    served: tuple[Serve, KafkaSettings], registry: Registry
) -> None:
    serve, kafka = served
    persistent = connections_to_every_process(serve.address, PROCESSES)
    assert [c.process for c in persistent] == list(range(PROCESSES))
    wait_serving(persistent)
    assert len(serve.readers()) == PROCESSES - 1
    collector = Collector(kafka, registry)
    try:
        expected = {image_id(n): 5000 + n for n in range(120)}

        # Straight to the changelog (as the compute job writes), in bursts, while events flow.
        def write() -> None:
            for start in range(0, 120, 20):
                produce(
                    kafka, registry, [dhash_record(n, 5000 + n) for n in range(start, start + 20)]
                )
                time.sleep(0.1)

        writer = threading.Thread(target=write)
        writer.start()
        checked = _check_events(serve, collector, expected, persistent)
        writer.join(60)
        assert checked == 120
        # Writes through any process (readers forward them to the writer), with min_positions.
        for conn in persistent:
            n = 1000 + conn.process
            response = conn.stub.PutSignals(
                signal_service_pb2.PutSignalsRequest(records=[dhash_record(n, 77 + n)]),
                timeout=30,
            )
            (position,) = response.positions
            for other in persistent:
                answer = other.stub.GetSignals(
                    signal_service_pb2.GetSignalsRequest(
                        galaxy="images",
                        entity_ids=[image_id(n)],
                        signals=[envelope_pb2.SignalRef(name="dhash", version=1)],
                        min_positions=[position],
                    ),
                    timeout=30,
                )
                assert answer.entities[0].cells[0].status == FOUND, (conn.process, other.process)
            # Bad input through every process: precise codes, nothing stored.
            with pytest.raises(grpc.RpcError) as bad:
                conn.stub.PutSignals(
                    signal_service_pb2.PutSignalsRequest(
                        records=[envelope_pb2.SignalRecord(galaxy="images", entity_id="zz")]
                    ),
                    timeout=10,
                )
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            garbage = conn.channel.unary_unary("/gss.v1.SignalService/GetSignals")
            with pytest.raises(grpc.RpcError) as bad:
                garbage(b"\xff\xff\xff", timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # WatchSignals from every process (readers run a Kafka reader of their own).
            stream = conn.stub.WatchSignals(
                signal_service_pb2.WatchSignalsRequest(galaxy="images", from_beginning=True),
                timeout=60,
            )
            first_event = next(iter(stream))
            stream.cancel()
            assert first_event.event.entity_id in expected
            cluster = conn.stub.DescribeCluster(
                signal_service_pb2.DescribeClusterRequest(), timeout=10
            )
            assert len(cluster.nodes) == 1  # forwarded to the writer by readers
    finally:
        collector.close()
        for conn in persistent:
            conn.channel.close()


def test_a_killed_or_hung_reader_holds_no_event_back_and_is_replaced(
    served: tuple[Serve, KafkaSettings], registry: Registry
) -> None:
    serve, kafka = served
    persistent = connections_to_every_process(serve.address, PROCESSES)
    wait_serving(persistent)
    collector = Collector(kafka, registry)
    stopped: list[int] = []
    try:
        first = serve.readers()
        assert len(first) == PROCESSES - 1
        # kill -9 a reader: the writer reaps it at once and starts another.
        os.kill(first[0], signal.SIGKILL)
        expected = {image_id(n): 9000 + n for n in range(40)}
        produce(kafka, registry, [dhash_record(n, 9000 + n) for n in range(40)])
        # Until its replacement serves, fresh connections reach the processes that serve.
        _check_events(serve, collector, expected, persistent, fresh_every=5, every_process=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = serve.readers()
            if len(now) == PROCESSES - 1 and first[0] not in now:
                break
            time.sleep(0.1)
        assert first[0] not in serve.readers()
        assert len(serve.readers()) == PROCESSES - 1
        assert serve.logged("reader_process_died") >= 1
        # The replacement serves (on the same port, as the same process number) and reads
        # every value announced from then on.
        while serve.logged("reader_process_serving") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_serving(connections_to_every_process(serve.address, PROCESSES))
        after = {image_id(n): 8000 + n for n in range(50, 70)}
        produce(kafka, registry, [dhash_record(n, 8000 + n) for n in range(50, 70)])
        _check_events(serve, collector, after, persistent, fresh_every=2)
        # Hang a reader (SIGSTOP): the next events wait at most the catch-up timeout (1 s),
        # then it is killed and replaced.
        replacement = [p for p in serve.readers() if p not in first]
        hung = first[1] if len(first) > 1 else replacement[0]
        os.kill(hung, signal.SIGSTOP)
        stopped.append(hung)
        persistent = [c for c in persistent if c.process == 0]
        more = {image_id(n): 7000 + n for n in range(100, 130)}
        started = time.monotonic()
        produce(kafka, registry, [dhash_record(n, 7000 + n) for n in range(100, 130)])
        _check_events(
            serve, collector, more, persistent, fresh_every=3, every_process=False, timeout=60
        )
        assert time.monotonic() - started < 30
        assert serve.logged("reader_process_evicted") >= 1
        assert not _alive(hung)
        # The server kept serving throughout, and serves through every process again once
        # the replacement has started.
        deadline = time.monotonic() + 60
        # Two first readers and two replacements serving.
        while serve.logged("reader_process_serving") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        fresh = connections_to_every_process(serve.address, PROCESSES, tries=400)
        wait_serving(fresh)
        for conn in fresh:
            assert lookup_dhash(conn, image_id(129)) == 7129
            conn.channel.close()
    except AssertionError:
        print("".join(line for line in serve.lines if "reader_process" in line))
        raise
    finally:
        for pid in stopped:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        collector.close()
        for conn in persistent:
            conn.channel.close()
    assert serve.stop() == 0


@pytest.fixture
def direct_server(tmp_path: Path) -> Iterator[GssServer]:
    """No broker: PutSignals applies to the store in the writer process."""
    settings = server_settings(tmp_path)
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"processes": 2})}
    )
    running = start_server(settings)
    try:
        yield running
    finally:
        pids = running.readers.pids() if running.readers else []
        running.stop(grace=1.0)
        assert not [p for p in pids if _alive(p)]
        assert running.readers is not None
        assert not running.readers.metrics_dir.exists()  # the readers' metric files too


def test_read_after_write_across_processes_without_a_broker(direct_server: GssServer) -> None:
    """A PutSignals acknowledgement means every serving process reads the value: a lookup on
    any other connection right after it sees it."""
    address = direct_server.address
    writers = connections_to_every_process(address, 2)
    readers = connections_to_every_process(address, 2)
    try:
        for i in range(40):
            via = writers[i % 2]
            response = via.stub.PutSignals(
                signal_service_pb2.PutSignalsRequest(records=[count_record(i, i + 1)]), timeout=10
            )
            assert list(response.outcomes) == [APPLIED]
            for conn in readers:
                answer = conn.stub.GetSignals(
                    signal_service_pb2.GetSignalsRequest(
                        galaxy="pins",
                        entity_ids=[str(i)],
                        signals=[envelope_pb2.SignalRef(name="save_count_1h", version=1)],
                    ),
                    timeout=10,
                )
                assert answer.entities[0].cells[0].status == FOUND, (i, via.process, conn.process)
        with GssClient(address) as client:
            (row,) = client.get("pins", [39], ["save_count_1h"])
            assert row.signals["save_count_1h"].value == signals_pb2.WindowedCount(count=40)
    finally:
        for conn in writers + readers:
            conn.channel.close()


def test_readiness_reaches_every_process(direct_server: GssServer) -> None:
    """When the writer is not ready (behind its changelog, or draining), every serving
    process answers NOT_SERVING; when it is, every one answers SERVING."""
    conns = connections_to_every_process(direct_server.address, 2)
    try:
        wait_serving(conns)
        direct_server._set_serving(False)  # what the readiness follower does
        deadline = time.monotonic() + 10
        for conn in conns:
            health = health_pb2_grpc.HealthStub(conn.channel)
            request = health_pb2.HealthCheckRequest(service="gss.v1.SignalService")
            while health.Check(request, timeout=5).status != (
                health_pb2.HealthCheckResponse.NOT_SERVING
            ):
                assert time.monotonic() < deadline, f"process {conn.process} still SERVING"
                time.sleep(0.02)
        direct_server._set_serving(True)
        wait_serving(conns, timeout=10)
    finally:
        for conn in conns:
            conn.channel.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: GssServer) -> Samples:
    """The writer's /metrics, every sample by name and labels; each metric reported once."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a metric reported more than once"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def summed(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= set(have))


def lookup_pins(conn: Conn, ids: list[str]) -> None:
    conn.stub.GetSignals(
        signal_service_pb2.GetSignalsRequest(
            galaxy="pins",
            entity_ids=ids,
            signals=[envelope_pb2.SignalRef(name="save_count_1h", version=1)],
        ),
        timeout=10,
    )


def test_metrics_count_the_calls_of_every_serving_process(direct_server: GssServer) -> None:
    """The writer's /metrics is the whole server's: a lookup counts once whichever process
    served it, and a write a reader forwards to the writer counts once too."""
    # The server runs in this test process: its counters may hold earlier tests' calls.
    before = scrape(direct_server)
    served = {0: 0, 1: 0}
    for _ in range(3):
        # Fresh connections, one landing on each process; uneven counts per process, so
        # a count of the writer's calls alone (or of each call twice) cannot pass.
        for conn in connections_to_every_process(direct_server.address, 2):
            try:
                for i in range(4 + 3 * conn.process):
                    lookup_pins(conn, [str(i), str(100 + i)])
                    served[conn.process] += 1
            finally:
                conn.channel.close()
    assert served == {0: 12, 1: 21}
    conns = connections_to_every_process(direct_server.address, 2)
    try:
        for conn in conns:
            conn.stub.PutSignals(
                signal_service_pb2.PutSignalsRequest(records=[count_record(500, 1)]), timeout=10
            )
    finally:
        for conn in conns:
            conn.channel.close()
    after = scrape(direct_server)

    def counted(name: str, **labels: str) -> float:
        return summed(after, name, **labels) - summed(before, name, **labels)

    calls = sum(served.values())
    handled = "grpc_server_handled_total"
    assert counted(handled, grpc_method="GetSignals", grpc_code="OK") == calls
    assert counted(handled, grpc_method="GetSignals") == calls
    assert counted("grpc_server_handling_seconds_count", grpc_method="GetSignals") == calls
    assert counted("gss_request_seconds_count", method="GetSignals", galaxy="pins") == calls
    assert counted("gss_lookup_cells_total", galaxy="pins", status="not_found") == 2 * calls
    # Through the reader, forwarded to the writer: counted by the process the client called.
    assert counted(handled, grpc_method="PutSignals", grpc_code="OK") == 2
    assert counted("gss_values_written_total", galaxy="pins") == 2
    # The writer's own values, once: no per-process copies.
    assert [k for k in after if k[0] == "gss_store_size_bytes"] == [("gss_store_size_bytes", ())]


def _lookups_through(address: str, *, reader_calls: int, writer_calls: int) -> None:
    """One-pin lookups on a connection to the reader and one to the writer."""
    writer, reader = connections_to_every_process(address, 2)
    try:
        for i in range(reader_calls):
            lookup_pins(reader, [str(i)])
        for i in range(writer_calls):
            lookup_pins(writer, [str(i)])
    finally:
        writer.channel.close()
        reader.channel.close()


def test_a_killed_readers_counts_stay_in_the_metrics(direct_server: GssServer) -> None:
    """kill -9 a reader: while it is reaped and replaced the whole server's counters never go
    back, and the replacement's calls add to them."""
    assert direct_server.readers is not None
    pool = direct_server.readers

    def lookups() -> float:
        return summed(scrape(direct_server), "grpc_server_handled_total", grpc_method="GetSignals")

    start = lookups()
    _lookups_through(direct_server.address, reader_calls=10, writer_calls=4)
    assert lookups() - start == 14
    (killed,) = pool.pids()
    os.kill(killed, signal.SIGKILL)
    seen: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(lookups() - start)
        replaced = [p for p in pool.pids() if p != killed]
        if replaced and pool.board.state(0) == BOUND:
            break
        time.sleep(0.05)
    assert replaced, "the killed reader was not replaced"
    assert seen == [14] * len(seen), f"counts went back while the reader was replaced: {seen}"
    _lookups_through(direct_server.address, reader_calls=6, writer_calls=0)
    assert lookups() - start == 20


def test_a_taken_metrics_port_stops_everything_it_started(tmp_path: Path) -> None:
    """The metrics port is taken: start_server says so, and stops the readers it had started
    (no process left), the gRPC server (its port is free again) and the store (it opens
    again)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        grpc_port = probe.getsockname()[1]
    try:
        settings = server_settings(tmp_path)
        settings = settings.model_copy(
            update={
                "server": settings.server.model_copy(
                    update={
                        "processes": 2,
                        "port": grpc_port,
                        "metrics_port": taken.getsockname()[1],
                    }
                )
            }
        )
        before = set(_descendants(os.getpid()))
        with pytest.raises(OSError, match=re.escape("cannot serve metrics on 127.0.0.1:")):
            start_server(settings)
        deadline = time.monotonic() + 10
        while set(_descendants(os.getpid())) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(_descendants(os.getpid())) - before
        with socket.socket() as again:
            # SO_REUSEADDR passes TIME_WAIT; without SO_REUSEPORT, a listener there refuses.
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", grpc_port))
    finally:
        taken.close()
    running = start_server(server_settings(tmp_path))  # the store was closed
    running.stop(grace=0)
