"""The plugin API: what the decorator accepts and refuses, windows, retries, binding, loading."""

from __future__ import annotations

import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compute import Count, GroupBy, Inputs, Join, Match, Retry, Sliding, Source, Tumbling, signal
from compute.binding import bind
from compute.execution import window_starts
from compute.flink import jars
from compute.loader import load_plugins
from compute.plugin import Shape, parse_ref
from contract.errors import InvalidArgumentError
from contract.registry import Registry
from contract.settings import load_settings
from contract.v1.content_pb2 import ImageEvent, PinEngagementEvent
from contract.v1.signals_pb2 import DHash, NearDuplicate

IMAGES = Source(topic="content.images", schema=ImageEvent, entity="image_signature")
PINS = Source(topic="content.pins", schema=PinEngagementEvent, entity="pin_id")


def test_decorator_returns_a_callable_plugin_that_keeps_the_function() -> None:
    """The decorated name is a Plugin: it calls the function and describes the signal."""

    @signal(galaxy="images", name="dhash", version=1, source=IMAGES)
    def dhash(event: ImageEvent) -> DHash:
        """Docs of the function."""
        return DHash(hash=len(event.rgb))

    assert dhash(ImageEvent(rgb=b"abc")) == DHash(hash=3)
    assert (dhash.ref, dhash.shape, dhash.input_topic) == (
        "images/dhash@1",
        Shape.MAP,
        "content.images",
    )
    assert dhash.__name__ == "dhash"
    assert dhash.description == "Docs of the function."
    assert dhash.retry == Retry()


