"""Synthetic content events: small images the project draws itself, and pin engagement.

Images are 32x32 RGB: a background and a few solid rectangles in random palette colours,
with mild noise. A share of them are near duplicates of an earlier image (the same picture
with a little noise), so ``images/near_duplicate_of@1`` has something to find. Pin events
are impressions, clicks and saves over a fixed set of pins, a few seconds out of order.

    gen = ContentGenerator(seed=1)
    topic, key, event = gen.next_image(now)          # ("content.images", signature, ImageEvent)

    with running_generator(settings, rate_per_second=50):   # produce in a thread until exit
        ...

``gss compute generate`` produces to the broker or writes a JSON-lines file for
``gss signal test``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import structlog
from google.protobuf import json_format
from google.protobuf.message import Message

from compute.content import image_event, pin_event
from compute.examples.images.sources import IMAGES
from compute.examples.pins.sources import PINS
from contract.kafka import producer_config
from contract.keys import EntityCodec, KeyType
from contract.settings import Settings
from contract.v1.content_pb2 import PinEngagementEvent

log = structlog.get_logger(__name__)

# The example plugins' sources name the topics (and the entity keys) the generator feeds.
IMAGES_TOPIC = IMAGES.topic
PINS_TOPIC = PINS.topic
_PIN_IDS = EntityCodec(KeyType.INT64)
IMAGE_SIDE = 32
_PALETTE = np.array(
    [
        [230, 57, 70],
        [241, 250, 238],
        [168, 218, 220],
        [69, 123, 157],
        [29, 53, 87],
        [255, 183, 3],
        [33, 158, 188],
        [2, 48, 71],
        [251, 133, 0],
        [106, 153, 78],
        [56, 102, 65],
        [188, 71, 73],
        [242, 232, 207],
        [20, 20, 20],
        [250, 250, 250],
    ],
    dtype=np.uint8,
)
_ACTIONS = (PinEngagementEvent.IMPRESSION, PinEngagementEvent.CLICK, PinEngagementEvent.SAVE)

Produced = tuple[str, bytes, Message]
Pixels = npt.NDArray[np.uint8]


@dataclass
class ContentGenerator:
    """Deterministic (per seed) content events; see the module docstring."""

    seed: int = 0
    duplicate_fraction: float = 0.2
    pins: int = 200
    action_weights: tuple[float, float, float] = (0.6, 0.25, 0.15)
    max_out_of_order: timedelta = timedelta(seconds=3)
    _rng: np.random.Generator = field(init=False, repr=False)
    _recent: list[Pixels] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def picture(self) -> Pixels:
        """A new 32x32 RGB picture: background, 2-5 rectangles, mild noise."""
        rng = self._rng
        colors = _PALETTE[rng.choice(len(_PALETTE), size=6, replace=False)]
        canvas = np.empty((IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.int16)
        canvas[:] = colors[0]
        for color in colors[1 : 1 + rng.integers(2, 6)]:
            y0, x0 = rng.integers(0, IMAGE_SIDE - 4, size=2)
            y1, x1 = (
                y0 + rng.integers(4, IMAGE_SIDE - y0 + 1),
                x0 + rng.integers(4, IMAGE_SIDE - x0 + 1),
            )
            canvas[y0:y1, x0:x1] = color
        return self._noisy(canvas, 6)

    def near_duplicate(self, original: Pixels) -> Pixels:
        """``original`` with a few pixels nudged by one level: a different signature, the
        same picture to the eye (its dhash stays within a couple of bits)."""
        copy = original.astype(np.int16)
        for _ in range(3):
            y, x, c = (int(v) for v in self._rng.integers(0, (IMAGE_SIDE, IMAGE_SIDE, 3)))
            copy[y, x, c] += 1 if copy[y, x, c] < 255 else -1
        return copy.astype(np.uint8)

    def _noisy(self, canvas: npt.NDArray[np.int16], amplitude: int) -> Pixels:
        noise = self._rng.integers(-amplitude, amplitude + 1, size=canvas.shape)
        noisy: Pixels = np.clip(canvas + noise, 0, 255).astype(np.uint8)
        return noisy

    def next_image(self, now: datetime) -> Produced:
        if self._recent and self._rng.random() < self.duplicate_fraction:
            pixels = self.near_duplicate(self._recent[self._rng.integers(len(self._recent))])
        else:
            pixels = self.picture()
            self._recent = [*self._recent[-99:], pixels]
        event = image_event(pixels, now)
        return IMAGES_TOPIC, event.image_signature, event

    def next_pin(self, now: datetime) -> Produced:
        rng = self._rng
        pin_id = int(rng.integers(1, self.pins + 1))
        action = _ACTIONS[rng.choice(3, p=np.array(self.action_weights) / sum(self.action_weights))]
        lag = timedelta(seconds=float(rng.random()) * self.max_out_of_order.total_seconds())
        event = pin_event(pin_id, action, int(rng.integers(1, 10_000)), now - lag)
        return PINS_TOPIC, _PIN_IDS.to_bytes(pin_id), event

    def events(
        self,
        count: int,
        start: datetime,
        step: timedelta = timedelta(milliseconds=100),
        image_share: float = 0.5,
    ) -> Iterator[Produced]:
        """``count`` events, alternating kinds at random, event times ``step`` apart."""
        for i in range(count):
            now = start + i * step
            yield self.next_image(now) if self._rng.random() < image_share else self.next_pin(now)


def write_jsonl(events: Iterator[Produced], out: IO[str]) -> int:
    """Events as ``{"topic": ..., "event": <protobuf JSON>}`` lines (``gss signal test`` input)."""
    count = 0
    for topic, _, event in events:
        out.write(json.dumps({"topic": topic, "event": json_format.MessageToDict(event)}) + "\n")
        count += 1
    return count


@dataclass
class GeneratorStats:
    images: int = 0
    pins: int = 0
    errors: int = 0


def produce(
    settings: Settings,
    *,
    rate_per_second: float,
    stop: threading.Event,
    duration_seconds: float | None = None,
    image_share: float = 0.5,
    seed: int = 0,
    on_produced: Any = None,
) -> GeneratorStats:
    """Produce events at ``rate_per_second`` (event time = now) until ``stop`` or the duration."""
    from confluent_kafka import Producer

    generator = ContentGenerator(seed=seed)
    producer = Producer(
        producer_config(settings.kafka, "gss-content-generator", delivery_timeout_seconds=30.0)
    )
    stats = GeneratorStats()

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            stats.errors += 1
            log.warning("content_event_not_delivered", topic=msg.topic(), error=str(err))

    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if duration_seconds is not None and elapsed >= duration_seconds:
            break
        due = int(elapsed * rate_per_second) + 1
        while sent < due and not stop.is_set():
            now = datetime.now(UTC)
            topic, key, event = (
                generator.next_image(now)
                if generator._rng.random() < image_share
                else generator.next_pin(now)
            )
            producer.produce(
                topic,
                key=key,
                value=event.SerializeToString(),
                timestamp=int(now.timestamp() * 1000),
                on_delivery=delivered,
            )
            if on_produced is not None:
                on_produced(topic, key, event)
            if topic == IMAGES_TOPIC:
                stats.images += 1
            else:
                stats.pins += 1
            sent += 1
        producer.poll(0)
        stop.wait(min(0.05, max(0.0, (sent / rate_per_second) - (time.monotonic() - started))))
    producer.flush(10)
    log.info("content_generator_stopped", images=stats.images, pins=stats.pins, errors=stats.errors)
    return stats


@contextlib.contextmanager
def running_generator(
    settings: Settings, rate_per_second: float = 20.0, **kwargs: Any
) -> Iterator[threading.Event]:
    """Produce content events in a background thread while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(
        target=produce,
        name="gss-content-generator",
        daemon=True,
        kwargs={"settings": settings, "rate_per_second": rate_per_second, "stop": stop, **kwargs},
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=15)
