"""Signal lifecycle end to end: add a version, backfill it, promote it, deprecate the old one,
against a real server that follows its registry file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from clients.lookup import GssClient
from contract.registry import DEFAULT_REGISTRY_PATH
from contract.v1 import signal_service_pb2, signals_pb2
from gss.cli import main as gss_cli
from gss.server import start_server
from tests.conftest import server_settings
from tests.helpers import dhash_record, image_id

pytestmark = pytest.mark.integration

DHASH_V2 = """        description: 64-bit difference hash of the 9x8 greyscale thumbnail.
      - name: dhash
        version: 2
        value_type: gss.v1.DHash
        description: dhash of the 16x16 thumbnail.
"""


def registry_with_dhash_v2(tmp_path: Path) -> Path:
    """The example registry plus a newly registered images/dhash@2, the pin left on @1."""
    text = DEFAULT_REGISTRY_PATH.read_text()
    text = text.replace(
        "        description: 64-bit difference hash of the 9x8 greyscale thumbnail.\n", DHASH_V2
    )
    pins = "    defaults: {embedding: 1, safety_score: 1}\n"
    assert pins in text
    text = text.replace(pins, "    defaults: {embedding: 1, safety_score: 1, dhash: 1}\n", 1)
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return path


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def deprecated_lookups(version: str) -> float:
    labels = {"galaxy": "images", "signal": "dhash", "version": version}
    return REGISTRY.get_sample_value("gss_deprecated_signal_lookups_total", labels) or 0.0


def test_add_backfill_promote_deprecate(tmp_path: Path) -> None:
    path = registry_with_dhash_v2(tmp_path)
    settings = server_settings(tmp_path, registry_path=str(path))
    server = start_server(settings, registry_poll_seconds=0.1)
    runner = CliRunner()
    try:
        with GssClient(server.address) as client:
            # @1 has values; @2 is registered but empty. The bare name stays on the pin (it
            # used to resolve to the highest registered version: NOT_FOUND for every id).
            client.put([dhash_record(1, 111)])
            (row,) = client.get("images", [image_id(1)], ["dhash"])
            assert row.signals["dhash"].found
            assert row.signals["dhash"].version == 1
            assert row.signals["dhash"].value == signals_pb2.DHash(hash=111)

            # Backfill @2: bare-name readers still see @1.
            v2 = dhash_record(1, 222)
            v2.signal.version = 2
            client.put([v2])
            (row,) = client.get("images", [image_id(1)], ["dhash"])
            assert row.signals["dhash"].version == 1

            # Promote: the server picks the file change up and the bare name means @2.
            result = runner.invoke(
                gss_cli, ["signal", "promote", "images/dhash@2", "--registry", str(path)]
            )
            assert result.exit_code == 0, result.output

            def bare_version() -> int:
                (row,) = client.get("images", [image_id(1)], ["dhash"])
                return row.signals["dhash"].version

            eventually(lambda: bare_version() == 2)
            (row,) = client.get("images", [image_id(1)], ["dhash"])
            assert row.signals["dhash"].value == signals_pb2.DHash(hash=222)

            # Deprecate @1: still readable, flagged in DescribeGalaxy, lookups counted.
            result = runner.invoke(
                gss_cli, ["signal", "deprecate", "images/dhash@1", "--registry", str(path)]
            )
            assert result.exit_code == 0, result.output

            def states() -> dict[str, tuple[bool, int]]:
                return {
                    f"{s.name}@{s.version}": (s.is_default, s.state)
                    for s in client.describe("images").signals
                    if s.name == "dhash"
                }

            eventually(
                lambda: (
                    states()
                    == {
                        "dhash@1": (False, signal_service_pb2.SIGNAL_STATE_DEPRECATED),
                        "dhash@2": (True, signal_service_pb2.SIGNAL_STATE_ACTIVE),
                    }
                )
            )
            before = deprecated_lookups("1")
            rows = client.get("images", [image_id(1), image_id(2), image_id(3)], ["dhash@1"])
            assert rows[0].signals["dhash@1"].value == signals_pb2.DHash(hash=111)
            assert deprecated_lookups("1") == before + 3
            client.get("images", [image_id(1)], ["dhash"])  # @2: not counted
            assert deprecated_lookups("1") == before + 3
            assert deprecated_lookups("2") == 0.0

            result = runner.invoke(gss_cli, ["galaxies", "--target", server.address])
            assert "dhash@1  [deprecated]" in result.output
            assert "dhash@2  [default]" in result.output

            # A file that does not load is refused; the running registry stays.
            path.write_text(path.read_text().replace("dhash: 2}", "dhash: 9}"))
            assert not server.reload_registry()
            assert bare_version() == 2
    finally:
        server.stop(grace=1.0)


def test_reload_refuses_changes_that_need_a_restart(tmp_path: Path) -> None:
    """A new version (or any change beyond pins and states) is logged and left for a restart."""
    path = tmp_path / "registry.yaml"
    path.write_text(DEFAULT_REGISTRY_PATH.read_text())
    server = start_server(
        server_settings(tmp_path, registry_path=str(path)), registry_poll_seconds=None
    )
    try:
        registry_with_dhash_v2(tmp_path)  # rewrites the same file with dhash@2 added
        assert not server.reload_registry()
        with GssClient(server.address) as client:
            assert [s.version for s in client.describe("images").signals if s.name == "dhash"] == [
                1
            ]
    finally:
        server.stop(grace=1.0)
