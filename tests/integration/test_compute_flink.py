"""Compute plugins end to end, each scenario in both execution modes.

``harness``: the plugins in-process (compute.harness). ``flink``: one Flink MiniCluster job
running every plugin, reading from and writing to a real tansu broker; values are checked
through GSS lookups (a GSS server whose ingester materialises the changelogs), value
history and dead letters by reading the topics. The Flink job is started once for the
module (it takes seconds) and each test uses its own entities.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import tests.compute_plugins as test_plugins
from compute.examples.images.dhash import dhash
from compute.examples.images.dominant_colors import dominant_colors
from compute.examples.images.near_duplicate_of import near_duplicate_of
from compute.examples.pins.save_count_1h import save_count_1h
from compute.flink import gateway
from compute.flink.run import ComputeJob
from compute.harness import LocalHarness
from compute.plugin import Plugin
from contract import deadletter
from contract.deadletter import Reason
from contract.registry import load_registry
from contract.settings import load_settings
from contract.v1.content_pb2 import ImageEvent, PinEngagementEvent
from contract.v1.envelope_pb2 import RecordPosition, SignalRecord
from contract.v1.signals_pb2 import DHash, NearDuplicate, WindowedCount
from gss.local.generator import ContentGenerator
from tests.compute_support import (
    FlinkRunner,
    HarnessRunner,
    Runner,
    TopicReader,
    all_topics,
    write_test_registry,
)
from tests.conftest import server_settings

pytestmark = pytest.mark.integration

# The test plugins are not importable on Flink's Python workers: ship them by value.
cloudpickle.register_pickle_by_value(test_plugins)

EXAMPLES: list[Plugin] = [dominant_colors, dhash, near_duplicate_of, save_count_1h]
PLUGINS = EXAMPLES + test_plugins.PLUGINS
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def image_key(event: ImageEvent) -> bytes:
    return event.image_signature


def pin_key(event: PinEngagementEvent) -> bytes:
    return event.pin_id.to_bytes(8, "big")


def pin(
    pin_id: int, user_id: int, at: datetime, action: int = PinEngagementEvent.SAVE
) -> PinEngagementEvent:
    event = PinEngagementEvent(pin_id=pin_id, user_id=user_id, action=action)  # type: ignore[arg-type]
    event.event_time.FromDatetime(at)
    return event


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def registry_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_registry(tmp_path_factory.mktemp("compute-registry"))


@pytest.fixture(scope="module")
def flink_runner(
    registry_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlinkRunner]:
    """A broker, one Flink job with every plugin (plus one that crashes its worker once), and a
    reader of every changelog and dead-letter topic."""
    from gss.local.broker import LocalBroker
    from gss.server import start_server

    marker = tmp_path_factory.mktemp("crash") / "crashed"
    metrics_port = _free_port()
    with LocalBroker() as broker:
        settings = server_settings(
            tmp_path_factory.mktemp("compute-gss"),
            registry_path=str(registry_path),
            kafka={"bootstrap_servers": broker.bootstrap_servers},
            compute={
                "job_name": "gss-compute-tests",
                "checkpoint_interval_seconds": 1.0,
                "restart_delay_seconds": 0.5,
                "idle_source_seconds": 1.0,
                "metrics_port": metrics_port,
                "checkpoint_dir": tmp_path_factory.mktemp("checkpoints").as_uri(),
            },
        )
        registry = load_registry(registry_path)
        job = ComputeJob(
            settings, [*PLUGINS, test_plugins.crashing_plugin(marker)], registry=registry
        )
        reader = TopicReader(broker.bootstrap_servers, all_topics(settings, registry))
        server = start_server(settings)
        runner = FlinkRunner(settings, registry, reader, server.address)
        try:
            job.start()
            runner.job = job  # type: ignore[attr-defined]
            runner.crash_marker = marker  # type: ignore[attr-defined]
            runner.metrics_port = metrics_port  # type: ignore[attr-defined]
            yield runner
        finally:
            job.stop()
            reader.close()
            runner.close()
            server.stop(grace=1.0)
            gateway.shutdown()


@pytest.fixture(params=["harness", "flink"])
def runner(request: pytest.FixtureRequest, registry_path: Path) -> Runner:
    """The same scenario API over the in-process harness and the Flink job."""
    if request.param == "flink":
        flink: FlinkRunner = request.getfixturevalue("flink_runner")
        return flink
    settings = load_settings(registry_path=str(registry_path))
    return HarnessRunner(LocalHarness(PLUGINS, settings=settings))


def metric(runner: Runner, ref: str, name: str) -> float:
    """A plugin counter: the harness's tally, or Flink's Prometheus reporter (summed)."""
    if isinstance(runner, HarnessRunner):
        return float(runner.harness.metrics[(ref, name)])
    port = runner.metrics_port  # type: ignore[attr-defined]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    label = re.sub(r"[^a-zA-Z0-9]", "_", ref)  # the reporter's label value spelling
    pattern = re.compile(rf'^\S*_gss_signal_{name}\{{[^}}]*signal="{label}"[^}}]*\}} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def bad_inputs(runner: Runner, topic: str, partition: int) -> float:
    """``bad_inputs_total`` of every plugin for one topic and partition, from Flink's reporter."""
    port = runner.metrics_port  # type: ignore[attr-defined]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    topic_label = re.sub(r"[^a-zA-Z0-9]", "_", topic)
    pattern = re.compile(
        r"^\S*_gss_signal_topic_partition_bad_inputs_total\{([^}]*)\} (\S+)$", re.M
    )
    return sum(
        float(value)
        for labels, value in pattern.findall(text)
        if f'topic="{topic_label}"' in labels and f'partition="{partition}"' in labels
    )


