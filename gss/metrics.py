"""Prometheus metrics of the GSS server, under the names dashboards already query.

gRPC: go-grpc-prometheus's ``grpc_server_handled_total`` and ``grpc_server_handling_seconds``.
Domain: ``gss_*`` with base units; labels are bounded (galaxy, signal, method, code), never ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

import gss

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

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
STORE_SIZE = Gauge("gss_store_size_bytes", "SST files plus memtables of the signal store.")
STORE_KEYS = Gauge("gss_store_values", "Estimated stored values, by galaxy.", ["galaxy"])
