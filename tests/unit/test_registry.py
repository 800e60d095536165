"""The registry: one checked model of galaxies and signals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from contract.errors import InvalidArgumentError, NotFoundError
from contract.registry import Registry, load_registry
from contract.v1 import signals_pb2


def write_registry(tmp_path: Path, galaxies: dict[str, object]) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"imports": ["contract.v1.signals_pb2"], "galaxies": galaxies}))
    return path


def galaxy(*signals: dict[str, object], key: dict[str, object] | None = None) -> dict[str, object]:
    return {"key": key or {"type": "int64"}, "signals": list(signals)}


def test_example_registry_declares_the_issue_signals(registry: Registry) -> None:
    """images and pins exist with the example signals, value types resolved to messages."""
    images, pins = registry.galaxy("images"), registry.galaxy("pins")
    assert images.codec.length == 16
    assert pins.codec.length == 8
    assert images.signal("dominant_colors", 1).message_class is signals_pb2.DominantColors
    assert images.signal("embedding").message_class is signals_pb2.Embedding
    assert images.signal("dhash", 1).message_class is signals_pb2.DHash
    assert pins.signal("save_count_1h").ttl == timedelta(hours=2)


def three_versions(**extra: object) -> dict[str, object]:
    return {
        "g": {
            **galaxy(
                {"name": "s", "version": 1, "value_type": "gss.v1.DHash"},
                {"name": "s", "version": 3, "value_type": "gss.v1.DHash"},
                {"name": "s", "version": 2, "value_type": "gss.v1.DHash"},
            ),
            **extra,
        }
    }


def test_version_zero_resolves_to_the_pinned_default(tmp_path: Path) -> None:
    """A lookup without a version gets the pinned default version, not the highest one.
    (Replaces test_version_zero_resolves_to_the_latest, which encoded the old behaviour.)"""
    g = load_registry(write_registry(tmp_path, three_versions(defaults={"s": 2}))).galaxy("g")
    assert g.signal("s").version == 2
    assert g.signal("s", 0) is g.signal("s", 2)
    assert g.signal("s", 3).version == 3
    assert g.default_version("s") == 2
    assert [g.is_default(spec) for spec in g.signals] == [False, False, True]


def test_registering_a_new_version_keeps_bare_names_on_the_old_one(tmp_path: Path) -> None:
    """Issue 10's regression: adding s@2 (pinned to @1) leaves bare 's' meaning s@1."""
    one = {"name": "s", "version": 1, "value_type": "gss.v1.DHash"}
    before = load_registry(write_registry(tmp_path, {"g": galaxy(one)})).galaxy("g")
    assert before.signal("s").version == 1  # one version: the default implicitly
    two = {"name": "s", "version": 2, "value_type": "gss.v1.DHash"}
    g = {**galaxy(one, two), "defaults": {"s": 1}}
    after = load_registry(write_registry(tmp_path, {"g": g})).galaxy("g")
    assert after.signal("s").version == 1
    assert after.signal("s").key_suffix == before.signal("s").key_suffix


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "signal 's' has versions 1, 2, 3 and no pinned default: add `defaults: {s: N}`"),
        (
            {"defaults": {"s": 5}},
            r"defaults pins s@5, which is not registered \(registered: s@1, s@2, s@3\)",
        ),
        (
            {"defaults": {"s": 1, "t": 1}},
            "defaults pins t@1, but no version of signal 't' is registered",
        ),
    ],
)
def test_pins_are_checked_naming_what_is_wrong(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        load_registry(write_registry(tmp_path, three_versions(**extra)))


def test_deprecated_versions_stay_resolvable_but_never_the_default(tmp_path: Path) -> None:
    """state: deprecated keeps the version readable; the pinned default cannot be deprecated."""
    g = {
        "key": {"type": "int64"},
        "defaults": {"s": 2},
        "signals": [
            {"name": "s", "version": 1, "value_type": "gss.v1.DHash", "state": "deprecated"},
            {"name": "s", "version": 2, "value_type": "gss.v1.DHash"},
        ],
    }
    loaded = load_registry(write_registry(tmp_path, {"g": g})).galaxy("g")
    assert loaded.signal("s", 1).deprecated
    assert not loaded.signal("s").deprecated
    assert loaded.deprecated_refs == {("s", 1)}
    g["defaults"] = {"s": 1}
    with pytest.raises(InvalidArgumentError, match="s@1 is deprecated but is the pinned default"):
        load_registry(write_registry(tmp_path, {"g": g}))
    sole = galaxy({"name": "s", "version": 1, "value_type": "gss.v1.DHash", "state": "deprecated"})
    with pytest.raises(InvalidArgumentError, match="pinned default"):
        load_registry(write_registry(tmp_path, {"g": sole}))
    bad = galaxy({"name": "s", "version": 1, "value_type": "gss.v1.DHash", "state": "retired"})
    with pytest.raises(InvalidArgumentError, match="state"):
        load_registry(write_registry(tmp_path, {"g": bad}))


def test_adopt_lifecycle_takes_pins_and_states_only(tmp_path: Path) -> None:
    """A running registry adopts new pins and states in place; other changes are refused."""
    running = load_registry(write_registry(tmp_path, three_versions(defaults={"s": 1})))
    held = running.galaxy("g")
    promoted = three_versions(defaults={"s": 3})
    promoted["g"]["signals"][0]["state"] = "deprecated"  # type: ignore[index]
    changes = running.adopt_lifecycle(load_registry(write_registry(tmp_path, promoted)))
    assert changes == ["g/s: default s@1 -> s@3", "g/s@1: active -> deprecated"]
    assert running.galaxy("g").signal("s").version == 3
    assert held.signal("s").version == 1  # specs are frozen: holders of the old one keep it
    retyped = three_versions(defaults={"s": 3})
    retyped["g"]["signals"][2]["value_type"] = "gss.v1.Embedding"  # type: ignore[index]
    with pytest.raises(InvalidArgumentError, match="restart to apply"):
        running.adopt_lifecycle(load_registry(write_registry(tmp_path, retyped)))
    assert running.galaxy("g").signal("s").version == 3


def test_unknown_galaxy_and_signal_name_what_is_known(registry: Registry) -> None:
    """NotFound errors list the known galaxies and signals."""
    with pytest.raises(NotFoundError, match="known: images, pins"):
        registry.galaxy("videos")
    with pytest.raises(NotFoundError, match="dhash@1"):
        registry.galaxy("images").signal("dhash", 9)


@pytest.mark.parametrize(
    ("galaxies", "message"),
    [
        ({"g": galaxy({"name": "s", "version": 1, "value_type": "gss.v1.Nope"})}, "gss.v1.Nope"),
        (
            {
                "g": galaxy(
                    {"name": "s", "version": 1, "value_type": "gss.v1.DHash"},
                    {"name": "s", "version": 1, "value_type": "gss.v1.DHash"},
                )
            },
            "declared twice",
        ),
        ({"g": galaxy({"name": "Bad-Name", "version": 1, "value_type": "gss.v1.DHash"})}, "name"),
        ({"g": galaxy({"name": "s", "version": 0, "value_type": "gss.v1.DHash"})}, "version"),
        ({"g": galaxy(key={"type": "bytes"})}, "length"),
        (
            {"g": galaxy({"name": "s", "version": 1, "value_type": "gss.v1.DHash", "ttl": "soon"})},
            "ttl",
        ),
    ],
)
def test_invalid_registries_are_refused_naming_the_problem(
    tmp_path: Path, galaxies: dict[str, object], message: str
) -> None:
    """Unknown value types, duplicates, bad names, versions, keys and TTLs fail at load time."""
    with pytest.raises(InvalidArgumentError, match=message):
        load_registry(write_registry(tmp_path, galaxies))


def test_durations_accept_short_forms(tmp_path: Path) -> None:
    """TTLs read "90s", "15m", "2h", "30d" as well as seconds."""
    path = write_registry(
        tmp_path,
        {
            "g": galaxy(
                {"name": "a", "version": 1, "value_type": "gss.v1.DHash", "ttl": "90s"},
                {"name": "b", "version": 1, "value_type": "gss.v1.DHash", "ttl": "30d"},
                {"name": "c", "version": 1, "value_type": "gss.v1.DHash", "ttl": 60},
            )
        },
    )
    g = load_registry(path).galaxy("g")
    assert [g.signal(n).ttl for n in "abc"] == [
        timedelta(seconds=90),
        timedelta(days=30),
        timedelta(minutes=1),
    ]


def test_an_import_of_the_old_wire_package_names_the_new_one(tmp_path: Path) -> None:
    """A registry written for the pre-contract layout fails with the module to import instead."""
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"imports": ["gss.v1.signals_pb2"], "galaxies": {}}))
    with pytest.raises(ValueError, match=r"import 'contract\.v1\.signals_pb2' instead"):
        load_registry(path)