def test_image_examples_write_the_values_their_functions_compute(runner: Runner) -> None:
    """dominant_colors and dhash values on the changelog equal the functions applied directly;
    a new image with no earlier near duplicate is its own canonical."""
    generator = ContentGenerator(seed=101, duplicate_fraction=0.0)
    events = [generator.next_image(T0 + timedelta(seconds=i))[2] for i in range(3)]
    runner.send("content.images", events, key=image_key)
    for event in events:
        assert isinstance(event, ImageEvent)
        got = runner.wait_latest("images", event.image_signature, "dominant_colors@1")
        assert got == dominant_colors(event)
        assert runner.wait_latest("images", event.image_signature, "dhash@1") == dhash(event)
        canonical = runner.wait_latest("images", event.image_signature, "near_duplicate_of@1")
        assert canonical.canonical_entity_id == event.image_signature.hex()


def test_near_duplicate_found_when_the_original_arrives_after_the_copy(runner: Runner) -> None:
    """The join on dhash bands: a copy seen before its (earlier) original is re-evaluated
    when the original arrives, and names it, with their Hamming distance."""
    generator = ContentGenerator(seed=202)
    original_pixels = generator.picture()
    copy_pixels = generator.near_duplicate(original_pixels)
    from compute.content import image_event

    original = image_event(original_pixels, T0 + timedelta(minutes=1))
    copy = image_event(copy_pixels, T0 + timedelta(minutes=2))
    distance = (dhash(original).hash ^ dhash(copy).hash).bit_count()
    assert distance <= 6, "the generator's near duplicates stay within 6 bits"
    runner.send("content.images", [copy], key=image_key)
    runner.wait_latest("images", copy.image_signature, "near_duplicate_of@1")
    runner.send("content.images", [original], key=image_key)
    expected = NearDuplicate(
        canonical_entity_id=original.image_signature.hex(), hamming_distance=distance
    )
    assert (
        runner.wait_latest(
            "images", copy.image_signature, "near_duplicate_of@1", lambda v: v == expected
        )
        == expected
    )
    own = runner.wait_latest("images", original.image_signature, "near_duplicate_of@1")
    assert own.canonical_entity_id == original.image_signature.hex()


