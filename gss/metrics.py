"""Prometheus metrics of the GSS server, under the names dashboards already query.

gRPC: go-grpc-prometheus's ``grpc_server_handled_total`` and ``grpc_server_handling_seconds``.
Domain: ``gss_*`` with base units; labels are bounded (galaxy, signal, version, method, code),
never ids.

With several serving processes (``server.processes``, gss.readers) the writer's one
``/metrics`` reports them all: :class:`ServingProcessesCollector`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

import gss
from contract.keys import split_store_key
from contract.metrics import LATENCY_BUCKETS
from contract.registry import GalaxySpec, Registry, SignalSpec
from store import records
from store.db import Write

BUILD_INFO = Info("gss_build", "GSS build metadata.")
BUILD_INFO.info({"version": gss.__version__})

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
GALAXY_REQUEST_SECONDS = Histogram(
    "gss_request_seconds",
    "Time to handle a GSS call, by method and galaxy.",
    ["method", "galaxy"],
    buckets=LATENCY_BUCKETS,
)
LOOKUP_CELLS = Counter(
    "gss_lookup_cells_total",
    "GetSignals cells answered, by galaxy and status (found, not_found, expired).",
    ["galaxy", "status"],
)
VALUES_WRITTEN = Counter(
    "gss_values_written_total",
    "Signal records offered to the store, by galaxy and outcome (applied, skipped).",
    ["galaxy", "outcome"],
)
DEPRECATED_LOOKUPS = Counter(
    "gss_deprecated_signal_lookups_total",
    "GetSignals cells asking for a deprecated signal version, by galaxy, signal and version.",
    ["galaxy", "signal", "version"],
)
DEPRECATED_WRITES = Counter(
    "gss_deprecated_signal_writes_total",
    "Values of a deprecated signal version applied to the store, by galaxy, signal and version.",
    ["galaxy", "signal", "version"],
)
STORE_SIZE = Gauge("gss_store_size_bytes", "SST files plus memtables of the signal store.")
STORE_KEYS = Gauge("gss_store_values", "Estimated stored values, by galaxy.", ["galaxy"])


class FreshnessCollector(Collector):
    """``gss_signal_freshness_seconds{galaxy,signal}``: age, by event time, of the newest value
    applied for each signal since start. Fed by every apply through :func:`record_apply`."""

    def __init__(self) -> None:
        self._newest_us: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def note(self, galaxy: str, signal: str, event_us: int) -> None:
        key = (galaxy, signal)
        with self._lock:
            if event_us > self._newest_us.get(key, -1):
                self._newest_us[key] = event_us

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gss_signal_freshness_seconds",
            "Seconds between now and the event time of the newest value applied for a signal.",
            labels=["galaxy", "signal"],
        )
        now_us = time.time_ns() // 1000
        with self._lock:
            for (galaxy, signal), event_us in sorted(self._newest_us.items()):
                family.add_metric([galaxy, signal], max(0.0, (now_us - event_us) / 1e6))
        yield family


FRESHNESS = FreshnessCollector()
REGISTRY.register(FRESHNESS)


def count_deprecated_lookups(galaxy: GalaxySpec, specs: Sequence[SignalSpec], ids: int) -> None:
    """Count a GetSignals call's cells of deprecated versions: one add per requested signal.
    Callers test ``galaxy.deprecated_refs`` first, so lookups of galaxies with no deprecated
    version pay nothing more."""
    for spec in specs:
        if spec.deprecated:
            DEPRECATED_LOOKUPS.labels(galaxy.name, spec.name, str(spec.version)).inc(ids)


def record_apply(
    writes: Sequence[Write],
    applied: list[bool],
    key_lengths: dict[str, int],
    registry: Registry | None = None,
) -> None:
    """Count applied and skipped writes per galaxy (and those of deprecated versions, given the
    registry) and feed the freshness gauge."""
    counts: dict[tuple[str, str], int] = {}
    deprecated: dict[tuple[str, str, int], int] = {}
    for write, ok in zip(writes, applied, strict=True):
        outcome = "applied" if ok else "skipped"
        counts[(write.galaxy, outcome)] = counts.get((write.galaxy, outcome), 0) + 1
        if ok:
            _, name, version = split_store_key(write.key, key_lengths[write.galaxy])
            FRESHNESS.note(write.galaxy, f"{name}@{version}", records.event_time_us(write.stored))
            galaxy = registry.galaxies.get(write.galaxy) if registry is not None else None
            if galaxy is not None and (name, version) in galaxy.deprecated_refs:
                key = (write.galaxy, name, version)
                deprecated[key] = deprecated.get(key, 0) + 1
    for (galaxy_name, outcome), n in counts.items():
        VALUES_WRITTEN.labels(galaxy_name, outcome).inc(n)
    for (galaxy_name, name, version), n in deprecated.items():
        DEPRECATED_WRITES.labels(galaxy_name, name, str(version)).inc(n)


# prometheus_client's multiprocess mode: set in a reader process's environment when it is
# spawned (before it imports prometheus_client), the directory its values are written to.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Summed across processes; every gauge of GSS is a value only the writer knows.
_SUMMED_TYPES = ("counter", "histogram")


class ServingProcessesCollector(Collector):
    """The whole server's metrics when it serves from several processes (``server.processes``
    above 1): what ``registry`` holds in this process (the writer), plus what every reader,
    alive or dead, counted in ``directory``.

    Readers run in prometheus_client's multiprocess mode: each writes its values to files of
    its own there, and :class:`MultiProcessCollector` sums them. The files of a dead reader
    stay (``mark_process_dead`` removes only live gauges), so a counter never goes back when a
    reader is killed and replaced. The writer cannot count that way: its metrics exist from
    import, before it knows it will start readers, and servers also run inside processes that
    hold other metrics (``gss run``, tests). So its counters and histograms are added here to
    the readers' samples of the same name and labels (a histogram's buckets are cumulative on
    both sides, over the same bounds). Gauges and the rest (store size and values, freshness,
    changelog lag, outbox entries, build and process info) are the writer's alone, reported
    once: readers set none (their files hold only zeros of gauges they imported)."""

    def __init__(self, directory: str | Path, registry: CollectorRegistry = REGISTRY) -> None:
        self.directory = Path(directory)
        self.registry = registry

    def _readers(self) -> Iterable[Metric]:
        # A reader starting at this moment has files not yet sized (prometheus_client creates,
        # then grows them), which its reader cannot parse: skip those, they hold nothing yet.
        files = [str(f) for f in self.directory.glob("*.db") if _size(f) > 0]
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged

    def collect(self) -> Iterator[Metric]:
        merged = self._readers()
        readers = {family.name: family for family in merged if family.type in _SUMMED_TYPES}
        for family in self.registry.collect():
            theirs = readers.pop(family.name, None)
            yield family if theirs is None else _summed(family, theirs)
        yield from readers.values()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a dead reader's live gauges, removed since the listing
        return 0


def _summed(writer: Metric, readers: Metric) -> Metric:
    """One family whose samples are the sums of the writer's and the readers' (by name and
    labels, in any order; a sample only one side has, such as the writer's ``_created``,
    as it is)."""
    totals: dict[tuple[str, frozenset[tuple[str, str]]], tuple[dict[str, str], float]] = {}
    for sample in (*writer.samples, *readers.samples):
        key = (sample.name, frozenset(sample.labels.items()))
        labels, value = totals.get(key, (sample.labels, 0.0))
        totals[key] = labels, value + sample.value
    family = Metric(writer.name, writer.documentation, writer.type, writer.unit)
    for (name, _), (labels, value) in totals.items():
        family.add_sample(name, labels, value)
    return family


def serving_processes_registry(directory: str | Path) -> CollectorRegistry:
    """What the writer's ``/metrics`` serves when it has readers counting in ``directory``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServingProcessesCollector(directory))
    return registry
