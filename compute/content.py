"""Content events in and out of their protobuf form: the helpers plugins and producers share.

The schemas are ``gss.v1.ImageEvent`` and ``gss.v1.PinEngagementEvent`` (proto/gss/v1/content.proto).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import numpy as np
import numpy.typing as npt

from contract.errors import InvalidArgumentError
from contract.v1.content_pb2 import ImageEvent, PinEngagementEvent

Image = npt.NDArray[np.uint8]

# Raw RGB travels inside one Kafka record; larger images belong in object storage.
MAX_IMAGE_SIDE = 512


def image_array(event: ImageEvent) -> Image:
    """The event's pixels as a ``uint8 [height, width, 3]`` array (a view, not a copy)."""
    expected = event.width * event.height * 3
    if not event.width or not event.height or len(event.rgb) != expected:
        raise InvalidArgumentError(
            f"image {event.image_signature.hex()}: {len(event.rgb)} RGB bytes do not fill "
            f"{event.width}x{event.height}x3 = {expected}"
        )
    return np.frombuffer(event.rgb, dtype=np.uint8).reshape(event.height, event.width, 3)


def image_event(pixels: Image, event_time: datetime) -> ImageEvent:
    """An ImageEvent for ``uint8 [H, W, 3]`` pixels; its signature is the MD5 of the RGB bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidArgumentError(
            f"pixels must be uint8 [H, W, 3], got {pixels.dtype} {pixels.shape}"
        )
    height, width = pixels.shape[:2]
    if max(height, width) > MAX_IMAGE_SIDE:
        raise InvalidArgumentError(
            f"images are at most {MAX_IMAGE_SIDE} px a side, got {width}x{height}"
        )
    rgb = np.ascontiguousarray(pixels).tobytes()
    event = ImageEvent(
        image_signature=hashlib.md5(rgb).digest(), width=width, height=height, rgb=rgb
    )
    event.event_time.FromDatetime(event_time)
    return event


def pin_event(pin_id: int, action: int, user_id: int, event_time: datetime) -> PinEngagementEvent:
    """A PinEngagementEvent (``action`` is e.g. ``PinEngagementEvent.SAVE``)."""
    event = PinEngagementEvent(pin_id=pin_id, action=action, user_id=user_id)  # type: ignore[arg-type]
    event.event_time.FromDatetime(event_time)
    return event