def test_shape_follows_the_arguments() -> None:
    """source -> map, source+group_by -> group-by, Join -> join, Match -> match, model -> async map."""
    group = signal(
        galaxy="pins",
        name="save_count_1h",
        version=1,
        source=PINS,
        group_by=GroupBy(window=Tumbling(timedelta(hours=1)), aggregate=Count()),
    )(lambda n, w: None)
    join = signal(
        galaxy="images", name="near_duplicate_of", version=1, join=Join(inputs=("dhash",))
    )(lambda inputs: None)
    match = signal(
        galaxy="images",
        name="near_duplicate_of",
        version=1,
        join=Match(inputs=("dhash",), keys=lambda i: [1]),
    )(lambda inputs, peers: None)

    async def embed(event: ImageEvent, model: Any) -> None:
        return None

    model = signal(
        galaxy="images", name="embedding", version=1, source=IMAGES, model="image_embedding"
    )(embed)
    assert [p.shape for p in (group, join, match, model)] == [
        Shape.GROUP_BY,
        Shape.JOIN,
        Shape.MATCH,
        Shape.MAP,
    ]
    assert model.is_async
    assert join.input_topic is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": IMAGES, "join": Join(inputs=("dhash",))}, "exactly one input"),
        ({}, "exactly one input"),
        (
            {"join": Join(inputs=("dhash",)), "group_by": GroupBy(Tumbling(timedelta(1)), Count())},
            "needs a source",
        ),
        (
            {"source": IMAGES, "model": "m", "group_by": GroupBy(Tumbling(timedelta(1)), Count())},
            "model= is for map",
        ),
        ({"source": IMAGES, "name": "Bad-Name"}, "must match"),
        ({"source": IMAGES, "version": 0}, "version must be"),
    ],
)
def test_decorator_refuses_contradictory_declarations(kwargs: dict[str, Any], message: str) -> None:
    """Each wrong declaration fails at import time with a message saying what to change."""
    args = {"galaxy": "images", "name": "dhash", "version": 1, **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        signal(**args)(lambda event: None)


def test_model_plugins_are_async_and_others_are_not() -> None:
    """A model plugin must be async (its calls batch); an async plugin without a model is refused."""
    with pytest.raises(InvalidArgumentError, match="async def"):
        signal(galaxy="images", name="embedding", version=1, source=IMAGES, model="m")(
            lambda e, m: None
        )

    async def no_model(event: ImageEvent) -> None:
        return None

    with pytest.raises(InvalidArgumentError, match="only model plugins may be async"):
        signal(galaxy="images", name="dhash", version=1, source=IMAGES)(no_model)


def test_source_checks_its_fields() -> None:
    """The entity and event-time fields must exist; event time must be a Timestamp."""
    with pytest.raises(InvalidArgumentError, match="no field 'nope'"):
        Source(topic="t", schema=ImageEvent, entity="nope")
    with pytest.raises(InvalidArgumentError, match=r"must be a google\.protobuf\.Timestamp"):
        Source(topic="t", schema=ImageEvent, entity="image_signature", event_time="width")


def test_group_by_checks_its_window() -> None:
    """A sliding window's slide is positive and at most its size; lateness is not negative."""
    with pytest.raises(InvalidArgumentError, match="slide"):
        GroupBy(Sliding(timedelta(minutes=5), timedelta(minutes=10)), Count())
    with pytest.raises(InvalidArgumentError, match="allowed_lateness"):
        GroupBy(Tumbling(timedelta(minutes=5)), Count(), allowed_lateness=timedelta(seconds=-1))
    with pytest.raises(InvalidArgumentError, match="whole number of ms"):
        GroupBy(Tumbling(timedelta(microseconds=1500)), Count())


def test_retry_backoff_grows_and_is_capped() -> None:
    """Delays double from the first backoff and stop at max_backoff; attempts must be >= 1."""
    retry = Retry(
        attempts=6, backoff=timedelta(milliseconds=100), max_backoff=timedelta(milliseconds=500)
    )
    assert [retry.delay_seconds(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    with pytest.raises(InvalidArgumentError):
        Retry(attempts=0)


def test_signal_references_parse() -> None:
    """'name' is version 1; 'name@3' is version 3; anything else is refused."""
    assert parse_ref("dhash") == ("dhash", 1)
    assert parse_ref("dhash@3") == ("dhash", 3)
    for bad in ("Dhash", "dhash@x", "@1"):
        with pytest.raises(InvalidArgumentError):
            parse_ref(bad)


@given(
    st.integers(min_value=0, max_value=2**42),
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=1, max_value=10),
)
def test_window_starts_match_the_window_definitions(
    event_ms: int, slide_ms: int, slides: int
) -> None:
    """Every window an event is assigned contains it; sliding: size/slide windows, slide-aligned."""
    size_ms = slide_ms * slides
    tumbling = window_starts(Tumbling(timedelta(milliseconds=size_ms)), event_ms)
    assert len(tumbling) == 1
    assert tumbling[0] <= event_ms < tumbling[0] + size_ms
    assert tumbling[0] % size_ms == 0
    sliding = window_starts(
        Sliding(timedelta(milliseconds=size_ms), timedelta(milliseconds=slide_ms)), event_ms
    )
    assert len(sliding) == slides
    assert all(s <= event_ms < s + size_ms and s % slide_ms == 0 for s in sliding)


def test_bind_reports_every_mismatch_with_the_registry(registry: Registry) -> None:
    """Unknown signals, an entity field that cannot hold the galaxy's key, a duplicate and a
    join of its own signal are all reported in one error."""
    settings = load_settings()
    unknown = signal(galaxy="images", name="nope", version=1, source=IMAGES)(lambda e: None)
    wrong_key = signal(
        galaxy="pins",
        name="save_count_1h",
        version=1,
        source=Source(topic="t", schema=ImageEvent, entity="image_signature"),
    )(lambda e: None)
    first = signal(galaxy="images", name="dhash", version=1, source=IMAGES)(lambda e: None)
    again = signal(galaxy="images", name="dhash", version=1, source=IMAGES)(lambda e: None)
    own = signal(
        galaxy="images",
        name="near_duplicate_of",
        version=1,
        join=Join(inputs=("near_duplicate_of",)),
    )(lambda i: None)
    with pytest.raises(InvalidArgumentError) as error:
        bind([unknown, wrong_key, first, again, own], registry, settings)
    text = str(error.value)
    assert "images/nope@1" in text
    assert "cannot hold a pins id" in text
    assert "computed by two plugins" in text
    assert "its own signal" in text


def test_bind_resolves_topics_and_types(registry: Registry) -> None:
    """A bound plugin knows its changelog, its galaxy's DLQ (the ingester's too), value type
    and producer."""
    settings = load_settings(compute={"job_name": "j"})
    plugin = signal(
        galaxy="images", name="near_duplicate_of", version=1, join=Join(inputs=("dhash@1",))
    )(lambda i: None)
    (bound,) = bind([plugin], registry, settings)
    assert (bound.changelog_topic, bound.dlq_topic, bound.input_topic) == (
        "gss.images.changelog",
        "gss.images.dlq",
        "gss.images.changelog",
    )
    assert bound.value_type == "gss.v1.NearDuplicate"
    assert bound.producer == "flink:j"
    assert [(j.key, j.name, j.version, j.value_type) for j in bound.join_inputs] == [
        ("dhash@1", "dhash", 1, "gss.v1.DHash")
    ]


def test_loader_finds_plugins_in_files_and_packages(tmp_path: Path) -> None:
    """A .py path or a package name yields its plugins, each once, sorted by signal."""
    file = tmp_path / "my_signal.py"
    file.write_text(
        "from compute import Source, signal\n"
        "from contract.v1.content_pb2 import ImageEvent\n"
        "from contract.v1.signals_pb2 import DHash\n"
        "@signal(galaxy='images', name='dhash', version=1,\n"
        "        source=Source(topic='t', schema=ImageEvent, entity='image_signature'))\n"
        "def mine(event):\n"
        "    return DHash(hash=1)\n"
    )
    (plugin,) = load_plugins([str(file)])
    assert plugin.ref == "images/dhash@1"
    examples = load_plugins(["compute.examples"])
    assert [p.ref for p in examples] == [
        "images/dhash@1",
        "images/dominant_colors@1",
        "images/embedding@1",
        "images/embedding@2",
        "images/near_duplicate_of@1",
        "images/ocr_text@1",
        "images/safety_score@1",
        "images/safety_score@2",
        "pins/save_count_1h@1",
        "pins/save_count_last_hour@1",
    ]
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_plugins([str(tmp_path / "missing.py")])
    with pytest.raises(InvalidArgumentError, match="cannot import"):
        load_plugins(["compute.no_such_module"])


def test_near_duplicate_picks_the_earliest_peer_within_six_bits() -> None:
    """Peers come oldest first; the first within 6 bits and older than the image wins, else itself."""
    from datetime import UTC, datetime

    from compute.examples.images.near_duplicate_of import near_duplicate_of

    def inputs(entity: str, minute: int, value: int) -> Inputs:
        return Inputs(
            entity, datetime(2030, 1, 1, 0, minute, tzinfo=UTC), {"dhash": DHash(hash=value)}
        )

    me = inputs("cc", 10, 0b1111)
    far = inputs("aa", 1, 0xFFFF_FFFF)
    near = inputs("bb", 2, 0b0111)
    later = inputs("dd", 20, 0b1111)
    assert near_duplicate_of(me, [far, near, later]) == NearDuplicate(
        canonical_entity_id="bb", hamming_distance=1
    )
    assert near_duplicate_of(me, [later]) == NearDuplicate(
        canonical_entity_id="cc", hamming_distance=0
    )


def test_connector_jars_are_extracted_from_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure_jars downloads the wheel once, keeps only the two connector jars, and names
    the command to run when they are missing."""
    with pytest.raises(FileNotFoundError, match=r"python -m compute\.flink\.jars"):
        jars.jar_paths(tmp_path / "empty")
    calls = []

    def fake_download(cmd: list[str], check: bool) -> None:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        with zipfile.ZipFile(
            dest / "shigawire_apache_flink_libraries-2.0.0.post1-py3-none-any.whl", "w"
        ) as wheel:
            for name in (*jars.JAR_NAMES, "flink-core.jar"):
                wheel.writestr(f"pyflink/lib/{name}", name.encode())

    monkeypatch.setattr(jars.subprocess, "run", fake_download)
    target = tmp_path / "jars"
    paths = jars.ensure_jars(target)
    assert [p.name for p in paths] == list(jars.JAR_NAMES)
    assert sorted(p.name for p in target.iterdir()) == sorted(jars.JAR_NAMES)
    assert jars.WHEEL_REQUIREMENT in calls[0]
    jars.ensure_jars(target)
    assert len(calls) == 1
