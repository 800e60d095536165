"""Content events: images (photographs, rendered text, near duplicates) and pin engagement.

Two kinds of images, chosen with ``ContentGenerator(images=...)``:

- ``"photos"`` (what ``gss run`` and ``gss compute generate`` produce): realistic images,
  so the model signals mean something. Photographs shipped inside the scikit-image wheel
  (``skimage/data``: a cat, coffee, a rocket, a motorcycle, an astronaut, a cameraman,
  textures, the Hubble deep field, ...; read straight from the installed files, nothing is
  downloaded), randomly cropped and scaled to PHOTO_SIDE px on the long side; pictures of
  text (one or two lines of words rendered with Pillow's bundled font, dark on light); and
  near duplicates of earlier images: a horizontal flip, a crop of 85-95 % scaled back, a
  JPEG re-encode at quality 40-90, or a few pixels nudged.
- ``"shapes"`` (the default of ``ContentGenerator`` itself, for tests that need small, fast
  images): 32x32 RGB, a background and a few solid rectangles in palette colours with mild
  noise; near duplicates are the same picture with a few pixels nudged by one level.

A share of the images (``duplicate_fraction``) are near duplicates of a recent image, so
``images/near_duplicate_of@1`` and ``images/embedding@2`` have something to find. Pin events
are impressions, clicks and saves over a fixed set of pins, a few seconds out of order.

    gen = ContentGenerator(seed=1, images="photos")
    topic, key, event = gen.next_image(now)          # ("content.images", signature, ImageEvent)

    with running_generator(settings, rate_per_second=50):   # produce in a thread until exit
        ...

``gss compute generate`` produces to the broker or writes a JSON-lines file for
``gss signal test``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from google.protobuf import json_format
from google.protobuf.message import Message
from PIL import Image, ImageDraw, ImageFont

from compute.content import MAX_IMAGE_SIDE, image_event, pin_event
from compute.examples.images.sources import IMAGES
from compute.examples.pins.sources import PINS
from contract.errors import InvalidArgumentError
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
ImageKind = Literal["photos", "shapes"]

# Photographs inside the scikit-image wheel (skimage/data; files that skimage.data would
# fetch with pooch are not used). Each skimage.data function's docstring names its source
# and licence.
PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
PHOTO_SIDE = 256
TEXT_FRACTION = 0.3
WORDS = (
    "coffee", "garden", "summer", "recipe", "travel", "design", "kitchen", "morning",
    "sale", "today", "fresh", "ideas", "home", "winter", "city", "ocean", "bread", "music",
    "open", "daily", "street", "green", "paper", "simple", "lights", "market", "north",
)  # fmt: skip


def photo_directory() -> Path:
    """Where the installed scikit-image keeps its bundled sample images."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "scikit-image is not installed: the photo generator reads its bundled images "
            "(pip install scikit-image, part of GSS's `local` extra)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def load_photo(name: str, side: int = PHOTO_SIDE) -> Pixels:
    """A bundled photograph as RGB, scaled (area filter) so its long side is ``side`` px."""
    with Image.open(photo_directory() / name) as opened:
        picture = opened.convert("RGB")
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    pixels: Pixels = np.asarray(picture.resize(size, Image.Resampling.BOX), dtype=np.uint8)
    return pixels


def render_text(
    lines: list[str],
    *,
    font_size: int = 32,
    ink: tuple[int, int, int] = (20, 20, 30),
    paper: tuple[int, int, int] = (250, 248, 240),
    margin: int = 16,
) -> Pixels:
    """Lines of text drawn with Pillow's bundled scalable font, one under the other; the font
    shrinks until the widest line fits in an image of MAX_IMAGE_SIDE px."""
    font = ImageFont.load_default(size=font_size)
    widths = [round(font.getbbox(line)[2]) for line in lines]
    while font_size > 8 and max(widths, default=0) + 2 * margin > MAX_IMAGE_SIDE:
        font_size -= 2
        font = ImageFont.load_default(size=font_size)
        widths = [round(font.getbbox(line)[2]) for line in lines]
    line_height = int(font_size * 1.4)
    width = min(MAX_IMAGE_SIDE, max(widths, default=0) + 2 * margin)
    height = min(MAX_IMAGE_SIDE, line_height * len(lines) + 2 * margin)
    canvas = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height), line, fill=ink, font=font)
    pixels: Pixels = np.asarray(canvas, dtype=np.uint8)
    return pixels