def test_windowed_counts_with_out_of_order_late_and_too_late_events(runner: Runner) -> None:
    """pins/save_count_1h@1: out-of-order saves count in their window; a late save within the
    allowed lateness (10 min) updates the window; one after it is a TOO_LATE dead letter."""
    pin_id = 4242
    hour = T0 + timedelta(hours=5)

    def window_count(start: datetime) -> int | None:
        for value in reversed(runner.values("pins", pin_id, "save_count_1h@1")):
            assert isinstance(value, WindowedCount)
            if value.window_start.ToDatetime(UTC) == start:
                return value.count
        return None

    runner.send(
        "content.pins",
        [
            pin(pin_id, 1, hour + timedelta(minutes=10)),
            pin(pin_id, 2, hour + timedelta(minutes=40)),
            pin(pin_id, 3, hour + timedelta(minutes=5)),  # out of order
            pin(
                pin_id, 4, hour + timedelta(minutes=20), PinEngagementEvent.IMPRESSION
            ),  # not a save
            pin(pin_id, 5, hour + timedelta(minutes=30)),
        ],
        key=pin_key,
    )
    # The next hour's first save moves the watermark past the first window's end.
    runner.send("content.pins", [pin(pin_id, 6, hour + timedelta(hours=1, minutes=1))], key=pin_key)
    runner.wait_for("the first window", lambda: window_count(hour) == 4)
    value = runner.latest("pins", pin_id, "save_count_1h@1")
    assert value is not None
    assert value.window_end.ToDatetime(UTC) == hour + timedelta(hours=1)

    runner.send(
        "content.pins", [pin(pin_id, 7, hour + timedelta(minutes=55))], key=pin_key
    )  # late, allowed
    runner.wait_for("the late update", lambda: window_count(hour) == 5)

    # Past the second window's end (and the first one's lateness), then a save for hour one.
    runner.send(
        "content.pins", [pin(pin_id, 8, hour + timedelta(hours=2, minutes=15))], key=pin_key
    )
    runner.wait_for("the second window", lambda: window_count(hour + timedelta(hours=1)) == 1)
    runner.send("content.pins", [pin(pin_id, 9, hour + timedelta(minutes=50))], key=pin_key)
    letter = runner.wait_dead_letter(
        lambda d: d.reason == Reason.TOO_LATE and d.entity_id == str(pin_id)
    )
    assert letter.signal.name == "save_count_1h"
    assert PinEngagementEvent.FromString(letter.input).user_id == 9
    assert window_count(hour) == 5


def test_early_firing_makes_an_open_windows_value_readable(runner: Runner) -> None:
    """With early_firing an hour's running sum is readable while the hour is open (Flink:
    within 200 ms of processing time; the harness: at once), follows each event, and the
    final value at the hour's end is the full sum."""
    pin_id = 88
    hour = T0 + timedelta(days=3)
    runner.send("test.early", [pin(pin_id, 5, hour + timedelta(minutes=1))], key=pin_key)
    assert runner.wait_latest("tests", pin_id, "early@1") == DHash(hash=5)
    runner.send("test.early", [pin(pin_id, 7, hour + timedelta(minutes=2))], key=pin_key)
    assert runner.wait_latest("tests", pin_id, "early@1", lambda v: v.hash == 12) == DHash(hash=12)
    # An event of the next hour closes this one (watermark past its end): the final value.
    runner.send("test.early", [pin(pin_id, 1, hour + timedelta(hours=1, minutes=5))], key=pin_key)
    runner.wait_for(
        "the final value and the next hour's running one",
        lambda: {v.hash for v in runner.values("tests", pin_id, "early@1")} >= {12, 1},
    )
    assert 12 in {v.hash for v in runner.values("tests", pin_id, "early@1")}


