"""Lineage in every computed value (docs/debugging.md): the envelope names the records the
value was computed from, the plugin and its code revision."""

from __future__ import annotations

import hashlib
import inspect
import pickle
from datetime import UTC, datetime
from pathlib import Path

from clients.lookup import make_record
from compute import execution
from compute.binding import Bound, bind, plugin_code
from compute.examples.images.dhash import dhash
from compute.examples.images.near_duplicate_of import near_duplicate_of
from contract.registry import load_registry
from contract.settings import load_settings
from contract.v1.envelope_pb2 import SignalRecord
from contract.v1.signals_pb2 import DHash
from gss.local.generator import ContentGenerator

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _bind(plugin: object, **compute: object) -> Bound:
    settings = load_settings(compute=compute)
    (bound,) = bind([plugin], load_registry(settings.registry_path), settings)  # type: ignore[list-item]
    return bound


def test_a_map_value_names_its_content_event_and_plugin_revision() -> None:
    bound = _bind(dhash)
    event = ContentGenerator(seed=3).next_image(T0)[2]
    at = execution.Position("content.images", 2, 41, 1_000, b"k")
    ((topic, _, value),) = execution.run_map(bound, event.SerializeToString(), at=at)
    assert topic == bound.changelog_topic
    envelope = SignalRecord.FromString(value).envelope
    assert [(p.topic, p.partition, p.offset) for p in envelope.inputs] == [
        ("content.images", 2, 41)
    ]
    source = Path(inspect.getsourcefile(dhash.fn) or "").read_bytes()
    assert envelope.plugin == "compute.examples.images.dhash:dhash"
    assert envelope.plugin_revision == hashlib.sha256(source).hexdigest()[:12]
    # Without a position (the in-process harness) the value has no inputs, nothing made up.
    ((_, _, value),) = execution.run_map(bound, event.SerializeToString())
    assert not SignalRecord.FromString(value).envelope.inputs


def test_a_configured_build_id_is_the_revision() -> None:
    bound = _bind(dhash, plugin_revision="build-2026.11.28")
    assert bound.revision == "build-2026.11.28"
    assert plugin_code(dhash)[1] != "build-2026.11.28"


def test_a_join_value_names_each_input_record_in_declared_order() -> None:
    bound = _bind(near_duplicate_of)
    entity = bytes(range(16))
    record = make_record("images", entity.hex(), "dhash@1", DHash(hash=7), event_time=T0)
    at = execution.Position(bound.input_topic, 3, 99)
    ((_, update),) = execution.join_updates([bound], record.SerializeToString(), at)
    held: execution.Held = {}
    assert execution.hold_input(bound, held, update, now=0.0)
    inputs = execution.join_inputs(bound, entity, held)
    assert inputs is not None
    # Between Flink operators and in state the inputs travel pickled: the sources with them.
    inputs = pickle.loads(pickle.dumps(inputs))
    assert inputs.sources == {"dhash": (bound.input_topic, 3, 99)}
    ((_, _, value),) = execution.run_join(bound, entity, inputs, peers=[])
    envelope = SignalRecord.FromString(value).envelope
    assert [(p.topic, p.partition, p.offset) for p in envelope.inputs] == [
        (bound.input_topic, 3, 99)
    ]


def test_join_state_written_before_lineage_still_joins() -> None:
    """Checkpointed state from before lineage holds (value, ms, stored at): still read, with
    no sources."""
    bound = _bind(near_duplicate_of)
    old: execution.Held = {"dhash": (DHash(hash=1).SerializeToString(), 5, 0.0)}
    inputs = execution.join_inputs(bound, bytes(16), old)
    assert inputs is not None
    assert inputs.sources == {}


def test_an_input_past_kafkas_retention_is_read_from_the_archive(tmp_path: Path) -> None:
    from contract.settings import ArchiveSettings
    from gss.archive.archiver import write_batch
    from gss.archive.layout import ArchivedRecord
    from gss.archive.storage import LocalStorage
    from gss.lineage import read_archived_record

    records = [
        ArchivedRecord("content.images", 1, o, 1_000 + o, "create", b"k%d" % o, b"v%d" % o)
        for o in range(10, 15)
    ]
    write_batch(LocalStorage(tmp_path), records, topic_id="id", from_offset=10, previous=None)
    archive = ArchiveSettings(root=str(tmp_path))
    found = read_archived_record(archive, "content.images", 1, 12)
    assert found is not None
    assert (found.value, found.key, found.timestamp_ms, found.found_in) == (
        b"v12",
        b"k12",
        1_012,
        "archive",
    )
    assert read_archived_record(archive, "content.images", 1, 99) is None
    assert read_archived_record(ArchiveSettings(), "content.images", 1, 12) is None
