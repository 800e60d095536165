"""One /metrics for every serving process (gss.metrics.ServingProcessesCollector): the
writer's in-process counts plus what reader processes wrote in prometheus_client's
multiprocess mode, summed by name and labels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gss.metrics import MULTIPROCESS_DIR_ENV, ServingProcessesCollector

# What a reader process counts (it exits afterwards, as a killed one would: its counts stay).
READER = """
from prometheus_client import Counter, Gauge, Histogram
handled = Counter("grpc_server_handled_total", "RPCs.", ["grpc_method"])
handled.labels("GetSignals").inc(3)
handled.labels("WatchSignals").inc()
Histogram("gss_request_seconds", "Time.", ["method"], buckets=(0.1, 1.0)).labels(
    "GetSignals"
).observe(0.5)
Gauge("gss_store_size_bytes", "Bytes.").set(0)
"""


def test_readers_counts_are_added_to_the_writers_and_gauges_are_the_writers(
    tmp_path: Path,
) -> None:
    writer = CollectorRegistry()
    handled = Counter("grpc_server_handled_total", "RPCs.", ["grpc_method"], registry=writer)
    seconds = Histogram(
        "gss_request_seconds", "Time.", ["method"], buckets=(0.1, 1.0), registry=writer
    )
    Gauge("gss_store_size_bytes", "Bytes.", registry=writer).set(1000)
    handled.labels("GetSignals").inc(2)
    seconds.labels("GetSignals").observe(0.05)
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", READER],
            env={**os.environ, MULTIPROCESS_DIR_ENV: str(tmp_path)},
            check=True,
        )
    whole = CollectorRegistry(auto_describe=False)
    whole.register(ServingProcessesCollector(tmp_path, writer))

    families = list(text_string_to_metric_families(generate_latest(whole).decode()))
    names = [family.name for family in families]
    assert len(names) == len(set(names))  # one family per metric, not one per process
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }
    assert samples["grpc_server_handled_total", (("grpc_method", "GetSignals"),)] == 8
    # Label sets only readers have are reported too.
    assert samples["grpc_server_handled_total", (("grpc_method", "WatchSignals"),)] == 2
    # The writer's own _created stays as it is.
    assert ("grpc_server_handled_created", (("grpc_method", "GetSignals"),)) in samples
    # Histograms: cumulative buckets, count and sum of all three processes.
    bucket = "gss_request_seconds_bucket"
    assert samples[bucket, (("le", "0.1"), ("method", "GetSignals"))] == 1
    assert samples[bucket, (("le", "1.0"), ("method", "GetSignals"))] == 3
    assert samples[bucket, (("le", "+Inf"), ("method", "GetSignals"))] == 3
    assert samples["gss_request_seconds_count", (("method", "GetSignals"),)] == 3
    assert samples["gss_request_seconds_sum", (("method", "GetSignals"),)] == pytest.approx(1.05)
    # A gauge is the writer's value, once (no per-process samples, no readers' zeros).
    sizes = [k for k in samples if k[0] == "gss_store_size_bytes"]
    assert sizes == [("gss_store_size_bytes", ())]
    assert samples["gss_store_size_bytes", ()] == 1000
