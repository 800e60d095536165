"""Prometheus metrics of the model client (``gss_model_*``), labelled by model name only.

Triton's own metrics (queue and compute time per model, GPU use) are on its :8002 endpoint;
these measure what the caller sees: batching, latency including retries, and errors.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from contract.metrics import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

INFERENCE_SECONDS = Histogram(
    "gss_model_inference_seconds",
    "Time of one successful Triton inference request (one batch), by model.",
    ["model_name"],
    buckets=LATENCY_BUCKETS,
)
CALL_SECONDS = Histogram(
    "gss_model_call_seconds",
    "Time from submitting one item to its result, batching wait and retries included, by model.",
    ["model_name"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "gss_model_batch_size",
    "Items per Triton inference request sent by the client, by model.",
    ["model_name"],
    buckets=BATCH_BUCKETS,
)
INFERENCES = Counter(
    "gss_model_inferences_total",
    "Items inferred successfully, by model.",
    ["model_name"],
)
ERRORS = Counter(
    "gss_model_errors_total",
    "Failed Triton requests (each attempt), by model and error kind "
    "(unavailable, not_found, invalid, deadline, internal).",
    ["model_name", "kind"],
)
RETRIES = Counter(
    "gss_model_retries_total",
    "Triton requests retried after a transient error, by model.",
    ["model_name"],
)
