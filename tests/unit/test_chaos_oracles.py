"""The chaos suite's oracles count what they must: fed a faulty history, each figure moves
(an oracle that cannot fail proves nothing)."""

from __future__ import annotations

from types import SimpleNamespace

from contract.v1.signals_pb2 import DHash
from tests.chaos.load import Delivered, WriterModel
from tests.chaos.oracles import check_events, check_writer
from tests.chaos.run import ALL_KINDS, Options, _schedule


def _d(event_id: str, entity: str, t: int, offset: int, value: bytes = b"v") -> Delivered:
    return Delivered(event_id, entity, "dhash@1", t, 0, offset, value, False)


def test_a_clean_history_counts_nothing() -> None:
    applied = {(0, 1): ("a", "dhash@1", 10), (0, 2): ("a", "dhash@1", 20)}
    check = check_events([_d("e1", "a", 10, 1), _d("e2", "a", 20, 2)], applied)
    assert (check.lost, check.duplicates, check.order_inversions, check.unexpected) == (0, 0, 0, 0)
    assert check.unique_ids == check.expected == 2


def test_losses_duplicates_inversions_and_inconsistent_redeliveries_are_counted() -> None:
    applied = {(0, o): ("a", "dhash@1", o * 10) for o in (1, 2, 3, 4)}
    delivered = [
        _d("e2", "a", 20, 2),
        _d("e1", "a", 10, 1),  # older after newer: an inversion
        _d("e2", "a", 20, 2),  # a redelivery, same content: dropped by dedupe
        _d("e1", "a", 10, 1, b"other"),  # same id, other content
        _d("e3", "a", 30, 3),
        _d("e3b", "a", 30, 3),  # the same value under a second id: a duplicate
        _d("e9", "a", 90, 9),  # an event for no applied value
        # (0, 4) never delivered: lost
    ]
    check = check_events(delivered, applied, on_topic={(0, 4): {"e4"}})
    assert check.lost == 1
    assert check.lost_but_on_topic == 1
    assert check.duplicates == 1
    assert check.order_inversions == 1
    assert check.redeliveries == 2
    assert check.redelivered_different == 1
    assert check.unexpected == 1


def test_the_schedule_is_seeded_and_covers_every_kind() -> None:
    options = Options(faults=14, seed=3, duration=100.0)
    first, again = _schedule(options, _rng(3)), _schedule(options, _rng(3))
    assert first == again
    assert sorted(k for _, k in first) == sorted(ALL_KINDS * 2)
    assert all(0 <= t <= 100 for t, _ in first)
    assert [t for t, _ in first] == sorted(t for t, _ in first)
    assert _schedule(options, _rng(4)) != first


class _Store:
    """GetSignals over a dict: entity -> stored DHash value (absent: NOT_FOUND)."""

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values

    def get(self, galaxy: str, ids: list[str], signals: list[str]) -> list[SimpleNamespace]:
        rows = []
        for entity in ids:
            stored = self.values.get(entity)
            cell = SimpleNamespace(
                found=stored is not None, value=None if stored is None else DHash(hash=stored)
            )
            rows.append(SimpleNamespace(signals=dict.fromkeys(signals, cell)))
        return rows


def test_the_writer_oracle_counts_lost_and_stale_acknowledged_writes() -> None:
    model = WriterModel()
    model.acked.update(a=1, b=1, c=2, d=3)
    model.pending.update(b=[5], e=[7])  # b: a later call failed; e: never acknowledged
    store = _Store({"a": 1, "b": 5, "c": 1})  # c: an older value; d: gone; e: not applied
    check = check_writer(store, model, "dhash@1")  # type: ignore[arg-type]
    assert (check.equal_last_acked, check.equal_unknown_outcome, check.lost) == (1, 1, 2)
    assert check.keys == 5


def _rng(seed: int):  # type: ignore[no-untyped-def]
    import random

    return random.Random(seed)


def test_applied_records_follow_the_stores_rules() -> None:
    """Newer (event time, offset) wins; an older event time is skipped; the same value at the
    same event time again (a retried PutSignals, a job replaying after a restart) is no new
    value, so no event either; a different value at the same event time wins by offset."""
    from tests.chaos.oracles import applied_records
    from tests.helpers import dhash_record

    def rec(value: int, seconds: float) -> object:
        return dhash_record(1, value, seconds=seconds)

    history = [
        (0, 10, rec(1, 5.0)),
        (0, 11, rec(1, 5.0)),  # a repeat: skipped
        (0, 12, rec(2, 4.0)),  # older: skipped
        (0, 13, rec(3, 5.0)),  # same time, other value: later offset wins
        (0, 14, rec(4, 6.0)),
    ]
    assert sorted(applied_records(history)) == [(0, 10), (0, 13), (0, 14)]  # type: ignore[arg-type]
