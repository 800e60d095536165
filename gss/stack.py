"""The main job on one machine: every part of GSS started by the project's own code.

``gss run`` (and ``make run``) calls :func:`run_local_stack`: the GSS server over a local
RocksDB, a local Kafka-protocol broker (unless kafka.bootstrap_servers points at one), example
values written through PutSignals (so through the changelog and the ingester), lookups printed
as they land, and the availability events the outbox publishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import structlog

from clients.lookup import GssClient, make_record
from gss.kafka.broker import LocalBroker
from gss.kafka.watch import EventEcho
from gss.server import start_server
from gss.settings import Settings
from gss.v1 import envelope_pb2, signals_pb2

log = structlog.get_logger(__name__)


def example_records(now: datetime) -> list[envelope_pb2.SignalRecord]:
    """A few hand-made values of the example signals, for the serving-only demo."""
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


def run_local_stack(
    settings: Settings, data_dir: Path, *, duration: float | None, out: TextIO
) -> None:
    """Start the local stack, show values flowing, and run until ``duration`` or a signal."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        local_broker = not settings.kafka.bootstrap_servers
        if local_broker:
            broker = stack.enter_context(LocalBroker())
            kafka = settings.kafka.model_copy(
                update={"bootstrap_servers": broker.bootstrap_servers}
            )
            settings = settings.model_copy(update={"kafka": kafka})
            out.write(f"local Kafka-protocol broker on {broker.bootstrap_servers} (in memory)\n")
        server = start_server(settings)
        stack.callback(server.stop)
        out.write(f"GSS serving on {server.address}; store at {settings.store.path}\n")
        stack.enter_context(
            EventEcho(settings.kafka, server.registry, out, from_beginning=local_broker)
        )
        client = stack.enter_context(GssClient(server.address))
        records = example_records(datetime.now(UTC))
        outcomes = client.put(records, wait_readable=True)
        out.write(f"wrote {len(records)} example values through PutSignals: outcomes {outcomes}\n")
        for galaxy, ids, names in (
            ("images", [records[0].entity_id], ["dominant_colors", "dhash"]),
            ("pins", [records[2].entity_id], ["save_count_1h"]),
        ):
            for row in client.get(galaxy, ids, names):
                for name, cell in row.signals.items():
                    shown = (
                        str(cell.value).replace("\n", " ").strip()
                        if cell.value is not None
                        else "-"
                    )
                    out.write(f"  {galaxy}/{row.entity_id} {name}: {cell.status} {shown}\n")
        out.write("running; Ctrl-C stops\n" if duration is None else f"running for {duration:g}s\n")
        out.flush()
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            stop.wait(1.0 if remaining is None else min(1.0, remaining))
    out.write("stopped\n")
