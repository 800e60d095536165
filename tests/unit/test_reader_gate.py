"""The multi-process gate (gss.readers): events and acknowledged writes wait for every reader."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from contract.keys import store_key
from contract.registry import Registry
from contract.v1 import envelope_pb2
from gss.kafka.meta import encode_offset, offset_key
from gss.readers import BOUND, DEAD, JOINED, STARTING, Board, ReaderGate, stored_positions_applied
from store.db import SignalStore, Write


def _boards(tmp_path: Path, slots: int = 2) -> tuple[Board, Board]:
    """The writer's board and a reader's view of the same shared file."""
    writer = Board(tmp_path / "board", slots, create=True)
    return writer, Board(tmp_path / "board", slots)


def _gate(board: Board, timeout: float = 5.0) -> tuple[ReaderGate, list[int]]:
    evicted: list[int] = []

    def evict(slot: int) -> None:
        evicted.append(slot)
        board.mark_dead(slot)

    return ReaderGate(board, timeout, evict, poll_seconds=0.001), evicted


def test_board_is_shared_between_mappings(tmp_path: Path) -> None:
    writer, reader = _boards(tmp_path)
    writer.assign(1)
    reader.register(1, 4242)
    reader.join(1)
    reader.report(1, 17)
    writer.want(30)
    writer.want(20)  # never lowered
    writer.set_serving(True)
    assert (writer.pid(1), writer.state(1), writer.sequence(1)) == (4242, JOINED, 17)
    assert (reader.wanted, reader.serving, reader.stopping) == (30, True, False)
    assert writer.gated() == [1]
    writer.set_stopping()
    assert reader.stopping


def test_wait_returns_at_once_when_every_reader_is_there(tmp_path: Path) -> None:
    writer, reader = _boards(tmp_path)
    gate, evicted = _gate(writer)
    gate.wait(10)  # no reader in the gate
    for slot in (0, 1):
        writer.assign(slot)
        reader.join(slot)
        reader.report(slot, 10)
    gate.wait(10)
    assert gate.waits == 0
    assert not evicted


def test_wait_blocks_until_every_reader_reports_the_sequence(tmp_path: Path) -> None:
    writer, reader = _boards(tmp_path)
    for slot in (0, 1):
        writer.assign(slot)
        reader.join(slot)
        reader.report(slot, 5)
    reader.bound(1)
    gate, evicted = _gate(writer)

    def catch_up() -> None:
        # A reader process: sees the wanted sequence, catches up, reports.
        deadline = time.monotonic() + 5
        while reader.wanted < 9 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        reader.report(0, 9)
        time.sleep(0.05)
        reader.report(1, 12)

    thread = threading.Thread(target=catch_up)
    start = time.monotonic()
    thread.start()
    gate.wait(9)
    waited = time.monotonic() - start
    thread.join()
    assert 0.09 <= waited < 2
    assert writer.wanted == 9
    assert not evicted
    assert min(writer.sequence(s) for s in (0, 1)) >= 9


def test_readers_not_joined_or_dead_are_not_waited_for(tmp_path: Path) -> None:
    writer, reader = _boards(tmp_path)
    writer.assign(0)  # STARTING: it joins (and catches up after joining) before it serves
    assert writer.state(0) == STARTING
    writer.assign(1)
    reader.join(1)
    reader.report(1, 1)
    writer.mark_dead(1)
    assert writer.state(1) == DEAD
    gate, evicted = _gate(writer)
    start = time.monotonic()
    gate.wait(100)
    assert time.monotonic() - start < 0.1
    assert not evicted


def test_a_reader_that_never_catches_up_is_evicted_within_the_timeout(tmp_path: Path) -> None:
    writer, reader = _boards(tmp_path)
    for slot in (0, 1):
        writer.assign(slot)
        reader.join(slot)
        reader.report(slot, 3)
    reader.bound(0)
    gate, evicted = _gate(writer, timeout=0.3)

    def healthy() -> None:  # slot 1 keeps up; slot 0 is stuck (alive, heartbeating, behind)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and writer.state(0) != DEAD:
            reader.report(1, 8)
            reader.beat(0)
            time.sleep(0.005)

    thread = threading.Thread(target=healthy)
    thread.start()
    start = time.monotonic()
    gate.wait(8)
    waited = time.monotonic() - start
    thread.join()
    assert evicted == [0]
    assert 0.3 <= waited < 1.5
    assert gate.evictions == 1
    assert writer.gated() == [1]
    assert writer.state(0) == DEAD
    assert BOUND not in (writer.state(0),)


def test_a_reader_with_a_stale_heartbeat_is_evicted_without_waiting_the_timeout(
    tmp_path: Path,
) -> None:
    writer, reader = _boards(tmp_path, slots=1)
    writer.assign(0)
    reader.join(0)
    reader.report(0, 1)
    # Its heartbeat is already older than the timeout: hung (or SIGSTOPped).
    writer.cells[4 + 3] = time.monotonic_ns() - 10 * 10**9
    gate, evicted = _gate(writer, timeout=2.0)
    start = time.monotonic()
    gate.wait(2)
    assert evicted == [0]
    assert time.monotonic() - start < 0.5


def test_concurrent_waiters_evict_a_reader_once(tmp_path: Path) -> None:
    writer, reader = _boards(tmp_path, slots=1)
    writer.assign(0)
    reader.join(0)
    reader.report(0, 1)
    gate, evicted = _gate(writer, timeout=0.2)
    threads = [threading.Thread(target=gate.wait, args=(5 + i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert evicted == [0]


def test_secondary_sees_writes_after_catch_up_and_refuses_writes(
    tmp_path: Path, registry: Registry
) -> None:
    galaxies = list(registry.galaxies)
    with SignalStore(tmp_path / "store", galaxies, sync_writes=False) as primary:
        key = store_key((7).to_bytes(8, "big"), "save_count_1h", 1)
        reader = SignalStore(tmp_path / "store", galaxies, secondary_path=tmp_path / "sec")
        try:
            assert reader.get_many("pins", [key]) == [None]
            primary.apply([Write("pins", key, b"\x01" + bytes(16) + b"x")])
            target = primary.sequence()
            assert reader.sequence() < target
            assert reader.get_many("pins", [key]) == [None]  # not caught up yet
            assert reader.catch_up() >= target
            assert reader.get_many("pins", [key])[0] is not None
            with pytest.raises(RuntimeError, match="read-only"):
                reader.apply([Write("pins", key, b"\x01" + bytes(17))])
        finally:
            reader.close()


def test_min_positions_from_stored_offsets(tmp_path: Path, registry: Registry) -> None:
    with SignalStore(tmp_path / "store", list(registry.galaxies), sync_writes=False) as store:
        store.apply([], meta={offset_key("gss.pins.changelog", 2): encode_offset(11)})

        def position(partition: int, offset: int) -> envelope_pb2.ChangelogPosition:
            return envelope_pb2.ChangelogPosition(
                topic="gss.pins.changelog", partition=partition, offset=offset
            )

        assert stored_positions_applied(store, [position(2, 10)])  # next offset 11: 10 applied
        assert not stored_positions_applied(store, [position(2, 11)])
        assert not stored_positions_applied(store, [position(2, 3), position(1, 0)])
        assert stored_positions_applied(store, [])
