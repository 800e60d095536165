"""The local harness and the shared runtime: values, dead letters, windows, joins, models, CLI."""

from __future__ import annotations

import io
import json
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from compute import Join, Model, Retry, Source, signal
from compute.content import image_array, image_event, pin_event
from compute.examples.images.dhash import dhash
from compute.examples.images.dominant_colors import dominant_colors
from compute.examples.images.embedding import embedding
from compute.examples.pins.save_count_1h import save_count_1h
from compute.examples.pins.save_count_last_hour import save_count_last_hour
from compute.harness import LocalHarness, output_json, read_events
from contract.deadletter import Reason
from contract.errors import InvalidArgumentError
from contract.v1.content_pb2 import ImageEvent, PinEngagementEvent
from contract.v1.signals_pb2 import DHash, DominantColors, WeightedColor
from gss.cli import main
from gss.local.generator import ContentGenerator, write_jsonl

pytest_plugins = ["compute.testing"]

T0 = datetime(2030, 1, 1, tzinfo=UTC)
IMAGES = Source(topic="content.images", schema=ImageEvent, entity="image_signature")


def two_colour_image() -> ImageEvent:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[:, :3] = (250, 10, 10)  # 12 red pixels
    pixels[:, 3] = (10, 10, 250)  # 4 blue
    return image_event(pixels, T0)


def test_dominant_colors_weighs_each_bin(signal_harness: Any) -> None:
    """Two colours, 3:1: the red bin first with weight 0.75, then blue at 0.25."""
    harness = signal_harness(dominant_colors)
    event = two_colour_image()
    harness.send("content.images", event)
    assert harness.latest("images", event.image_signature, "dominant_colors@1") == DominantColors(
        colors=[
            WeightedColor(red=250, green=10, blue=10, weight=0.75),
            WeightedColor(red=10, green=10, blue=250, weight=0.25),
        ]
    )


def test_dhash_is_stable_under_noise_and_differs_between_pictures() -> None:
    """A near duplicate (a few pixels nudged) stays within 6 bits; different pictures are far apart."""
    generator = ContentGenerator(seed=5)
    pictures = [generator.picture() for _ in range(20)]
    hashes = [dhash(image_event(p, T0)).hash for p in pictures]
    copies = [dhash(image_event(generator.near_duplicate(p), T0)).hash for p in pictures]
    assert all((a ^ b).bit_count() <= 6 for a, b in zip(hashes, copies, strict=True))
    different = [(hashes[i] ^ hashes[j]).bit_count() for i in range(20) for j in range(i + 1, 20)]
    assert np.median(different) > 12


def test_records_carry_the_envelope_and_canonical_entity(signal_harness: Any) -> None:
    """A written record names galaxy, entity (hex), signal@version, event time and producer."""
    harness = signal_harness(dhash)
    event = two_colour_image()
    (output,) = harness.send("content.images", event)
    record = output.record
    assert (output.topic, output.key) == ("gss.images.changelog", event.image_signature)
    assert (record.galaxy, record.entity_id, record.signal.name, record.signal.version) == (
        "images",
        event.image_signature.hex(),
        "dhash",
        1,
    )
    assert record.envelope.event_time.ToDatetime(UTC) == T0
    assert record.envelope.producer == "flink:gss-compute"
    assert not record.envelope.HasField("write_time")


def test_window_counts_fire_at_the_watermark_and_update_when_late(signal_harness: Any) -> None:
    """Counts per hour fire once the watermark passes; a save within 10 min of lateness fires
    the window again; a later one is a TOO_LATE dead letter."""
    harness = signal_harness(save_count_1h)
    saves = [
        pin_event(9, PinEngagementEvent.SAVE, 1, T0 + timedelta(minutes=m)) for m in (50, 5, 20)
    ]
    harness.send_all(("content.pins", e) for e in saves)
    assert harness.values("pins", 9, "save_count_1h@1") == []
    harness.send(
        "content.pins",
        pin_event(9, PinEngagementEvent.CLICK, 1, T0 + timedelta(hours=1, seconds=6)),
    )
    assert [v.count for v in harness.values("pins", 9, "save_count_1h@1")] == [3]
    harness.send(
        "content.pins", pin_event(9, PinEngagementEvent.SAVE, 1, T0 + timedelta(minutes=59))
    )
    assert [v.count for v in harness.values("pins", 9, "save_count_1h@1")] == [3, 4]
    harness.send(
        "content.pins",
        pin_event(9, PinEngagementEvent.CLICK, 1, T0 + timedelta(hours=1, minutes=11)),
    )
    (late,) = harness.send(
        "content.pins", pin_event(9, PinEngagementEvent.SAVE, 1, T0 + timedelta(minutes=1))
    )
    assert late.dead_letter.reason == Reason.TOO_LATE
    assert harness.metrics[("pins/save_count_1h@1", "late_events_total")] == 1
    value = harness.latest("pins", 9, "save_count_1h@1")
    assert value.count == 4
    assert value.window_end.ToDatetime(UTC) == T0 + timedelta(hours=1)


