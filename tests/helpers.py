"""Small builders shared by tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from clients.lookup import make_record
from contract.v1 import envelope_pb2, signals_pb2

BASE_TIME = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def image_id(n: int) -> str:
    """A deterministic 16-byte image signature in hex."""
    return n.to_bytes(16, "big").hex()


def dhash_record(
    n: int, value: int, *, seconds: float = 0.0, producer: str = "test"
) -> envelope_pb2.SignalRecord:
    """images/dhash@1 for image ``n`` with event time BASE_TIME + ``seconds``."""
    return make_record(
        "images",
        image_id(n),
        "dhash@1",
        signals_pb2.DHash(hash=value),
        event_time=BASE_TIME + timedelta(seconds=seconds),
        producer=producer,
    )


def count_record(
    pin: int, count: int, *, event_time: datetime | None = None
) -> envelope_pb2.SignalRecord:
    """pins/save_count_1h@1 for ``pin``, by default with event time now (the signal has a 2h TTL)."""
    return make_record(
        "pins",
        pin,
        "save_count_1h@1",
        signals_pb2.WindowedCount(count=count),
        event_time=event_time or datetime.now(UTC),
    )