def _scaled(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


@dataclass
class ContentGenerator:
    """Deterministic (per seed) content events; see the module docstring."""

    seed: int = 0
    duplicate_fraction: float = 0.2
    pins: int = 200
    action_weights: tuple[float, float, float] = (0.6, 0.25, 0.15)
    max_out_of_order: timedelta = timedelta(seconds=3)
    images: ImageKind = "shapes"
    _rng: np.random.Generator = field(init=False, repr=False)
    _recent: list[Pixels] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.images not in ("photos", "shapes"):
            raise InvalidArgumentError(f"images is 'photos' or 'shapes', not {self.images!r}")
        self._rng = np.random.default_rng(self.seed)

    def picture(self) -> Pixels:
        """A new picture: a photo crop or rendered text ("photos"), or 32x32 shapes."""
        if self.images == "photos":
            return self.text_picture() if self._rng.random() < TEXT_FRACTION else self.photo()
        return self.shapes()

    def photo(self) -> Pixels:
        """A random crop (70-100 % of each side) of a bundled photograph, PHOTO_SIDE px long."""
        rng = self._rng
        source = load_photo(PHOTOS[int(rng.integers(len(PHOTOS)))])
        height, width = source.shape[:2]
        crop_h = int(height * rng.uniform(0.7, 1.0))
        crop_w = int(width * rng.uniform(0.7, 1.0))
        y0 = int(rng.integers(0, height - crop_h + 1))
        x0 = int(rng.integers(0, width - crop_w + 1))
        piece = Image.fromarray(source[y0 : y0 + crop_h, x0 : x0 + crop_w])
        pixels: Pixels = np.asarray(_scaled(piece, PHOTO_SIDE), dtype=np.uint8)
        return pixels

    def text_picture(self) -> Pixels:
        """One or two lines of two to four words, dark on a light background."""
        rng = self._rng
        lines = [
            " ".join(
                WORDS[int(i)]
                for i in rng.choice(len(WORDS), size=int(rng.integers(2, 5)), replace=False)
            )
            for _ in range(int(rng.integers(1, 3)))
        ]
        ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
        paper = tuple(int(v) for v in rng.integers(215, 256, size=3))
        return render_text(
            lines,
            font_size=int(rng.integers(26, 40)),
            ink=(ink[0], ink[1], ink[2]),
            paper=(paper[0], paper[1], paper[2]),
        )

    def shapes(self) -> Pixels:
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
        """A copy of ``original`` with a different signature that is the same picture to the
        eye: "shapes" nudge a few pixels (the dhash stays within a couple of bits); "photos"
        also flip, crop or re-encode (see the module docstring)."""
        if self.images == "photos":
            return self.variant(original)
        return self.nudged(original)

    def variant(self, original: Pixels) -> Pixels:
        """A horizontal flip, a 85-95 % crop scaled back, a JPEG re-encode, or a nudge."""
        rng = self._rng
        kind = int(rng.integers(4))
        picture = Image.fromarray(original)
        if kind == 0:
            flipped: Pixels = np.ascontiguousarray(original[:, ::-1])
            return flipped
        if kind == 1:
            keep = rng.uniform(0.85, 0.95)
            width, height = picture.size
            crop_w, crop_h = max(1, int(width * keep)), max(1, int(height * keep))
            x0 = int(rng.integers(0, width - crop_w + 1))
            y0 = int(rng.integers(0, height - crop_h + 1))
            piece = picture.crop((x0, y0, x0 + crop_w, y0 + crop_h))
            cropped: Pixels = np.asarray(
                piece.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8
            )
            return cropped
        if kind == 2:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=int(rng.integers(40, 91)))
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                reencoded: Pixels = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
            return reencoded
        return self.nudged(original)

    def nudged(self, original: Pixels) -> Pixels:
        """``original`` with three pixels nudged by one level."""
        copy = original.astype(np.int16)
        height, width = original.shape[:2]
        for _ in range(3):
            y, x, c = (int(v) for v in self._rng.integers(0, (height, width, 3)))
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
    images: ImageKind = "photos",
) -> GeneratorStats:
    """Produce events at ``rate_per_second`` (event time = now) until ``stop`` or the duration."""
    from confluent_kafka import Producer

    generator = ContentGenerator(seed=seed, images=images)
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
