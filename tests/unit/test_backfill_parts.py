"""Backfill pieces without a broker: the outbox's backfill queue, the job's settings, the
history filter's end, checkpoints to resume from, the verb's arguments (docs/history.md,
"Backfill"). End to end: tests/integration/test_signal_backfill.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import dhash_record

from compute.flink import backfill as plan
from compute.flink import gateway
from compute.flink.job import flink_configuration, latest_checkpoint
from compute.flink.operators import KeepFrom
from contract.registry import Registry
from contract.settings import KafkaSettings, load_settings
from contract.v1 import events_pb2
from gss.cli import main
from gss.kafka.meta import BACKFILL_OUTBOX_PREFIX, OUTBOX_PREFIX, OutboxEntry, outbox_sequence
from gss.kafka.outbox import Outbox
from gss.writes import to_write
from store.db import SignalStore


def test_backfilled_values_wait_in_their_own_outbox_queue_marked(
    store: SignalStore, registry: Registry
) -> None:
    outbox = Outbox(store, registry, KafkaSettings())
    live = dhash_record(1, 10, seconds=1)
    marked = dhash_record(2, 20, seconds=1)
    marked.envelope.backfill = True
    outbox.apply_with_events([to_write(registry, r, write_time_us=1) for r in (live, marked)])
    live_entries = [OutboxEntry.decode(v) for _, v in store.scan_meta(OUTBOX_PREFIX)]
    backfill_entries = list(store.scan_meta(BACKFILL_OUTBOX_PREFIX))
    assert len(live_entries) == 1
    assert len(backfill_entries) == 1
    assert not events_pb2.SignalAvailable.FromString(live_entries[0].value).backfill
    event = events_pb2.SignalAvailable.FromString(OutboxEntry.decode(backfill_entries[0][1]).value)
    assert event.backfill
    assert outbox.depth == 2
    # A restarted outbox counts both queues and keeps sequences growing past both.
    again = Outbox(store, registry, KafkaSettings())
    assert again.depth == 2
    assert again._next_key() > OUTBOX_PREFIX + backfill_entries[0][0][-8:]
    assert outbox_sequence(backfill_entries[0][0]) > 0


def test_backfill_job_settings(tmp_path: Path) -> None:
    settings = load_settings(compute={"checkpoint_dir": (tmp_path / "chk").as_uri()})
    plugin = plan.find_plugin(settings, "images/dhash@1")
    since = datetime(2030, 1, 1, tzinfo=UTC)
    out = plan.compute_overrides(
        settings, plugin, since=since, until=None, rate_per_second=50.0, continue_live=False
    )
    assert out["job_name"] == "gss-backfill-images-dhash-v1"
    assert out["backfill"] is True
    assert out["history_bounded"] is True
    assert out["history_rate_per_second"] == 50.0
    assert out["checkpoint_dir"] == (tmp_path / "chk").as_uri() + "/gss-backfill-images-dhash-v1"
    job = load_settings(compute={**out, "mode": "remote", "jobmanager_address": "jm:8081"})
    try:
        conf = flink_configuration(job)  # a Java object: starts the gateway JVM
        retention = "execution.checkpointing.externalized-checkpoint-retention"
        assert conf.get_string(retention, "") == "RETAIN_ON_CANCELLATION"
        assert conf.get_string("execution.state-recovery.path", "") == ""
    finally:
        gateway.shutdown()


def test_until_drops_records_from_then_on() -> None:
    keep = KeepFrom(1_000, {}, 2_000)
    row = [0, 5, 0, b"k", b"v"]
    assert [keep([*row[:2], ts, *row[3:]]) for ts in (999, 1_000, 1_999, 2_000)] == [
        False,
        True,
        True,
        False,
    ]


def test_the_newest_completed_checkpoint_is_resumed(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path.as_uri()) is None
    for job, n, done in (("a", 3, True), ("b", 7, True), ("b", 8, False)):
        chk = tmp_path / job / f"chk-{n}"
        chk.mkdir(parents=True)
        if done:
            (chk / "_metadata").write_bytes(b"x")
    assert latest_checkpoint(tmp_path.as_uri()) == (tmp_path / "b" / "chk-7").as_uri()
    assert latest_checkpoint("s3://bucket/checkpoints") is None
    plan.clear_checkpoints(tmp_path.as_uri())
    assert not tmp_path.exists()


def test_the_verb_checks_its_arguments() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["signal", "backfill", "images/dhash", "--since", "-1h"])
    assert result.exit_code != 0
    assert "name the version" in result.output
    result = runner.invoke(main, ["signal", "backfill", "images/nope@1", "--since", "-1h"])
    assert "no plugin computes images/nope@1" in result.output
    result = runner.invoke(main, ["signal", "backfill", "images/dhash@1", "--since", "soon"])
    assert result.exit_code == 2
    result = runner.invoke(
        main, ["signal", "backfill", "images/dhash@1", "--since", "-1h", "--rate", "fast"]
    )
    assert "is not N or N/s" in result.output


class _FakeProducer:
    """Acknowledges every record at the next poll; remembers what was produced."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._pending: list[Any] = []

    def produce(
        self, topic: str, *, value: bytes, key: Any, headers: Any, on_delivery: Any
    ) -> None:
        self.sent.append(value)
        self._pending.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        pending, self._pending = self._pending, []
        for report in pending:
            report(None, None)
        return len(pending)


def test_backfill_events_are_published_after_live_ones_at_a_bounded_rate(
    store: SignalStore, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gss.kafka import publisher as publisher_module

    kafka = KafkaSettings(backfill_events_per_second=4.0)
    outbox = Outbox(store, registry, kafka)
    marked = []
    for n in range(10):
        record = dhash_record(100 + n, n, seconds=1)
        record.envelope.backfill = True
        marked.append(to_write(registry, record, write_time_us=1))
    outbox.apply_with_events(marked)
    outbox.apply_with_events(
        [to_write(registry, dhash_record(n, n, seconds=1), write_time_us=1) for n in range(3)]
    )
    clock = [1000.0]
    monkeypatch.setattr(publisher_module.time, "monotonic", lambda: clock[0])
    publisher = publisher_module.OutboxPublisher(outbox, kafka, registry)
    fake = _FakeProducer()
    monkeypatch.setattr(publisher, "_new_producer", lambda: fake)

    def flags() -> list[bool]:
        return [events_pb2.SignalAvailable.FromString(v).backfill for v in fake.sent]

    state: tuple[Any, ...] = publisher._step(None, None, set(), 0.5)
    # The live entries first (committed later, still ahead), then a burst of 4 backfill ones.
    assert flags() == [False] * 3 + [True] * 4
    state = publisher._step(*state)
    assert len(fake.sent) == 7  # no token left
    clock[0] += 0.5
    state = publisher._step(*state)
    assert flags() == [False] * 3 + [True] * 6
    clock[0] += 10.0  # the bucket holds one second's worth at most
    state = publisher._step(*state)
    assert flags() == [False] * 3 + [True] * 10
    assert outbox.depth == 0
