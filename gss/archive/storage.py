"""The archive root: a local directory or an object store, with durable, atomic writes.

A write is all or nothing, and durable when it returns:

* local directory: a hidden temporary file in the target directory (``.<name>.tmp-<pid>``,
  which Flink's FileSource and the reader skip), fsynced, renamed over the name, and the
  directory fsynced (and every directory it had to create);
* object store (``s3://bucket/prefix``, through ``pyarrow.fs.S3FileSystem``): one PUT (or a
  multipart upload completed at close), which S3 makes visible atomically, durable once
  acknowledged. Other ``pyarrow.fs`` URIs (``gs://``, ``hdfs://``) go through
  ``FileSystem.from_uri``.

Paths given to a storage are relative to the root and use ``/``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from contract.archive import s3_filesystem
from contract.settings import ArchiveSettings


class ArchiveStorage(Protocol):
    """What the archiver, reader and status need of the archive root."""

    def location(self, rel: str) -> str:
        """A full name of ``rel`` for messages (a path or a URI)."""

    def write(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` atomically and durably (replaces an existing file)."""

    def read(self, rel: str) -> bytes:
        """The bytes at ``rel``; FileNotFoundError if there is no such file."""

    def list_files(self, rel_dir: str) -> list[str]:
        """Names of the files directly in ``rel_dir`` (not hidden ones); [] if it is absent."""

    def list_dirs(self, rel_dir: str) -> list[str]:
        """Names of the directories directly in ``rel_dir``; [] if it is absent."""

    def delete(self, rel: str) -> None:
        """Delete the file at ``rel``; a missing file is fine."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """A directory on a local (or mounted) file system."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, rel: str) -> str:
        return str(self.root / rel)

    def _makedirs(self, directory: Path) -> None:
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        if not missing:
            return
        directory.mkdir(parents=True, exist_ok=True)
        # A new directory is durable once its parent's entry is.
        for created in reversed(missing):
            _fsync_dir(created.parent)

    def write(self, rel: str, data: bytes) -> None:
        target = self.root / rel
        self._makedirs(target.parent)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def _entries(self, rel_dir: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.root / rel_dir) as it:
                return [e for e in it if not e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_files(self, rel_dir: str) -> list[str]:
        return sorted(e.name for e in self._entries(rel_dir) if e.is_file())

    def list_dirs(self, rel_dir: str) -> list[str]:
        return sorted(e.name for e in self._entries(rel_dir) if e.is_dir())

    def delete(self, rel: str) -> None:
        target = self.root / rel
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            _fsync_dir(target.parent)


class ArrowStorage:
    """A ``pyarrow.fs`` file system (S3 and the like) under a base path (``bucket/prefix``)."""

    def __init__(self, fs: Any, base: str, uri: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.uri = uri.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def location(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def write(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self._path(rel)) as out:
            out.write(data)

    def read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as f:
            data: bytes = f.read()
            return data

    def _infos(self, rel_dir: str) -> list[Any]:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._path(rel_dir), allow_not_found=True, recursive=False)
        try:
            infos: list[Any] = self.fs.get_file_info(selector)
        except FileNotFoundError:
            return []
        return [i for i in infos if not i.base_name.startswith(".")]

    def list_files(self, rel_dir: str) -> list[str]:
        from pyarrow import fs as pafs

        return sorted(i.base_name for i in self._infos(rel_dir) if i.type == pafs.FileType.File)

    def list_dirs(self, rel_dir: str) -> list[str]:
        from pyarrow import fs as pafs

        return sorted(
            i.base_name for i in self._infos(rel_dir) if i.type == pafs.FileType.Directory
        )

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._path(rel))


def open_storage(settings: ArchiveSettings) -> ArchiveStorage:
    """The storage ``settings.root`` names: a path (or file:// URI), s3://bucket/prefix, or
    another URI ``pyarrow.fs.FileSystem.from_uri`` understands."""
    root = settings.root
    if "://" not in root:
        return LocalStorage(Path(root).resolve())
    parsed = urlparse(root)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path).resolve())
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"archive root {root!r} names no bucket (s3://bucket/prefix)")
        base = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return ArrowStorage(s3_filesystem(settings), base, root)
    from pyarrow import fs as pafs

    fs, base = pafs.FileSystem.from_uri(root)
    return ArrowStorage(fs, base, root)
