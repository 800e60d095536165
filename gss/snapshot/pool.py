"""Worker processes that convert batches of stored records, with flow control.

The exporter is one scanner feeding N converters: converting (protobuf parsing, Thrift
encoding, Parquet writing) is CPU-bound Python, so it runs in separate processes (``spawn``:
no RocksDB threads are forked) while the exporting process only reads the store. Each worker
has at most :data:`IN_FLIGHT` batches outstanding; the next batch goes to the least busy one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
from multiprocessing.context import SpawnProcess
from typing import Any, Protocol

import structlog

from gss.snapshot.worker import GalaxyJob, GalaxyWriter, WorkerResult, worker_main

log = structlog.get_logger(__name__)

IN_FLIGHT = 2
START_TIMEOUT_SECONDS = 60.0


class ExportWorkerError(RuntimeError):
    """A worker process failed or died; the export is abandoned (no partition is published)."""


class Pool(Protocol):
    def begin(self, job: GalaxyJob) -> None: ...
    def submit(self, keys: list[bytes], values: list[bytes]) -> None: ...
    def end(self) -> list[WorkerResult]: ...
    def close(self) -> None: ...


class InlinePool:
    """Converts in the calling process (one worker; small exports and tests)."""

    def __init__(self) -> None:
        self._writer: GalaxyWriter | None = None

    def begin(self, job: GalaxyJob) -> None:
        self._writer = GalaxyWriter(job, 0)

    def submit(self, keys: list[bytes], values: list[bytes]) -> None:
        assert self._writer is not None
        self._writer.add(keys, values)

    def end(self) -> list[WorkerResult]:
        assert self._writer is not None
        result = self._writer.close()
        self._writer = None
        return [result]

    def close(self) -> None:
        self._writer = None


class ProcessPool:
    """``workers`` spawned processes, each writing its own part file per signal."""

    def __init__(self, workers: int, log_level: str = "INFO", log_format: str = "json") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[SpawnProcess] = []
        self._outstanding: list[int] = []
        try:
            for index in range(workers):
                parent, child = ctx.Pipe(duplex=True)
                proc = ctx.Process(
                    target=worker_main,
                    args=(child, index, log_level, log_format),
                    name=f"gss-export-worker-{index}",
                    daemon=True,
                )
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
                self._outstanding.append(0)
        except BaseException:
            self.close()
            raise
        log.info("export_workers_started", workers=workers, pids=[p.pid for p in self._procs])

    def _recv(self, index: int) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self._conns[index].recv()
        except (EOFError, OSError):
            proc = self._procs[index]
            proc.join(timeout=5)
            raise ExportWorkerError(
                f"export worker {index} (pid {proc.pid}) died (exit code {proc.exitcode}); "
                "nothing was published for the partitions in progress"
            ) from None
        if msg[0] == "error":
            raise ExportWorkerError(f"export worker {index} failed:\n{msg[1]}")
        return msg

    def _drain_one(self) -> None:
        ready = multiprocessing.connection.wait(
            [c for c, n in zip(self._conns, self._outstanding, strict=True) if n]
        )
        for conn in ready:
            index = self._conns.index(conn)  # type: ignore[arg-type]
            msg = self._recv(index)
            if msg[0] == "ack":
                self._outstanding[index] -= 1

    def begin(self, job: GalaxyJob) -> None:
        for conn in self._conns:
            conn.send(("begin", job))

    def submit(self, keys: list[bytes], values: list[bytes]) -> None:
        while min(self._outstanding) >= IN_FLIGHT:
            self._drain_one()
        index = self._outstanding.index(min(self._outstanding))
        try:
            self._conns[index].send(("rows", keys, values))
        except (BrokenPipeError, OSError):
            self._recv(index)  # raises the worker's error or its death
            raise
        self._outstanding[index] += 1

    def end(self) -> list[WorkerResult]:
        while any(self._outstanding):
            self._drain_one()
        for conn in self._conns:
            conn.send(("end",))
        results = []
        for index in range(len(self._conns)):
            msg = self._recv(index)
            while msg[0] == "ack":
                msg = self._recv(index)
            results.append(msg[1])
        return results

    def close(self) -> None:
        """Stop every worker (politely, then by force) and wait for it."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._procs.clear()


def make_pool(workers: int, log_level: str, log_format: str) -> Pool:
    return ProcessPool(workers, log_level, log_format) if workers >= 2 else InlinePool()
