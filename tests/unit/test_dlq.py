"""Dead-letter tooling (docs/debugging.md): selecting letters, what a redrive may do, when a
stored value already answers a letter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from compute import execution
from compute.binding import bind
from compute.examples.images.dhash import dhash
from compute.examples.pins.save_count_1h import save_count_1h
from compute.redrive import position_of, redrivable, redrive, resolved_by
from contract import deadletter
from contract.errors import InvalidArgumentError
from contract.registry import load_registry
from contract.settings import load_settings
from contract.v1.envelope_pb2 import Envelope, RecordPosition
from gss.dlq import Letter, Selection
from gss.local.generator import ContentGenerator

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _letter(reason: int = deadletter.Reason.PLUGIN_ERROR, **fields: object) -> Letter:
    built = deadletter.build(
        reason,
        galaxy="images",
        producer=str(fields.pop("producer", "flink:gss-compute")),
        input_topic="content.images",
        input=bytes(fields.pop("input", b"x")),  # type: ignore[call-overload]
        **fields,  # type: ignore[arg-type]
    )
    return Letter("gss.images.dlq", 1, 7, 1_000, built)


def test_selection_filters_by_signal_reason_producer_and_time() -> None:
    from contract.v1.envelope_pb2 import SignalRef

    letter = _letter(signal=SignalRef(name="dhash", version=1))
    assert Selection()(letter)
    assert Selection(signals=frozenset({"dhash"}))(letter)
    assert Selection(signals=frozenset({"dhash@1"}))(letter)
    assert not Selection(signals=frozenset({"dhash@2"}))(letter)
    assert Selection(reasons=frozenset({"plugin_error"}))(letter)
    assert not Selection(reasons=frozenset({"bad_input"}))(letter)
    assert Selection(producer="flink:")(letter)
    assert not Selection(producer="gss-ingester")(letter)
    assert not Selection(until_ms=1_000)(letter)
    with pytest.raises(InvalidArgumentError, match="unknown dead-letter reason"):
        Selection(reasons=frozenset({"oops"}))


def test_only_a_map_plugins_letters_can_be_redriven() -> None:
    settings = load_settings()
    registry = load_registry(settings.registry_path)
    (window,) = bind([save_count_1h], registry, settings)
    with pytest.raises(InvalidArgumentError, match="backfill the signal instead"):
        redrivable(window)
    (bound,) = bind([dhash], registry, settings)
    assert redrivable(bound).producer == "gss-redrive"


def test_redrive_runs_the_plugin_on_the_letters_input_with_its_lineage() -> None:
    settings = load_settings()
    (bound,) = bind([dhash], load_registry(settings.registry_path), settings)
    event = ContentGenerator(seed=4).next_image(T0)[2]
    letter = _letter(
        input=event.SerializeToString(),
        input_partition=2,
        input_offset=40,
        input_key=b"k",
        input_timestamp_ms=5_000,
    ).letter
    assert position_of(letter) == execution.Position("content.images", 2, 40, 5_000, b"k")
    result = redrive(redrivable(bound), letter)
    assert result.ok
    assert [row[0] for row in result.rows] == [bound.changelog_topic]
    garbage = redrive(redrivable(bound), _letter(input=b"\xff not an image").letter)
    assert garbage.failure is not None
    assert garbage.failure.reason == deadletter.Reason.BAD_INPUT
    # A compute dead letter names the plugin and its revision, as a value's envelope does.
    assert (garbage.failure.plugin, garbage.failure.plugin_revision) == (
        "compute.examples.images.dhash:dhash",
        bound.revision,
    )


def test_a_letter_is_answered_by_a_value_from_its_input_or_a_newer_one() -> None:
    letter = _letter(input_partition=2, input_offset=40, event_time_ms=5_000).letter
    from_input = Envelope(inputs=[RecordPosition(topic="content.images", partition=2, offset=40)])
    from_input.event_time.FromMilliseconds(1)
    assert resolved_by(from_input, letter)
    newer = Envelope()
    newer.event_time.FromMilliseconds(6_000)
    assert resolved_by(newer, letter)
    older = Envelope()
    older.event_time.FromMilliseconds(4_000)
    assert not resolved_by(older, letter)
    assert not resolved_by(None, letter)