def test_trailing_hour_count_follows_each_save(signal_harness: Any) -> None:
    """pins/save_count_last_hour@1: after each save the latest value is the count of the hour
    ending at the next ten-minute boundary; windows reaching further ahead never win."""
    harness = signal_harness(save_count_last_hour)
    counts = []
    for minute in (1, 3, 12, 14, 40):
        harness.send(
            "content.pins",
            pin_event(9, PinEngagementEvent.SAVE, 1, T0 + timedelta(minutes=minute)),
        )
        value = harness.latest("pins", 9, "save_count_last_hour@1")
        end = value.window_end.ToDatetime(UTC)
        assert T0 + timedelta(minutes=minute) < end <= T0 + timedelta(minutes=minute + 10)
        counts.append(value.count)
    assert counts == [1, 2, 3, 4, 5]
    # A click at minute 72 moves event time on: the hour ending at 80 holds only the save at 40.
    harness.send(
        "content.pins", pin_event(9, PinEngagementEvent.CLICK, 1, T0 + timedelta(minutes=72))
    )
    value = harness.latest("pins", 9, "save_count_last_hour@1")
    assert value.window_end.ToDatetime(UTC) == T0 + timedelta(minutes=80)
    assert value.count == 1


def test_close_fires_windows_still_open(signal_harness: Any) -> None:
    """At the end of the input every open window is written, as when a bounded source ends."""
    harness = signal_harness(save_count_1h)
    harness.send("content.pins", pin_event(3, PinEngagementEvent.SAVE, 1, T0))
    assert harness.values("pins", 3, "save_count_1h@1") == []
    harness.close()
    assert [v.count for v in harness.values("pins", 3, "save_count_1h@1")] == [1]


@signal(
    galaxy="images",
    name="dhash",
    version=1,
    source=IMAGES,
    retry=Retry(attempts=2, backoff=timedelta(0)),
)
def broken(event: ImageEvent) -> DHash:
    raise RuntimeError(f"cannot hash {len(event.rgb)} bytes")


def test_plugin_errors_are_retried_then_dead_lettered_with_the_input(signal_harness: Any) -> None:
    """Both attempts fail: a PLUGIN_ERROR dead letter keeps the input bytes and the error."""
    harness = signal_harness(broken)
    event = two_colour_image()
    (output,) = harness.send("content.images", event)
    letter = output.dead_letter
    assert output.topic == "gss.images.dlq"
    assert (letter.reason, letter.attempts, letter.error_type) == (
        Reason.PLUGIN_ERROR,
        2,
        "RuntimeError",
    )
    assert letter.error == "cannot hash 48 bytes"
    assert ImageEvent.FromString(letter.input) == event
    assert letter.entity_id == event.image_signature.hex()
    assert output.key == event.image_signature  # keyed by the entity
    assert (letter.input_topic, letter.producer) == ("content.images", "flink:gss-compute")
    # PyFlink's source gives the job values only: the input's position and key stay unset.
    assert not letter.HasField("input_partition")
    assert not letter.HasField("input_offset")
    assert not letter.HasField("input_key")
    assert harness.metrics[("images/dhash@1", "retries_total")] == 1