def test_early_firing_of_sliding_windows_keeps_the_trailing_window_readable(runner: Runner) -> None:
    """Sliding windows fire early only once they are the first to end after the watermark, so
    the value read (the newest event time wins) is the trailing window's running sum after
    each event, never a window reaching into the future; one that becomes the first to end
    writes its value then, without waiting for another event."""
    pin_id = 66
    base = T0 + timedelta(days=4)  # windows [base-5m, base+5m), [base, base+10m), ...
    runner.send("test.trailing", [pin(pin_id, 5, base + timedelta(minutes=1))], key=pin_key)
    # The window starting base-5m (minute 55 of the previous hour) ends first: sum 5.
    first = 5 * 1_000_000 + (base - timedelta(minutes=5)).hour * 60 + 55
    assert runner.wait_latest("tests", pin_id, "trailing@1") == DHash(hash=first)
    runner.send("test.trailing", [pin(pin_id, 7, base + timedelta(minutes=2))], key=pin_key)
    assert runner.wait_latest(
        "tests", pin_id, "trailing@1", lambda v: v.hash == first + 7_000_000
    ) == DHash(hash=first + 7_000_000)
    # An event at base+7m closes [base-5m, base+5m); [base, base+10m) then ends first and
    # writes 5 + 7 + 1 at once.
    runner.send("test.trailing", [pin(pin_id, 1, base + timedelta(minutes=7))], key=pin_key)
    current = 13 * 1_000_000 + base.hour * 60 + base.minute
    assert runner.wait_latest("tests", pin_id, "trailing@1", lambda v: v.hash == current) == DHash(
        hash=current
    )
    # The window starting base+5m (sum 1 so far) never wrote: it reaches beyond the trailing one.
    later = 1 * 1_000_000 + base.hour * 60 + base.minute + 5
    assert later not in {v.hash for v in runner.values("tests", pin_id, "trailing@1")}


