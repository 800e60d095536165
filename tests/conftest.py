"""Fixtures shared by every area: the example registry, a store in a temp dir, a live server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract import processes
from contract.registry import DEFAULT_REGISTRY_PATH, Registry, load_registry
from contract.settings import Settings, load_settings
from gss.server import GssServer, start_server
from store.db import SignalStore


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The example registry shipped in contract/registry.yaml."""
    return load_registry(DEFAULT_REGISTRY_PATH)


@pytest.fixture
def store(tmp_path: Path, registry: Registry) -> Iterator[SignalStore]:
    """A real RocksDB store in a temp dir with the example galaxies."""
    with SignalStore(tmp_path / "store", list(registry.galaxies)) as opened:
        yield opened


def server_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test server: loopback, OS-chosen ports, store under ``data_dir``."""
    return load_settings(
        store={"path": str(data_dir / "store")},
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "shutdown_grace_seconds": 1.0},
        **overrides,
    )


@pytest.fixture
def gss_server(tmp_path: Path) -> Iterator[GssServer]:
    """A real GSS server on 127.0.0.1:<free port> over a real RocksDB in a temp dir."""
    server = start_server(server_settings(tmp_path))
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def _descendants(root: int) -> list[int]:
    """PIDs of every live process below ``root``."""
    return list(processes.descendants(root))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a process behind (brokers, Triton, JVMs, servers)."""
    deadline = time.monotonic() + 10  # let processes that are already exiting finish
    while (left := _descendants(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        commands = []
        for pid in left:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                commands.append(f"{pid}: {cmdline[:120]!r}")
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        print("\ntests left processes behind (killed now):\n  " + "\n  ".join(commands))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
