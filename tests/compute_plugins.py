"""Test-only plugins of the ``tests`` galaxy (tests/compute_support.py registers it).

They read PinEngagementEvent (entity: pin_id) from test topics and write DHash values whose
hash is derived from ``user_id``, so a test controls every value it expects.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta
from pathlib import Path

from compute import (
    GroupBy,
    Inputs,
    Join,
    Plugin,
    Retry,
    Sliding,
    Source,
    Sum,
    Tumbling,
    WindowSpan,
    signal,
)
from contract.v1.content_pb2 import PinEngagementEvent
from contract.v1.signals_pb2 import DHash, DominantColors


def source(topic: str) -> Source[PinEngagementEvent]:
    return Source(
        topic=topic,
        schema=PinEngagementEvent,
        entity="pin_id",
        max_out_of_orderness=timedelta(seconds=1),
    )


@signal(galaxy="tests", name="left", version=1, source=source("test.left"))
def left(event: PinEngagementEvent) -> DHash:
    return DHash(hash=event.user_id)


@signal(galaxy="tests", name="right", version=1, source=source("test.right"))
def right(event: PinEngagementEvent) -> DHash:
    return DHash(hash=event.user_id)


@signal(
    galaxy="tests",
    name="both",
    version=1,
    join=Join(inputs=("left", "right@1"), ttl=timedelta(hours=1)),
)
def both(inputs: Inputs) -> DHash:
    """Defined only when both sides are known: left * 1000 + right."""
    return DHash(
        hash=inputs.get_as("left", DHash).hash * 1000 + inputs.get_as("right@1", DHash).hash
    )


UNLUCKY = 13  # always raises: retried, then dead-lettered
SHAKY = 7  # raises on its first attempt only: retried, then written
WRONG_TYPE = 0  # returns the wrong message type: dead-lettered without retries
_attempts: Counter[int] = Counter()


@signal(
    galaxy="tests",
    name="flaky",
    version=1,
    source=source("test.flaky"),
    retry=Retry(attempts=3, backoff=timedelta(milliseconds=10)),
)
def flaky(event: PinEngagementEvent) -> DHash | DominantColors:
    _attempts[event.pin_id] += 1
    if event.user_id == UNLUCKY:
        raise ValueError(f"pin {event.pin_id}: user {UNLUCKY} is unlucky")
    if event.user_id == SHAKY and _attempts[event.pin_id] == 1:
        raise ConnectionError("transient: try again")
    if event.user_id == WRONG_TYPE:
        return DominantColors()
    return DHash(hash=event.user_id)


@signal(
    galaxy="tests",
    name="sliding",
    version=1,
    source=source("test.sliding"),
    group_by=GroupBy(
        window=Sliding(size=timedelta(minutes=10), slide=timedelta(minutes=5)),
        aggregate=Sum(of=lambda event: event.user_id),
    ),
)
def sliding(total: float, window: WindowSpan) -> DHash:
    """Sum of user ids in a 10-minute window, every 5 minutes; hash = sum * 1e6 + start minute."""
    return DHash(hash=int(total) * 1_000_000 + window.start.hour * 60 + window.start.minute)


@signal(
    galaxy="tests",
    name="early",
    version=1,
    source=source("test.early"),
    group_by=GroupBy(
        window=Tumbling(timedelta(hours=1)),
        aggregate=Sum(of=lambda event: event.user_id),
        early_firing=timedelta(milliseconds=200),
    ),
)
def early(total: float, window: WindowSpan) -> DHash:
    """Sum of user ids in an hour, readable while the hour is open; hash = sum."""
    return DHash(hash=int(total))


@signal(
    galaxy="tests",
    name="trailing",
    version=1,
    source=source("test.trailing"),
    group_by=GroupBy(
        window=Sliding(size=timedelta(minutes=10), slide=timedelta(minutes=5)),
        aggregate=Sum(of=lambda event: event.user_id),
        early_firing=timedelta(milliseconds=200),
    ),
)
def trailing(total: float, window: WindowSpan) -> DHash:
    """Sum of user ids in the trailing 10 minutes, readable at once; hash = sum * 1e6 + start minute."""
    return DHash(hash=int(total) * 1_000_000 + window.start.hour * 60 + window.start.minute)


def crashing_plugin(marker: Path) -> Plugin:
    """A plugin that kills its Python worker the first time it sees user 666 (then writes as usual)."""

    @signal(galaxy="tests", name="crashy", version=1, source=source("test.crashy"))
    def crashy(event: PinEngagementEvent) -> DHash:
        if event.user_id == 666 and not marker.exists():
            marker.write_text(f"crashed once in {os.getpid()}")
            os._exit(3)
        return DHash(hash=event.user_id)

    return crashy


PLUGINS = [left, right, both, flaky, sliding, early, trailing]
