"""images/dhash@1: the 64-bit difference hash of the image (a perceptual hash)."""

import numpy as np
import numpy.typing as npt

from compute import signal
from compute.content import image_array
from compute.examples.images.sources import IMAGES
from compute.triton.inputs import resize
from contract.v1.content_pb2 import ImageEvent
from contract.v1.signals_pb2 import DHash


def difference_hash(pixels: npt.NDArray[np.uint8]) -> int:
    """Greyscale, area-resize to 9x8, one bit per horizontal neighbour pair (left brighter)."""
    grey = (pixels.astype(np.float64) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    small = resize(grey[:, :, None], height=8, width=9)[:, :, 0].astype(np.int16)
    bits = (small[:, :-1] > small[:, 1:]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@signal(galaxy="images", name="dhash", version=1, source=IMAGES)
def dhash(event: ImageEvent) -> DHash:
    return DHash(hash=difference_hash(image_array(event)))