def test_sliding_windows_sum_each_overlapping_window(runner: Runner) -> None:
    """A 10-minute window every 5 minutes: each event is in two windows, each window sums its own."""
    pin_id = 77
    base = T0 + timedelta(days=1)
    runner.send(
        "test.sliding",
        [
            pin(pin_id, 1, base + timedelta(minutes=1)),
            pin(pin_id, 2, base + timedelta(minutes=6)),
            pin(pin_id, 4, base + timedelta(minutes=12)),
            pin(pin_id, 100, base + timedelta(minutes=40)),  # closes every window above
        ],
        key=pin_key,
    )

    def sums() -> dict[int, int]:
        values = runner.values("tests", pin_id, "sliding@1")
        return {v.hash % 1_000_000: v.hash // 1_000_000 for v in values if isinstance(v, DHash)}

    # Keys are window starts in minutes of the day: base is midnight.
    expected = {24 * 60 - 5: 1, 0: 3, 5: 6, 10: 4}
    got = runner.wait_for(
        "four windows", lambda: sums() if all(k in sums() for k in expected) else None
    )
    assert {k: got[k] for k in expected} == expected


def test_join_waits_for_its_missing_input_then_follows_updates(runner: Runner) -> None:
    """tests/both@1 joins left and right of the same entity: nothing until right arrives,
    then left*1000+right, recomputed when an input changes."""
    pin_id = 501
    runner.send("test.left", [pin(pin_id, 3, T0)], key=pin_key)
    runner.wait_latest("tests", pin_id, "left@1")
    runner.settle()
    assert runner.latest("tests", pin_id, "both@1") is None
    runner.send("test.right", [pin(pin_id, 4, T0 + timedelta(seconds=1))], key=pin_key)
    assert runner.wait_latest("tests", pin_id, "both@1") == DHash(hash=3004)
    runner.send("test.left", [pin(pin_id, 5, T0 + timedelta(seconds=2))], key=pin_key)
    assert runner.wait_latest("tests", pin_id, "both@1", lambda v: v.hash == 5004) == DHash(
        hash=5004
    )


def test_failing_plugin_is_retried_then_dead_lettered_while_others_flow(runner: Runner) -> None:
    """A record whose plugin keeps raising goes to gss.tests.dlq after 3 attempts with the error;
    one that fails once is retried and written; a wrong output type is dead-lettered at once;
    records after them are written; the counters say so."""
    users = {
        601: 1,
        602: test_plugins.UNLUCKY,
        603: test_plugins.SHAKY,
        604: test_plugins.WRONG_TYPE,
        605: 2,
    }
    runner.send("test.flaky", [pin(p, u, T0) for p, u in users.items()], key=pin_key)
    for pin_id in (601, 603, 605):
        assert runner.wait_latest("tests", pin_id, "flaky@1") == DHash(hash=users[pin_id])
    unlucky = runner.wait_dead_letter(lambda d: d.entity_id == "602")
    assert (unlucky.reason, unlucky.attempts, unlucky.error_type) == (
        Reason.PLUGIN_ERROR,
        3,
        "ValueError",
    )
    assert "unlucky" in unlucky.error
    assert unlucky.galaxy == "tests"
    assert unlucky.input_topic == "test.flaky"
    assert PinEngagementEvent.FromString(unlucky.input).pin_id == 602
    wrong = runner.wait_dead_letter(lambda d: d.entity_id == "604")
    assert (wrong.reason, wrong.attempts) == (Reason.BAD_OUTPUT, 1)
    assert runner.latest("tests", 602, "flaky@1") is None
    assert runner.latest("tests", 604, "flaky@1") is None
    ref = "tests/flaky@1"
    # Flink's reporter shows each counter when it next samples it: wait (bounded) until all
    # three reach their figures, then require them exactly (retries: two for 602, one for 603).
    expected = {"dead_letters_total": 2.0, "retries_total": 3.0, "values_total": 3.0}

    def counters() -> dict[str, float]:
        return {name: metric(runner, ref, name) for name in expected}

    runner.wait_for(
        f"counters {expected}", lambda: all(counters()[n] >= v for n, v in expected.items())
    )
    assert counters() == expected


def test_undecodable_content_is_dead_lettered_per_plugin(runner: Runner) -> None:
    """Bytes that are not an ImageEvent become BAD_INPUT dead letters (one per plugin reading
    the topic) and the plugins go on with the next record."""
    garbage = b"\xff\x00 not a protobuf"
    if isinstance(runner, HarnessRunner):
        runner.harness.send("content.images", garbage)
    else:
        runner._producer.produce("content.images", key=b"junk", value=garbage)
        runner._producer.flush(10)
    runner.wait_for(
        "two dead letters",
        lambda: (
            len(
                [
                    d
                    for d in runner.dead_letters()
                    if d.reason == Reason.BAD_INPUT and d.input == garbage
                ]
            )
            == 2
        ),
    )
    letters = [d for d in runner.dead_letters() if d.input == garbage]
    assert sorted(d.signal.name for d in letters) == ["dhash", "dominant_colors"]
    if isinstance(runner, HarnessRunner):
        assert metric(runner, "images/dhash@1", "bad_inputs_total") >= 1
    else:
        # Counted by topic and partition (and plugin); the letter names the same partition.
        (partition,) = {d.input_partition for d in letters}
        assert all(d.input_key == b"junk" for d in letters)
        runner.wait_for(
            "bad_inputs_total of both plugins on the letter's partition",
            lambda: bad_inputs(runner, "content.images", partition) >= 2,
        )
    event = ContentGenerator(seed=303).next_image(T0)[2]
    runner.send("content.images", [event], key=image_key)
    runner.wait_latest("images", event.image_signature, "dhash@1")  # type: ignore[attr-defined]


def test_ingester_and_compute_dead_letters_share_one_topic_and_format(
    flink_runner: FlinkRunner,
) -> None:
    """gss.images.dlq holds the compute job's dead letters and the GSS ingester's alike, and
    one function reads both: a content event no plugin can decode (BAD_INPUT, from Flink) and
    a changelog record naming an unregistered signal (UNKNOWN_SIGNAL, from the ingester)."""
    from clients.lookup import make_record

    settings = flink_runner.settings
    kafka = settings.kafka
    dlq = kafka.topic(kafka.dlq_topic, "images")
    changelog = kafka.topic(kafka.changelog_topic, "images")
    content = b"\xff\x01 not an ImageEvent either"
    entity = bytes(range(16))
    record = make_record("images", entity.hex(), "dhash@1", DHash(hash=1), event_time=T0)
    record.signal.name = "no_such_signal"
    producer = f"flink:{settings.compute.job_name}"
    flink_runner._producer.produce("content.images", key=b"junk-2", value=content)
    flink_runner._producer.produce(changelog, key=entity, value=record.SerializeToString())
    flink_runner._producer.flush(10)

    def letters() -> list[tuple[bytes | None, deadletter.DeadLetter]]:
        # One parser for every record on the topic, whoever wrote it.
        return [
            (key, letter)
            for key, letter in (
                (k, deadletter.parse(v)) for k, v in flink_runner.reader.read_keyed(dlq)
            )
            if letter.input in (content, record.SerializeToString())
        ]

    def counts() -> list[int]:
        found = [d.producer for _, d in letters()]
        return [found.count(producer), found.count(deadletter.INGESTER)]

    flink_runner.wait_for("two compute and one ingester dead letter", lambda: counts() == [2, 1])
    computed = [d for _, d in letters() if d.producer == producer]
    assert sorted(d.signal.name for d in computed) == ["dhash", "dominant_colors"]
    assert {(d.reason, d.input_topic, d.galaxy) for d in computed} == {
        (Reason.BAD_INPUT, "content.images", "images")
    }
    # Compute names where it read the input: partition, offset, key and Kafka timestamp.
    assert len({(d.input_partition, d.input_offset) for d in computed}) == 1
    assert all(d.HasField("input_offset") and d.input_key == b"junk-2" for d in computed)
    assert all(d.input_timestamp.seconds > 0 for d in computed)
    ((key, ingested),) = [(k, d) for k, d in letters() if d.producer == deadletter.INGESTER]
    assert (ingested.reason, ingested.error_type) == (Reason.UNKNOWN_SIGNAL, "NotFoundError")
    assert "no_such_signal" in ingested.error
    assert (ingested.input_topic, ingested.input_key, ingested.galaxy) == (
        changelog,
        entity,
        "images",
    )
    assert ingested.HasField("input_partition")
    assert ingested.HasField("input_offset")
    assert ingested.entity_id == entity.hex()
    assert key == entity


def test_records_survive_a_python_worker_crash(flink_runner: FlinkRunner) -> None:
    """At-least-once: a plugin kills its Python worker mid-stream; Flink restarts the job from
    its last checkpoint and every input still gets its value (duplicates allowed)."""
    pins = {700 + i: i for i in range(1, 21)}
    pins[710] = 666
    flink_runner.send("test.crashy", [pin(p, u, T0) for p, u in pins.items()], key=pin_key)
    for pin_id, user in pins.items():
        got = flink_runner.wait_latest("tests", pin_id, "crashy@1", timeout=120)
        assert got == DHash(hash=user)
    assert flink_runner.crash_marker.exists()  # type: ignore[attr-defined]
    assert flink_runner.job.status() == "RUNNING"  # type: ignore[attr-defined]
    port = flink_runner.metrics_port  # type: ignore[attr-defined]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    restarts = re.search(r"^flink_jobmanager_job_numRestarts\{[^}]*\} (\S+)$", text, re.M)
    assert restarts is not None
    assert float(restarts.group(1)) >= 1


def _record_at(bootstrap: str, position: RecordPosition) -> bytes:
    """The value of the Kafka record at a position an envelope names."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "lineage-test", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(position.topic, position.partition, position.offset)])
        for _ in range(50):
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                assert msg.offset() == position.offset
                return bytes(msg.value())
        raise AssertionError(f"nothing read at {position}")
    finally:
        consumer.close()


def test_the_minicluster_keeps_its_temp_files_in_the_gateway_directory(
    flink_runner: FlinkRunner,
) -> None:
    """Flink deletes its temporary files only when it closes cleanly (a 24 MB RPC jar for each
    MiniCluster start, blobs, working directories): a running job's are in the directory
    compute/flink/gateway.py removes with the JVM, not loose in the system's temp directory."""
    temp = gateway.temp_dir()
    assert any(temp.glob("minicluster_*"))
    assert any(temp.glob("flink-rpc-*.jar"))
    assert any(temp.glob("flink-io-*"))


def test_values_name_their_inputs_and_plugin_revision(flink_runner: FlinkRunner) -> None:
    """Lineage: a map value's envelope names the content event it was computed from (its exact
    topic, partition and offset) and the plugin with its source revision; a join's names the
    changelog records of each of its inputs, in the order the join declares them."""
    from compute.binding import plugin_code

    bootstrap = flink_runner.settings.kafka.bootstrap_servers or ""
    event = ContentGenerator(seed=909, duplicate_fraction=0.0).next_image(T0)[2]
    assert isinstance(event, ImageEvent)
    flink_runner.send("content.images", [event], key=image_key)
    entity = event.image_signature.hex()
    flink_runner.wait_latest("images", event.image_signature, "near_duplicate_of@1")

    def record(entity: str, signal: str) -> SignalRecord:
        # The changelog reader may trail the server that answered wait_latest.
        found: list[SignalRecord] = flink_runner.wait_for(
            f"the {signal} record of {entity}",
            lambda: [
                r
                for r in flink_runner.records()
                if (r.entity_id, r.signal.name) == (entity, signal)
            ],
        )
        assert len(found) == 1, found
        return found[0]

    hashed = record(entity, "dhash")
    (source,) = hashed.envelope.inputs
    assert source.topic == "content.images"
    assert _record_at(bootstrap, source) == event.SerializeToString()
    assert (hashed.envelope.plugin, hashed.envelope.plugin_revision) == plugin_code(dhash)
    assert re.fullmatch(r"[0-9a-f]{12}", hashed.envelope.plugin_revision)

    matched = record(entity, "near_duplicate_of")
    (input_position,) = matched.envelope.inputs
    assert input_position.topic == "gss.images.changelog"
    assert SignalRecord.FromString(_record_at(bootstrap, input_position)) == hashed
    assert matched.envelope.plugin == "compute.examples.images.near_duplicate_of:near_duplicate_of"

    # A two-input join: tests/both@1 = left x right.
    flink_runner.send("test.left", [pin(777, 1, T0)], key=pin_key)
    flink_runner.send("test.right", [pin(777, 2, T0)], key=pin_key)
    flink_runner.wait_latest("tests", 777, "both@1")
    both = record("777", "both")
    named = [SignalRecord.FromString(_record_at(bootstrap, p)) for p in both.envelope.inputs]
    assert [(r.signal.name, r.entity_id) for r in named] == [("left", "777"), ("right", "777")]


FIXED_FLAKY = '''
from datetime import timedelta

from compute import Source, signal
from contract.v1.content_pb2 import PinEngagementEvent
from contract.v1.signals_pb2 import DHash


@signal(
    galaxy="tests",
    name="flaky",
    version=1,
    source=Source(topic="test.flaky", schema=PinEngagementEvent, entity="pin_id",
                  max_out_of_orderness=timedelta(seconds=1)),
)
def flaky(event: PinEngagementEvent) -> DHash:
    """The fixed plugin: every user is lucky now."""
    return DHash(hash=event.user_id)
'''


def test_dead_letters_are_listed_and_redriven_once_after_a_fix(
    flink_runner: FlinkRunner, registry_path: Path, tmp_path: Path
) -> None:
    """Dead letters of a failing plugin are listed with their input positions; after the fix,
    `gss dlq redrive` writes each input's value once (lineage: the original input), and a
    second redrive does nothing."""
    import json

    from click.testing import CliRunner

    from gss.cli import main

    started = datetime.now(UTC) - timedelta(seconds=1)
    pins = {621: test_plugins.UNLUCKY, 622: test_plugins.WRONG_TYPE, 623: 5}
    flink_runner.send("test.flaky", [pin(p, user, T0) for p, user in pins.items()], key=pin_key)
    for p in (621, 622):
        flink_runner.wait_dead_letter(lambda d, p=p: d.entity_id == str(p))
    flink_runner.wait_latest("tests", 623, "flaky@1")
    fixed = tmp_path / "fixed_flaky.py"
    fixed.write_text(FIXED_FLAKY)
    settings = flink_runner.settings
    env = {
        "GSS_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "GSS_REGISTRY_PATH": str(registry_path),
        "GSS_COMPUTE__PLUGINS": json.dumps([str(fixed)]),
        "GSS_LOG_LEVEL": "WARNING",
    }
    since = started.isoformat()

    def gss(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    listed = [
        json.loads(line)
        for line in gss("dlq", "list", "tests", "--signal", "flaky@1", "--since", since, "--json")
        .strip()
        .splitlines()
    ]
    by_entity = {d["entity_id"]: d for d in listed}
    assert set(by_entity) == {"621", "622"}
    assert {by_entity[e]["reason"] for e in by_entity} == {"plugin_error", "bad_output"}
    assert all(re.fullmatch(r"test\.flaky/\d+:\d+", d["input_position"]) for d in listed)
    assert {d["plugin"] for d in listed} == {"tests.compute_plugins:flaky"}
    stats = json.loads(gss("dlq", "stats", "tests", "--since", since, "--json"))
    assert stats["total"] >= 2

    target = ["--target", flink_runner.gss_target]
    first = gss("dlq", "redrive", "tests/flaky@1", "--since", since, *target)
    assert "2 re-driven, 0 already answered, 0 still failing" in first, first
    for p, user in ((621, test_plugins.UNLUCKY), (622, test_plugins.WRONG_TYPE)):
        assert flink_runner.wait_latest("tests", p, "flaky@1") == DHash(hash=user)
    again = gss("dlq", "redrive", "tests/flaky@1", "--since", since, *target)
    assert "0 re-driven, 2 already answered, 0 still failing" in again, again
    flink_runner.settle()
    redriven = [
        r
        for r in flink_runner.records()
        if r.signal.name == "flaky" and r.entity_id in ("621", "622")
    ]
    assert len(redriven) == 2  # one value each, nothing written twice
    assert {r.envelope.producer for r in redriven} == {"gss-redrive"}
    positions = {d["entity_id"]: d["input_position"] for d in listed}
    for r in redriven:
        (source,) = r.envelope.inputs
        assert f"{source.topic}/{source.partition}:{source.offset}" == positions[r.entity_id]


def test_explain_traces_a_value_to_its_event_and_input(
    flink_runner: FlinkRunner, registry_path: Path
) -> None:
    """`gss explain`: per signal the value, plugin and revision, changelog position, when its
    event was published, and the input record itself (read back from Kafka, decoded with the
    plugin's source schema; a join's input is the dhash changelog record)."""
    import json

    from click.testing import CliRunner

    from compute.binding import plugin_code
    from gss.cli import main

    event = ContentGenerator(seed=919, duplicate_fraction=0.0).next_image(T0)[2]
    assert isinstance(event, ImageEvent)
    flink_runner.send("content.images", [event], key=image_key)
    flink_runner.wait_latest("images", event.image_signature, "near_duplicate_of@1")
    env = {
        "GSS_KAFKA__BOOTSTRAP_SERVERS": flink_runner.settings.kafka.bootstrap_servers or "",
        "GSS_REGISTRY_PATH": str(registry_path),
        "GSS_LOG_LEVEL": "WARNING",
    }
    args = ["explain", "images", event.image_signature.hex(), "--signal", "dhash@1"]
    args += ["--signal", "near_duplicate_of@1", "--target", flink_runner.gss_target, "--json"]

    def explained() -> dict[str, Any]:
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        return {s["signal"]: s for s in out["signals"]}

    # The availability event follows the value by a moment.
    def announced() -> dict[str, Any] | None:
        found = explained()
        return found if all(s.get("announced") for s in found.values()) else None

    found = flink_runner.wait_for("both values announced", announced)
    hashed, matched = found["dhash@1"], found["near_duplicate_of@1"]
    assert (hashed["plugin"], hashed["plugin_revision"]) == plugin_code(dhash)
    assert hashed["changelog"].startswith("gss.images.changelog/")
    assert re.fullmatch(r"[0-9a-f]+", hashed["announced"]["event_id"])
    (source,) = hashed["inputs"]
    assert source["position"].startswith("content.images/")
    assert source["found_in"] == "kafka"
    assert source["record"]["type"] == "gss.v1.ImageEvent"
    assert source["record"]["width"] == event.width
    (joined,) = matched["inputs"]
    assert joined["position"] == hashed["changelog"]
    assert joined["record"]["type"] == "gss.v1.SignalRecord"
    assert joined["record"]["signal"] == {"name": "dhash", "version": 1}