def test_bad_input_and_bad_output_are_dead_lettered_without_retries(signal_harness: Any) -> None:
    """Undecodable bytes -> BAD_INPUT; an image id of the wrong length -> BAD_INPUT; a value of
    the wrong type -> BAD_OUTPUT."""
    wrong_type = signal(galaxy="images", name="dhash", version=1, source=IMAGES)(
        lambda e: DominantColors()
    )
    harness = signal_harness(wrong_type)
    (garbage,) = harness.send("content.images", b"\xff\xff")
    (short_id,) = harness.send(
        "content.images", ImageEvent(image_signature=b"x", event_time=two_colour_image().event_time)
    )
    (wrong,) = harness.send("content.images", two_colour_image())
    assert [o.dead_letter.reason for o in (garbage, short_id, wrong)] == [
        Reason.BAD_INPUT,
        Reason.BAD_INPUT,
        Reason.BAD_OUTPUT,
    ]
    assert "is 1 bytes" in short_id.dead_letter.error
    assert "registered value type is gss.v1.DHash" in wrong.dead_letter.error


def test_join_state_expires_after_its_ttl(signal_harness: Any) -> None:
    """A join input older than the TTL is forgotten: the other input alone does not fire it;
    an older value of an input never replaces a newer one."""
    now = [0.0]
    left = signal(galaxy="images", name="dhash", version=1, source=IMAGES)(
        lambda e: DHash(hash=e.width)
    )
    joined = signal(
        galaxy="images",
        name="near_duplicate_of",
        version=1,
        join=Join(inputs=("dhash", "dominant_colors"), ttl=timedelta(seconds=10)),
    )(lambda i: None)
    calls: list[int] = []
    object.__setattr__(joined, "fn", lambda inputs: calls.append(inputs["dhash"].hash))  # type: ignore[misc]
    colors = signal(galaxy="images", name="dominant_colors", version=1, source=IMAGES)(
        lambda e: DominantColors()
    )
    harness = signal_harness(left, joined, colors, clock=lambda: now[0])
    event = ImageEvent(image_signature=b"\x01" * 16, width=7)
    event.event_time.FromDatetime(T0)
    older = ImageEvent(image_signature=b"\x01" * 16, width=3)
    older.event_time.FromDatetime(T0 - timedelta(hours=1))
    harness.send("content.images", event)  # both inputs: the join fires
    assert calls == [7]
    harness.send("content.images", older)  # older values of both inputs: ignored
    assert calls == [7]
    now[0] = 11.0  # both inputs expired
    harness.send("gss.images.changelog", harness.records[1])  # dominant_colors alone
    assert calls == [7]
    newer = ImageEvent(image_signature=b"\x01" * 16, width=9)
    newer.event_time.FromDatetime(T0 + timedelta(hours=1))
    harness.send("content.images", newer)  # fresh dhash: both present again
    assert calls[:2] == [7, 9]


class FakeModels:
    """Answers model calls in-process, like the batched Triton client's submit()."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls = 0
        self.fail_first = fail_first

    def submit(self, model_name: str, item: Any) -> Future[Any]:
        self.calls += 1
        future: Future[Any] = Future()
        if self.calls <= self.fail_first:
            future.set_exception(ConnectionError("Triton unavailable"))
        else:
            result = type("Inference", (dict,), {"model_name": model_name, "model_version": "7"})
            future.set_result(result(EMBEDDING=np.full(64, 0.125, dtype=np.float32)))
        return future


def test_model_plugins_record_the_model_version_and_retry(signal_harness: Any) -> None:
    """A model plugin awaits the client; the envelope names the model and the version that
    answered; a failed call is retried per the plugin's policy."""
    models = FakeModels(fail_first=1)
    harness = signal_harness(embedding, models=models)
    event = two_colour_image()
    (output,) = harness.send("content.images", event)
    assert (output.record.envelope.model_name, output.record.envelope.model_version) == (
        "image_embedding",
        "7",
    )
    assert (
        list(harness.latest("images", event.image_signature, "embedding@1").values) == [0.125] * 64
    )
    assert models.calls == 2
    with pytest.raises(InvalidArgumentError, match="models="):
        LocalHarness([embedding]).send("content.images", event)


def test_model_view_refuses_items_that_are_not_arrays() -> None:
    """Model.infer takes an array or a mapping of arrays."""
    import asyncio

    with pytest.raises(TypeError):
        asyncio.run(Model(FakeModels(), "m").infer("pixels"))  # type: ignore[arg-type]


def test_unknown_topics_are_named_in_the_error(signal_harness: Any) -> None:
    """Sending to a topic no plugin reads says which topics they do read."""
    with pytest.raises(InvalidArgumentError, match=r"content\.images"):
        signal_harness(dhash).send("content.elsewhere", two_colour_image())


