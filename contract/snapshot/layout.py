"""Where snapshot files live, and the file-system moves that make a partition appear at once.

Layout under the export root::

    <root>/<galaxy>/<signal>_v<version>/dt=YYYY-MM-DD/part-00000.parquet
                                                    /_manifest.json
                                                    /_rejects.jsonl   (only if values were rejected)
                                                    /_SUCCESS         (written last)
    <root>/<galaxy>/<signal>_v<version>/_staging-dt=YYYY-MM-DD-<export id>/   (while exporting)
    <root>/<galaxy>/_reports/dt=YYYY-MM-DD.json                               (the galaxy's run report)

Names starting with ``_`` or ``.`` are skipped by Hive, Spark, Trino and the batch reader, so
a staging directory is invisible to them. A partition is built complete in staging (files,
manifest, then ``_SUCCESS``), then swapped with the live one in one ``renameat2(RENAME_EXCHANGE)``
call: a reader sees the old partition or the new one, never a mix or a half-written one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import structlog

from contract.errors import InvalidArgumentError

log = structlog.get_logger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
REJECTS = "_rejects.jsonl"
REPORTS_DIR = "_reports"
STAGING_PREFIX = "_staging-"
TRASH_PREFIX = "_replaced-"
LOCK_NAME = "_export.lock"
PART_PATTERN = "part-*.parquet"
DT_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
SIGNAL_DIR = re.compile(r"^([a-z][a-z0-9_]{0,62})_v(\d+)$")


def parse_date(text: str) -> date:
    """A ``YYYY-MM-DD`` partition date, with an error that says what is expected."""
    try:
        return date.fromisoformat(text) if len(text) == 10 else _bad_date(text)
    except ValueError:
        return _bad_date(text)


def _bad_date(text: str) -> date:
    raise InvalidArgumentError(f"date {text!r} is not a calendar date in the form YYYY-MM-DD")


def yesterday_utc(now: datetime | None = None) -> date:
    """The default export date: the UTC day before ``now``."""
    return ((now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=1)).date()


def signal_dir_name(signal: str, version: int) -> str:
    return f"{signal}_v{version}"


def partition_dir_name(dt: date) -> str:
    return f"dt={dt.isoformat()}"


def part_file_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def table_dir(root: Path, galaxy: str, signal: str, version: int) -> Path:
    return root / galaxy / signal_dir_name(signal, version)


def partition_dir(root: Path, galaxy: str, signal: str, version: int, dt: date) -> Path:
    return table_dir(root, galaxy, signal, version) / partition_dir_name(dt)


def staging_dir(table: Path, dt: date, export_id: str) -> Path:
    return table / f"{STAGING_PREFIX}{partition_dir_name(dt)}-{export_id}"


def report_path(root: Path, galaxy: str, dt: date) -> Path:
    return root / galaxy / REPORTS_DIR / f"{partition_dir_name(dt)}.json"


def is_hidden(name: str) -> bool:
    """Hadoop's rule, which Hive, Spark and Trino follow: skip ``_*`` and ``.*`` entries."""
    return name.startswith(("_", "."))


# -- durability and the swap ---------------------------------------------------------------


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, fsynced, then renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # e.g. a file system without RENAME_EXCHANGE: fall back to two renames
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def publish(staging: Path, final: Path) -> None:
    """Move a complete staging partition to ``final``, replacing what is there atomically.

    With an existing partition the two directories are exchanged in one system call and the
    old one (now at the staging name, hidden by its ``_`` prefix) is deleted afterwards. Where
    the exchange is not supported, the old partition is first renamed away: readers may then
    briefly find no partition, but never a partial one.
    """
    if not final.exists():
        os.rename(staging, final)
    elif _exchange(staging, final):
        shutil.rmtree(staging, ignore_errors=True)
    else:
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}-{os.getpid()}")
        os.rename(final, trash)
        os.rename(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(final.parent)


def remove_stale(table: Path) -> int:
    """Delete staging and replaced partitions left by killed exports of this table."""
    removed = 0
    if not table.is_dir():
        return 0
    for entry in table.iterdir():
        if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
            log.info("export_stale_staging_removed", path=str(entry))
    return removed


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidArgumentError(
                f"another export of {what} is running (lock {path} is held); wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def complete_partitions(table: Path) -> list[tuple[date, Path]]:
    """The table's partitions that have ``_SUCCESS``, oldest first."""
    found = []
    if table.is_dir():
        for entry in table.iterdir():
            m = DT_DIR.match(entry.name)
            if m and (entry / SUCCESS).is_file():
                found.append((date.fromisoformat(m.group(1)), entry))
    return sorted(found)
