"""`gss store backup` / `restore` (docs/cluster.md, "Backups"): a RocksDB checkpoint shipped to
a directory or to an object store (moto's S3 server), restored into an empty store equal to the
original, values and changelog offsets alike, without the original's outbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from clients.lookup import make_record
from contract.registry import Registry
from contract.settings import load_settings
from contract.v1 import signals_pb2
from gss.cli import main
from gss.cluster.backup import backup_root, latest_backup
from gss.kafka.meta import OUTBOX_PREFIX, encode_offset, offset_key, outbox_key
from gss.local.s3 import LocalS3
from gss.writes import to_writes
from store.db import SignalStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    with LocalS3() as local:
        local.create_bucket("gss-backups")
        yield local


def _store(path: Path, registry: Registry) -> None:
    records = [
        make_record("pins", i, "save_count_1h@1", signals_pb2.WindowedCount(count=i))
        for i in range(1, 501)
    ]
    with SignalStore(path, list(registry.galaxies)) as store:
        store.apply(
            to_writes(registry, records),
            meta={
                offset_key("gss.pins.changelog", 0): encode_offset(123),
                offset_key("gss.pins.changelog", 3): encode_offset(77),
                outbox_key(1): b"an event waiting to be published",
            },
        )


@pytest.mark.parametrize("where", ["directory", "s3"])
def test_backup_and_restore_round_trip(
    tmp_path: Path, registry: Registry, where: str, request: pytest.FixtureRequest
) -> None:
    """A store backed up and restored holds the same values and offsets (`gss store verify`
    says equal), the manifest names its offsets, and the copied outbox is dropped; restoring
    over an existing store is refused."""
    env = {"GSS_LOG_FORMAT": "json"}
    s3_settings: dict[str, str] = {}
    if where == "s3":
        s3_settings = request.getfixturevalue("s3").archive_settings()
        root = f"s3://gss-backups/{tmp_path.name}"
        env.update({f"GSS_ARCHIVE__{k.upper()}": v for k, v in s3_settings.items()})
    else:
        root = str(tmp_path / "backups")
    original, restored = tmp_path / "original", tmp_path / "restored"
    _store(original, registry)
    runner = CliRunner()

    backed = runner.invoke(
        main, ["store", "backup", "--store", str(original), "--to", root, "--ordinal", "2"], env=env
    )
    assert backed.exit_code == 0, backed.output
    back = runner.invoke(
        main,
        ["store", "restore", "--store", str(restored), "--from", root, "--ordinal", "2"],
        env=env,
    )
    assert back.exit_code == 0, back.output
    verified = runner.invoke(main, ["store", "verify", str(original), str(restored)], env=env)
    assert verified.exit_code == 0, verified.output

    settings = load_settings(archive=s3_settings)
    backup = latest_backup(backup_root(settings, root), 2)
    assert backup is not None
    assert backup.changelog_offsets == {"gss.pins.changelog": {"0": 123, "3": 77}}
    with SignalStore(restored, list(registry.galaxies)) as store:
        assert list(store.scan_meta(OUTBOX_PREFIX)) == []

    again = runner.invoke(
        main, ["store", "restore", "--store", str(restored), "--from", root], env=env
    )
    assert again.exit_code != 0
    assert "already holds a store" in again.output