def test_jsonl_events_round_trip_through_the_generator(signal_harness: Any) -> None:
    """Generated events written as JSON lines read back as the same events; topics no plugin
    reads are skipped; a broken line is reported by number."""
    generator = ContentGenerator(seed=3)
    events = list(generator.events(20, T0))
    out = io.StringIO()
    write_jsonl(iter(events), out)
    harness = signal_harness(dhash)
    read = list(read_events(harness, out.getvalue().splitlines()))
    assert read == [(t, e) for t, _, e in events if t == "content.images"]
    with pytest.raises(InvalidArgumentError, match="line 2"):
        list(read_events(harness, ['{"event": {}}', "not json"]))


def test_generator_is_deterministic_per_seed() -> None:
    """The same seed gives the same events; images decode to 32x32 RGB."""
    a = [e.SerializeToString() for _, _, e in ContentGenerator(seed=1).events(30, T0)]
    b = [e.SerializeToString() for _, _, e in ContentGenerator(seed=1).events(30, T0)]
    assert a == b
    topic, key, image = ContentGenerator(seed=1).next_image(T0)
    assert isinstance(image, ImageEvent)
    assert (topic, key, image_array(image).shape) == (
        "content.images",
        image.image_signature,
        (32, 32, 3),
    )


def test_output_json_shows_values_and_dead_letters(signal_harness: Any) -> None:
    """Values print with their signal, entity and event time; dead letters without the input."""
    harness = signal_harness(dhash)
    (value,) = harness.send("content.images", two_colour_image())
    shown = output_json(value)
    assert (shown["signal"], shown["galaxy"], shown["event_time"]) == (
        "dhash@1",
        "images",
        "2030-01-01T00:00:00Z",
    )
    (letter,) = harness.send("content.images", b"\x00\x01\x02")
    assert output_json(letter)["dead_letter"]["reason"] == "BAD_INPUT"
    assert "input" not in output_json(letter)["dead_letter"]


def test_cli_signal_test_prints_what_a_plugin_would_write(tmp_path: Path) -> None:
    """`gss signal test FILE --events FILE` prints one JSON object per value and counts."""
    events = tmp_path / "events.jsonl"
    with events.open("w") as out:
        write_jsonl(ContentGenerator(seed=2).events(10, T0, image_share=1.0), out)
    plugin = Path(__file__).resolve().parents[2] / "compute" / "examples" / "images" / "dhash.py"
    result = CliRunner().invoke(main, ["signal", "test", str(plugin), "--events", str(events)])
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 10
    assert {line["signal"] for line in lines} == {"dhash@1"}
    assert "images/dhash@1 values_total 10" in result.stderr


def test_cli_signal_test_reports_a_plugin_file_without_plugins(tmp_path: Path) -> None:
    """A file with no @signal function is an error that names the file."""
    empty = tmp_path / "nothing.py"
    empty.write_text("x = 1\n")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = CliRunner().invoke(main, ["signal", "test", str(empty), "--events", str(events)])
    assert result.exit_code != 0
    assert "no @signal plugins" in result.stderr


def test_cli_compute_plugins_lists_what_would_run() -> None:
    """`gss compute plugins` lists every example with its shape, input and changelog."""
    result = CliRunner().invoke(main, ["compute", "plugins"])
    assert result.exit_code == 0, result.output
    assert "images/near_duplicate_of@1" in result.output
    assert "gss.images.changelog -> gss.images.changelog" in result.output
    assert "model=image_embedding" in result.output


def test_cli_compute_run_refuses_to_start_without_a_broker_or_triton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a broker, or with model plugins but no Triton, the job is refused before
    Flink starts, with the setting to change."""
    monkeypatch.delenv("GSS_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("GSS_TRITON__URL", raising=False)
    result = CliRunner().invoke(main, ["compute", "run", "--skip-models"])
    assert result.exit_code != 0
    assert "GSS_KAFKA__BOOTSTRAP_SERVERS" in result.output
    monkeypatch.setenv("GSS_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(main, ["compute", "run"])
    assert result.exit_code != 0
    assert "GSS_TRITON__URL" in result.output
    assert "--skip-models" in result.output
