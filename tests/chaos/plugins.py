"""The plugins the chaos run's Flink job runs (``--plugins tests/chaos/plugins.py``): two pure
ones and, unless models are left out, one that calls Triton (so a killed Triton shows up as
retries and dead letters). ``GSS_CHAOS_MODELS=0`` leaves the model plugin out."""

from __future__ import annotations

import os

from compute.examples.images.dhash import dhash
from compute.examples.images.dominant_colors import dominant_colors

if os.environ.get("GSS_CHAOS_MODELS", "1") != "0":
    from compute.examples.images.safety_score import safety_score

    __all__ = ["dhash", "dominant_colors", "safety_score"]
else:
    __all__ = ["dhash", "dominant_colors"]
