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


def test_version_zero_resolves_to_the_latest(tmp_path: Path) -> None:
    """A lookup without a version gets the highest registered version."""
    path = write_registry(
        tmp_path,
        {
            "g": galaxy(
                {"name": "s", "version": 1, "value_type": "gss.v1.DHash"},
                {"name": "s", "version": 3, "value_type": "gss.v1.DHash"},
                {"name": "s", "version": 2, "value_type": "gss.v1.DHash"},
            )
        },
    )
    assert load_registry(path).galaxy("g").signal("s").version == 3


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
