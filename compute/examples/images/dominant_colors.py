"""images/dominant_colors@1: the image's five heaviest colours, with the fraction of pixels near each."""

import numpy as np

from compute import signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import DominantColors, WeightedColor

LEVELS = 4  # per channel: 64 colour bins
TOP = 5


@signal(galaxy="images", name="dominant_colors", version=1, source=IMAGES)
def dominant_colors(event: ImageEvent) -> DominantColors:
    """Bin pixels on a 4x4x4 RGB grid; each of the five fullest bins gives its mean colour."""
    pixels = image_array(event).reshape(-1, 3).astype(np.int64)
    bins = (pixels * LEVELS // 256) @ np.array([LEVELS * LEVELS, LEVELS, 1])
    counts = np.bincount(bins, minlength=LEVELS**3)
    colors = []
    # Ties broken by bin number, so the answer is the same everywhere.
    for b in sorted(np.flatnonzero(counts), key=lambda b: (-counts[b], b))[:TOP]:
        red, green, blue = pixels[bins == b].mean(axis=0).round().astype(int)
        colors.append(
            WeightedColor(red=red, green=green, blue=blue, weight=counts[b] / len(pixels))
        )
    return DominantColors(colors=colors)
