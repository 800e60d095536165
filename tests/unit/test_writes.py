"""Record validation: what PutSignals and the ingester refuse, and how they say it."""

from __future__ import annotations

import pytest

from contract.errors import InvalidArgumentError, NotFoundError
from contract.registry import Registry
from gss.writes import to_writes
from tests.helpers import count_record, dhash_record


def test_a_bad_record_is_named_by_its_index(registry: Registry) -> None:
    """The first invalid record raises with its position in the batch."""
    bad = dhash_record(1, 1)
    bad.entity_id = "not-hex"
    with pytest.raises(InvalidArgumentError, match=r"records\[1\]: entity id 'not-hex'"):
        to_writes(registry, [dhash_record(0, 1), bad])


def test_unknown_galaxy_signal_and_version_are_not_found(registry: Registry) -> None:
    """Unknown names are NotFound; a missing version is an invalid argument."""
    record = dhash_record(1, 1)
    record.galaxy = "videos"
    with pytest.raises(NotFoundError, match="videos"):
        to_writes(registry, [record])
    record = dhash_record(1, 1)
    record.signal.version = 7
    with pytest.raises(NotFoundError, match="dhash@7"):
        to_writes(registry, [record])
    record.signal.version = 0
    with pytest.raises(InvalidArgumentError, match="must name one"):
        to_writes(registry, [record])


def test_wrong_value_type_and_garbage_bytes_are_refused(registry: Registry) -> None:
    """A value of another type, or bytes that do not decode, never reach the store."""
    record = dhash_record(1, 1)
    record.value.CopyFrom(count_record(1, 1).value)
    with pytest.raises(
        InvalidArgumentError, match=r"takes gss.v1.DHash; the value is .*WindowedCount"
    ):
        to_writes(registry, [record])
    record = dhash_record(1, 1)
    record.value.value = b"\xff\xff\xff"
    with pytest.raises(InvalidArgumentError, match="does not decode"):
        to_writes(registry, [record])


def test_event_time_is_required_and_write_time_is_set(registry: Registry) -> None:
    """Writes need an event time; GSS stamps the write time."""
    record = dhash_record(1, 1)
    record.envelope.ClearField("event_time")
    with pytest.raises(InvalidArgumentError, match="event_time is required"):
        to_writes(registry, [record])
