"""The main job on one machine: every part of GSS started by the project's own code.

``gss run`` (and ``make run``) calls :func:`run_local_stack`, which starts, in order:

1. a local Kafka-protocol broker (unless ``kafka.bootstrap_servers`` names one);
2. a local Triton server over compute/models (unless ``triton.url`` names one);
3. the GSS server over a local RocksDB, with its changelog ingester and outbox publisher;
4. the compute job on a Flink MiniCluster, running the example plugins;
5. a generator of content events (synthetic images, pin saves).

It then reports, every few seconds, the availability events that arrived and what GetSignals
answers for the newest entities, until ``duration``, Ctrl-C or SIGTERM. On the way out it stops
everything in reverse order, a line per part: the generator, the Flink job (cancelled, then
its JVM and Python workers), then it exports today's snapshot of the store, then stops the GSS
server (ingester and publisher drained), Triton and the broker. The child processes run in
sessions of their own, so a signal meant for ``gss run`` (the terminal's Ctrl-C, a SIGTERM to
its process group) does not reach them first; none outlives ``gss run`` (see
:class:`StopRequest` and :mod:`contract.processes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import structlog
from google.protobuf import json_format

from clients.lookup import GssClient, make_record
from compute.triton import model_repository
from contract import processes
from contract.registry import Registry
from contract.settings import KafkaSettings, Settings
from contract.v1 import envelope_pb2, signals_pb2
from gss.kafka.watch import AvailableReader
from gss.local.broker import LocalBroker
from gss.server import start_server

log = structlog.get_logger(__name__)

T = TypeVar("T")

REPORT_SECONDS = 5.0
# Half are images, each through three pretrained models (docs/models.md): a rate a 2-core
# machine keeps up with.
CONTENT_EVENTS_PER_SECOND = 4.0


def example_records(now: datetime) -> list[envelope_pb2.SignalRecord]:
    """A few hand-made values of the example signals: an online producer's PutSignals."""
    image = hashlib.md5(b"example image 1").digest()
    colors = signals_pb2.DominantColors(
        colors=[
            signals_pb2.WeightedColor(red=200, green=40, blue=40, weight=0.6),
            signals_pb2.WeightedColor(red=20, green=20, blue=180, weight=0.4),
        ]
    )
    window_end = now.replace(minute=0, second=0, microsecond=0)
    count = signals_pb2.WindowedCount(count=17)
    count.window_start.FromDatetime(window_end - timedelta(hours=1))
    count.window_end.FromDatetime(window_end)
    return [
        make_record(
            "images", image, "dominant_colors@1", colors, event_time=now, producer="gss-run"
        ),
        make_record(
            "images",
            image,
            "dhash@1",
            signals_pb2.DHash(hash=0x0F0F_3C3C_F0F0_C3C3),
            event_time=now,
            producer="gss-run",
        ),
        make_record("pins", 1001, "save_count_1h@1", count, event_time=now, producer="gss-run"),
    ]


