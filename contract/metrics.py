"""Conventions every part's Prometheus metrics share, so dashboards can put them side by side.

Names carry the ``gss_`` prefix and base units (``_seconds``, ``_bytes``); labels are bounded
(galaxy, signal, model, method, code), never an entity id.
"""

from __future__ import annotations

# Latency histograms (lookups, model calls, freshness) use one set of buckets, in seconds.
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
