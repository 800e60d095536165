"""`gss store rebuild` against a real broker, a real ingester, a real archiver and RocksDB:
store A fed by the ingester, its changelogs archived, store B rebuilt from the archive equals
A for every key (write times aside) and holds the same offsets; the live tail then reaches
both, and B (its ingester resuming from the rebuilt offsets) still equals A. A rebuild cut
short and run again with --force reaches the same state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import count_record, dhash_record
from kafka_support import kafka_overrides, produce

from contract.registry import Registry
from contract.settings import ArchiveSettings, KafkaSettings
from contract.topics import TopicKind, ensure_topics, topic_name
from contract.v1 import envelope_pb2
from gss.archive.archiver import Archiver
from gss.archive.storage import open_storage
from gss.cli import main
from gss.kafka.ingester import Ingester, stored_offsets
from gss.kafka.meta import OUTBOX_PREFIX, topic_id_key
from gss.kafka.outbox import Outbox
from gss.local.broker import LocalBroker
from gss.rebuild import RebuildStats, rebuild_store, verify_stores
from store.db import SignalStore
from tests.archive_support import wait_archived

pytestmark = pytest.mark.integration

GALAXIES = ("images", "pins")


@dataclass
class Fed:
    """Store A with its running ingester, the archive of its changelogs, and a checkpoint of A
    taken when the archive covered everything A had applied."""

    kafka: KafkaSettings
    store: SignalStore
    ingester: Ingester
    archive_root: Path
    checkpoint: Path
    config: Path
    records: int


def _positions(
    kafka: KafkaSettings, galaxy: str, acked: list[tuple[int, int]]
) -> list[envelope_pb2.ChangelogPosition]:
    topic = topic_name(kafka, TopicKind.CHANGELOG, galaxy)
    return [envelope_pb2.ChangelogPosition(topic=topic, partition=p, offset=o) for p, o in acked]


def _feed(kafka: KafkaSettings, registry: Registry, ingester: Ingester, first: int) -> dict:
    """Records for both galaxies: values, newer values superseding some, older ones that lose,
    and a malformed record (a dead letter). Waits until ``ingester`` applied them all."""
    images = [dhash_record(first + i, i) for i in range(40)]
    images += [dhash_record(first + i, 1000 + i, seconds=5) for i in range(0, 40, 3)]  # newer
    images += [dhash_record(first + i, 2000 + i, seconds=-5) for i in range(1, 40, 4)]  # older
    acked = {"images": produce(kafka, registry, images)}
    acked["images"] += produce(kafka, registry, [(b"junk", b"\xff\x00 not a record")])
    pins = [count_record(first + i, i) for i in range(30)]
    pins += [count_record(first + i, 500 + i) for i in range(0, 30, 2)]  # same time, later offset
    acked["pins"] = produce(kafka, registry, pins, galaxy="pins")
    positions = [p for g in GALAXIES for p in _positions(kafka, g, acked[g])]
    assert ingester.wait_applied(positions, timeout_seconds=60)
    return acked


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as local:
        yield local


@pytest.fixture(scope="module")
def fed(
    broker: LocalBroker, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fed]:
    work = tmp_path_factory.mktemp("rebuild")
    overrides = kafka_overrides(broker.bootstrap_servers)
    kafka = KafkaSettings.model_validate(overrides)
    ensure_topics(kafka, registry, timeout_seconds=10)
    store = SignalStore(work / "a", list(registry.galaxies))
    ingester = Ingester(store, registry, kafka, Outbox(store, registry, kafka)).start()
    try:
        assert ingester.ready.wait(30)
        acked = _feed(kafka, registry, ingester, first=0)
        root = work / "archive"
        settings = ArchiveSettings.model_validate(
            {"root": str(root), "max_file_records": 25, "max_file_seconds": 0.3, "metrics_port": -1}
        )
        storage = open_storage(settings)
        topics = [topic_name(kafka, TopicKind.CHANGELOG, g) for g in GALAXIES]
        archiver = Archiver(settings, kafka, topics, storage)
        thread = threading.Thread(target=archiver.run, kwargs={"duration_seconds": 60}, daemon=True)
        thread.start()
        wanted: dict[tuple[str, int], int] = {}
        for g in GALAXIES:
            for p, o in acked[g]:
                key = (topic_name(kafka, TopicKind.CHANGELOG, g), p)
                wanted[key] = max(o, wanted.get(key, -1))
        try:
            assert wait_archived(storage, wanted, timeout=45)
        finally:
            archiver.stop()
            thread.join(20)
        assert not thread.is_alive()
        checkpoint = store.checkpoint(work / "a-checkpoint")
        config = work / "gss.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "kafka": {"changelog_topic": kafka.changelog_topic},
                    "archive": {"root": str(root)},
                    "log_level": "WARNING",
                }
            )
        )
        yield Fed(
            kafka, store, ingester, root, checkpoint, config, sum(len(a) for a in acked.values())
        )
    finally:
        ingester.stop()
        store.close()


def _offsets(store: SignalStore, kafka: KafkaSettings) -> dict[str, dict[int, int]]:
    return {g: stored_offsets(store, topic_name(kafka, TopicKind.CHANGELOG, g)) for g in GALAXIES}


def test_rebuild_equals_the_original_then_follows_the_tail(
    fed: Fed, registry: Registry, tmp_path: Path
) -> None:
    runner = CliRunner()
    b_path = tmp_path / "b"
    result = runner.invoke(
        main,
        [
            "-c",
            str(fed.config),
            "store",
            "rebuild",
            "--store",
            str(b_path),
            "--batch-records",
            "7",
            "--verify-against",
            str(fed.checkpoint),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"rebuilt {b_path}: {fed.records} records" in result.output
    assert "1 dead letters" in result.output
    assert "equal:" in result.output
    # A second rebuild into the same store is refused without --force, naming the store.
    again = runner.invoke(main, ["-c", str(fed.config), "store", "rebuild", "--store", str(b_path)])
    assert again.exit_code == 1
    assert f"the store at {b_path} is not empty" in again.output
    # `gss store verify` reports the same, and differences when there are some.
    verified = runner.invoke(
        main, ["-c", str(fed.config), "store", "verify", str(fed.checkpoint), str(b_path)]
    )
    assert verified.exit_code == 0, verified.output

    with SignalStore(b_path, list(registry.galaxies)) as b:
        assert verify_stores(fed.store, b, registry, fed.kafka).equal
        assert _offsets(b, fed.kafka) == _offsets(fed.store, fed.kafka)
        assert all(_offsets(b, fed.kafka).values())
        for g in GALAXIES:  # the topic ids the archive recorded: the live ingester checks them
            key = topic_id_key(topic_name(fed.kafka, TopicKind.CHANGELOG, g))
            assert b.get_meta(key) == fed.store.get_meta(key) is not None
        # History is not announced again: no availability events, no dead letters.
        assert not list(b.scan_meta(OUTBOX_PREFIX))
        assert list(fed.store.scan_meta(OUTBOX_PREFIX))
        # The live tail: A applies it, and B's ingester resumes from the rebuilt offsets.
        tail = _feed(fed.kafka, registry, fed.ingester, first=20)
        tail_records = sum(len(a) for a in tail.values())
        ingester = Ingester(b, registry, fed.kafka, Outbox(b, registry, fed.kafka)).start()
        try:
            positions = [p for g in GALAXIES for p in _positions(fed.kafka, g, tail[g])]
            assert ingester.wait_applied(positions, timeout_seconds=60)
            assert ingester.stats.consumed == tail_records  # the tail only, not history again
        finally:
            ingester.stop()
        verification = verify_stores(fed.store, b, registry, fed.kafka)
        assert verification.equal, (
            verification.values.differences,
            verification.offset_differences,
        )
        assert sum(verification.values.keys.values()) == 60 + 50


def test_a_rebuild_cut_short_is_run_again_with_force(
    fed: Fed, registry: Registry, tmp_path: Path
) -> None:
    storage = open_storage(ArchiveSettings(root=str(fed.archive_root)))
    path = tmp_path / "b"

    class Cut(Exception):
        pass

    def cut(stats: RebuildStats) -> None:
        if stats.batches >= 5:
            raise Cut

    with SignalStore(path, list(registry.galaxies), sync_writes=False) as b:
        with pytest.raises(Cut):
            rebuild_store(b, registry, fed.kafka, storage, batch_records=6, progress=cut)
        assert sum(len(o) for o in _offsets(b, fed.kafka).values()) > 0
    result = CliRunner().invoke(
        main,
        [
            "-c",
            str(fed.config),
            "store",
            "rebuild",
            "--store",
            str(path),
            "--force",
            "--verify-against",
            str(fed.checkpoint),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "equal:" in result.output
    # Re-running over a complete rebuild changes nothing either.
    result = CliRunner().invoke(
        main,
        [
            "-c",
            str(fed.config),
            "store",
            "rebuild",
            "--store",
            str(path),
            "--force",
            "--verify-against",
            str(fed.checkpoint),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"({0:,} applied" in result.output