class FlowReport:
    """Follows every galaxy's availability topic and keeps what a periodic report shows:
    events per signal since the last report, and the newest entity of each galaxy."""

    def __init__(self, kafka: KafkaSettings, registry: Registry, *, from_beginning: bool) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.total = 0
        self.newest: dict[str, str] = {}
        self._threads = [
            threading.Thread(
                target=self._follow,
                args=(
                    AvailableReader(
                        kafka, galaxy, from_beginning=from_beginning, client_id="gss-run"
                    ),
                ),
                name=f"gss-run-{galaxy.name}",
                daemon=True,
            )
            for galaxy in registry
        ]

    def _follow(self, reader: AvailableReader) -> None:
        with reader:
            while not self._stop.is_set():
                for watched in reader.poll(0.3):
                    event = watched.event
                    with self._lock:
                        self._counts[
                            f"{event.galaxy}/{event.signal.name}@{event.signal.version}"
                        ] += 1
                        self.total += 1
                        self.newest[event.galaxy] = event.entity_id

    def take_counts(self) -> Counter[str]:
        """Events per signal since the previous call."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts

    def __enter__(self) -> FlowReport:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


def _show_lookups(
    client: GssClient, registry: Registry, entities: dict[str, str], out: TextIO
) -> None:
    for galaxy_name, entity_id in sorted(entities.items()):
        galaxy = registry.galaxy(galaxy_name)
        # Every version, not only the pinned defaults: new versions (a model's @2) show too.
        names = sorted({f"{spec.name}@{spec.version}" for spec in galaxy.signals})
        (row,) = client.get(galaxy_name, [entity_id], names)
        out.write(f"  GetSignals {galaxy_name}/{entity_id}:\n")
        for name, cell in row.signals.items():
            if cell.found and cell.value is not None and cell.envelope is not None:
                value = json_format.MessageToJson(
                    cell.value, indent=None, preserving_proto_field_name=True
                )
                model = (
                    f", model {cell.envelope.model_name}@{cell.envelope.model_version}"
                    if cell.envelope.model_name
                    else ""
                )
                out.write(f"    {name}: {value[:110]}  (by {cell.envelope.producer}{model})\n")
            else:
                out.write(f"    {name}: {cell.status.replace('_', ' ')}\n")


class StopRequest:
    """SIGINT and SIGTERM ask ``gss run`` to stop, once: the main thread then stops every part
    in order. The children run in sessions of their own (:mod:`contract.processes`), so the
    terminal's Ctrl-C or a SIGTERM to the process group reaches this process only.

    Another signal within ``repeat_grace_seconds`` of the first is the same request (``timeout``
    sends its signal to the process and then to its group); a later one forces the stop: every
    child process group is killed and the process exits at once (128 + the signal number).
    """

    def __init__(self, repeat_grace_seconds: float = 1.0) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self.repeat_grace_seconds = repeat_grace_seconds
        self._first: float | None = None
        self._previous: dict[int, Any] = {}

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)

    def install(self) -> StopRequest:
        """Handle SIGINT and SIGTERM (from the main thread); :meth:`restore` undoes it."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = now
            self.signal_name = signal.Signals(signum).name
            self.event.set()
            return
        if now - self._first < self.repeat_grace_seconds:
            return
        # Nothing that takes a lock: the main thread may hold the output's.
        killed = processes.kill_tracked()
        message = f"\n{signal.Signals(signum).name} again: forced stop"
        message += f"; killed {', '.join(killed)}\n" if killed else "\n"
        with contextlib.suppress(OSError):
            os.write(2, message.encode())
        os._exit(128 + signum)


def _stopped(out: TextIO, line: str) -> None:
    out.write(f"stopped {line}\n")
    out.flush()


@contextlib.contextmanager
def _announced(
    out: TextIO, name: str, part: contextlib.AbstractContextManager[T], *, quiet: bool = False
) -> Iterator[T]:
    """``part``, with a "stopped <name>" line once it has stopped (not when it failed)."""
    with part as value:
        yield value
    if not quiet:
        _stopped(out, name)


def run_local_stack(
    settings: Settings,
    data_dir: Path,
    *,
    duration: float | None,
    out: TextIO,
    compute: bool = True,
    rate_per_second: float = CONTENT_EVENTS_PER_SECOND,
) -> None:
    """Start the local stack, show signals flowing, and run until ``duration`` or a signal.

    ``compute=False`` leaves out Triton, Flink and the generator (serving and events only).
    Stopping (the duration's end, SIGINT, SIGTERM) takes every part down in reverse order of
    dependency, a line each: content generator, Flink job and its JVM, (the snapshot export),
    GSS server, Triton, broker. No child process outlives the call, however it ends.
    """
    stop = StopRequest().install()
    try:
        _run(settings, data_dir, duration, out, compute, rate_per_second, stop)
    finally:
        # Every exit path: child process groups still there (a failed stop) are killed.
        processes.kill_tracked()
        stop.restore()


