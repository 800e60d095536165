"""The main job on one machine: every part of GSS started by the project's own code.

``gss run`` (and ``make run``) calls :func:`run_local_stack`, which starts, in order:

1. a local Kafka-protocol broker (unless ``kafka.bootstrap_servers`` names one);
2. a local Triton server over compute/models (unless ``triton.url`` names one);
3. the GSS server over a local RocksDB, with its changelog ingester and outbox publisher;
4. the compute job on a Flink MiniCluster, running the example plugins;
5. a generator of content events (synthetic images, pin saves).

It then reports, every few seconds, the availability events that arrived and what GetSignals
answers for the newest entities, until ``duration`` or Ctrl-C; on the way out it exports
today's snapshot of the store, and stops everything in reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import structlog
from google.protobuf import json_format

from clients.lookup import GssClient, make_record
from contract.registry import Registry
from contract.settings import KafkaSettings, Settings
from contract.v1 import envelope_pb2, signals_pb2
from gss.cli.context import stop_on_signals
from gss.kafka.watch import AvailableReader
from gss.local.broker import LocalBroker
from gss.server import start_server

log = structlog.get_logger(__name__)

REPORT_SECONDS = 5.0
CONTENT_EVENTS_PER_SECOND = 10.0


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
        names = sorted({spec.name for spec in galaxy.signals})
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
                out.write(
                    f"    {name}@{cell.version}: {value[:110]}  (by {cell.envelope.producer}{model})\n"
                )
            else:
                out.write(f"    {name}: {cell.status.replace('_', ' ')}\n")


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
    """
    stop = stop_on_signals()
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        local_broker = not settings.kafka.bootstrap_servers
        if local_broker:
            broker = stack.enter_context(LocalBroker())
            settings = settings.model_copy(
                update={
                    "kafka": settings.kafka.model_copy(
                        update={"bootstrap_servers": broker.bootstrap_servers}
                    )
                }
            )
            out.write(f"local Kafka-protocol broker on {broker.bootstrap_servers} (in memory)\n")
        if compute:
            from gss.local.triton import triton_url

            url = stack.enter_context(triton_url(settings.triton))
            settings = settings.model_copy(
                update={"triton": settings.triton.model_copy(update={"url": url})}
            )
            out.write(f"Triton serving {settings.triton.model_repository.name}/ on http://{url}\n")
        server = start_server(settings)
        stack.callback(server.stop)
        out.write(f"GSS serving on {server.address}; store at {settings.store.path}\n")
        flow = stack.enter_context(
            FlowReport(settings.kafka, server.registry, from_beginning=local_broker)
        )
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

        generator_stop = None
        if compute:
            from compute.flink import gateway
            from compute.flink.run import ComputeJob
            from gss.local.generator import running_generator

            stack.callback(gateway.shutdown)  # after the job is cancelled: PyFlink's JVM
            job = ComputeJob(settings, registry=server.registry).start()
            stack.callback(job.stop)
            out.write(
                f"compute job {job.job_id} on a Flink MiniCluster: {len(job.bounds)} plugins\n"
            )
            generator_stop = stack.enter_context(
                running_generator(settings, rate_per_second=rate_per_second)
            )
            out.write(
                f"content generator: {rate_per_second:g} events/s to content.images and content.pins\n"
            )
        out.write("running; Ctrl-C stops\n" if duration is None else f"running for {duration:g}s\n")
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

        if generator_stop is not None:
            generator_stop.set()
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
        out.write(f"{flow.total} availability events in all; stopping\n")
        out.flush()
    out.write("stopped\n")