def _run(
    settings: Settings,
    data_dir: Path,
    duration: float | None,
    out: TextIO,
    compute: bool,
    rate_per_second: float,
    stop: StopRequest,
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        local_broker = not settings.kafka.bootstrap_servers
        if local_broker:
            broker = stack.enter_context(_announced(out, "local broker", LocalBroker()))
            settings = settings.model_copy(
                update={
                    "kafka": settings.kafka.model_copy(
                        update={"bootstrap_servers": broker.bootstrap_servers}
                    )
                }
            )
            out.write(f"local Kafka-protocol broker on {broker.bootstrap_servers} (in memory)\n")
        compute = compute and not stop.is_set()
        if compute:
            from gss.local.triton import triton_url

            url = stack.enter_context(
                _announced(
                    out, "Triton", triton_url(settings.triton), quiet=bool(settings.triton.url)
                )
            )
            settings = settings.model_copy(
                update={"triton": settings.triton.model_copy(update={"url": url})}
            )
            out.write(f"Triton serving {model_repository(settings.triton).name}/ on http://{url}\n")
        server = start_server(settings)
        stack.callback(_stopped, out, "GSS server (ingester and publisher drained, store closed)")
        stack.callback(server.stop)
        out.write(
            f"GSS serving on {server.address} ({settings.server.processes} serving "
            f"process{'es' if settings.server.processes > 1 else ''}, server.processes); "
            f"store at {settings.store.path}\n"
        )
        flow = FlowReport(settings.kafka, server.registry, from_beginning=local_broker)
        stack.callback(lambda: out.write(f"{flow.total} availability events in all\n"))
        stack.enter_context(flow)
        client = stack.enter_context(GssClient(server.address))

        records = example_records(datetime.now(UTC))
        outcomes = client.put(records, wait_readable=True)
        out.write(f"wrote {len(records)} example values through PutSignals: outcomes {outcomes}\n")
        _show_lookups(
            client,
            server.registry,
            {"images": records[0].entity_id, "pins": records[2].entity_id},
            out,
        )

        with contextlib.ExitStack() as compute_parts:
            if compute and not stop.is_set():
                _start_compute(settings, server.registry, rate_per_second, out, compute_parts)
            out.write(
                "running; Ctrl-C stops\n" if duration is None else f"running for {duration:g}s\n"
            )
            out.flush()

            deadline = None if duration is None else started + duration
            next_report = time.monotonic() + REPORT_SECONDS
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_report:
                    next_report = now + REPORT_SECONDS
                    counts = flow.take_counts()
                    shown = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"
                    out.write(f"[{now - started:5.0f}s] availability events: {shown}\n")
                    _show_lookups(client, server.registry, dict(flow.newest), out)
                    out.flush()
                stop.wait(min(0.5, max(0.0, (deadline or now + 1) - now)))
            reason = f"on {stop.signal_name}" if stop.signal_name else f"after {duration:g}s"
            out.write(f"stopping {reason}\n")
            out.flush()
        # The generator and the Flink job are stopped: what they wrote is in the store, or
        # in the changelog for the ingester, which runs until the server stops.

        today = datetime.now(UTC).date()
        from gss.snapshot.exporter import export_snapshot

        result = export_snapshot(
            server.registry,
            settings.export,
            dt=today,
            store=server.store,
            root=data_dir / "snapshots",
            progress=False,
        )
        out.write(
            f"snapshot dt={today.isoformat()}: {result.rows} rows in {len(result.partitions)} partitions "
            f"under {data_dir / 'snapshots'}\n"
        )
        out.flush()
    out.write("stopped\n")
    out.flush()


def _start_compute(
    settings: Settings,
    registry: Registry,
    rate_per_second: float,
    out: TextIO,
    stack: contextlib.ExitStack,
) -> None:
    """The Flink job (and its JVM) and the content generator, stopped by ``stack`` in turn."""
    from compute.flink import gateway
    from compute.flink.run import ComputeJob
    from gss.local.generator import running_generator

    job: ComputeJob | None = None
    job_id: str | None = None

    def stop_flink() -> None:
        try:
            if job is not None:
                job.stop()  # cancelled while its JVM still answers
        finally:
            gateway.shutdown()  # the JVM (MiniCluster), then what is left in its group
        _stopped(out, f"Flink job {job_id} (cancelled) and its JVM" if job_id else "Flink JVM")

    gateway.own_session()  # before anything starts the JVM
    stack.callback(stop_flink)
    job = ComputeJob(settings, registry=registry).start()
    job_id = job.job_id
    out.write(f"compute job {job_id} on a Flink MiniCluster: {len(job.bounds)} plugins\n")
    stack.enter_context(
        _announced(
            out, "content generator", running_generator(settings, rate_per_second=rate_per_second)
        )
    )
    out.write(
        f"content generator: {rate_per_second:g} events/s to content.images and content.pins\n"
    )
