"""Worker processes that convert batches of stored records, with flow control.

The exporter is one scanner feeding N converters: converting (columnar decoding, Thrift
encoding, Parquet writing) is CPU-bound and holds the GIL between numpy and Arrow calls, so it
runs in separate processes as well as in the exporting process, which also reads the store.
A batch travels to a worker as its raw buffers (:meth:`ScanBatch.buffers`), not pickled. At
most :data:`IN_FLIGHT` batches per worker wait in a queue; the next free worker takes the next
one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import queue
import socket
import subprocess
import sys
import threading
from typing import Any, Protocol

import structlog

from gss.snapshot.worker import GalaxyJob, GalaxyWriter, WorkerResult
from store.scan import ScanBatch

log = structlog.get_logger(__name__)

IN_FLIGHT = 2
# argv: socket fd, worker index, log level, log format.
WORKER_COMMAND = (
    "import sys; from gss.snapshot.worker import worker_from_argv; worker_from_argv(sys.argv[1:])"
)


class ExportWorkerError(RuntimeError):
    """A worker process failed or died; the export is abandoned (no partition is published)."""


class Pool(Protocol):
    def begin(self, job: GalaxyJob) -> None: ...
    def submit(self, batch: ScanBatch) -> None: ...
    def end(self) -> list[WorkerResult]: ...
    def close(self) -> None: ...


class InlinePool:
    """Converts in the calling process (one worker; small exports and tests)."""

    def __init__(self, index: int = 0) -> None:
        self._index = index
        self._writer: GalaxyWriter | None = None

    def begin(self, job: GalaxyJob) -> None:
        self._writer = GalaxyWriter(job, self._index)

    def submit(self, batch: ScanBatch) -> None:
        assert self._writer is not None
        self._writer.add(batch)

    def end(self) -> list[WorkerResult]:
        assert self._writer is not None
        result = self._writer.close()
        self._writer = None
        return [result]

    def close(self) -> None:
        self._writer = None


class ProcessPool:
    """``workers`` worker processes, each writing its own part file per signal.

    Workers are plain ``python`` subprocesses talking over a socket pair (a fresh
    interpreter: no RocksDB threads forked, no multiprocessing helper processes left
    running). A worker whose exporter dies reads end-of-file and exits. Batches go through one bounded queue to a feeder thread per worker, which blocks in
    ``send`` until its worker takes the batch: whichever worker is free takes the next one,
    and the scanner never waits on a busy worker while another is idle.
    """

    def __init__(
        self, workers: int, log_level: str = "INFO", log_format: str = "json", first_index: int = 0
    ) -> None:
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._queue: queue.Queue[ScanBatch | None] = queue.Queue(maxsize=IN_FLIGHT * workers)
        self._feeders: list[threading.Thread] = []
        self._failed: list[int] = []
        try:
            for index in range(first_index, first_index + workers):
                parent, child = socket.socketpair()
                with child:
                    proc = subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            WORKER_COMMAND,
                            str(child.fileno()),
                            str(index),
                            log_level,
                            log_format,
                        ],
                        pass_fds=[child.fileno()],
                        stdin=subprocess.DEVNULL,
                    )
                self._conns.append(multiprocessing.connection.Connection(parent.detach()))
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise
        log.info("export_workers_started", workers=workers, pids=[p.pid for p in self._procs])

    def _recv(self, index: int) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self._conns[index].recv()
        except (EOFError, OSError):
            proc = self._procs[index]
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            raise ExportWorkerError(
                f"export worker {index} (pid {proc.pid}) died (exit code {proc.returncode}); "
                "nothing was published for the partitions in progress"
            ) from None
        if msg[0] == "error":
            raise ExportWorkerError(f"export worker {index} failed:\n{msg[1]}")
        return msg

    def _feed(self, index: int) -> None:
        conn = self._conns[index]
        while (item := self._queue.get()) is not None:
            try:
                conn.send(("rows",))
                for part in item.buffers():
                    conn.send_bytes(part.data)
            except OSError:
                self._failed.append(index)
                return

    def _raise_failure(self) -> None:
        index = self._failed[0]
        self._recv(index)  # the worker's own error, or its death
        raise ExportWorkerError(f"export worker {index} stopped taking batches")

    def begin(self, job: GalaxyJob) -> None:
        for conn in self._conns:
            conn.send(("begin", job))
        self._feeders = [
            threading.Thread(
                target=self._feed, args=(i,), name=f"gss-export-feeder-{i}", daemon=True
            )
            for i in range(len(self._conns))
        ]
        for feeder in self._feeders:
            feeder.start()

    def try_submit(self, batch: ScanBatch) -> bool:
        """Queue a batch if a worker can take it soon; False if every worker is busy."""
        if self._failed:
            self._raise_failure()
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            return False
        return True

    def submit(self, batch: ScanBatch) -> None:
        while True:
            if self._failed:
                self._raise_failure()
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def take_back(self) -> list[ScanBatch]:
        """The batches still queued (no worker has taken them), for the caller to convert."""
        taken: list[ScanBatch] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            assert item is not None
            taken.append(item)

    def end(self) -> list[WorkerResult]:
        for _ in self._feeders:
            while True:
                if self._failed:
                    self._raise_failure()
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
        for feeder in self._feeders:
            feeder.join()
        if self._failed:
            self._raise_failure()
        for conn in self._conns:
            conn.send(("end",))
        return [self._recv(index)[1] for index in range(len(self._conns))]

    def close(self) -> None:
        """Stop every worker (politely, then by force) and wait for it."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._procs.clear()


class HybridPool:
    """The exporting process converts too: a batch goes to a worker process when one can take
    it and is converted in place otherwise, so N cores need N-1 worker processes, and the
    split follows whichever side is busier (on two cores, the scanning process converts
    40-55% of the rows besides scanning them all)."""

    def __init__(self, workers: int, log_level: str, log_format: str) -> None:
        self._local = InlinePool(0)
        self._remote = ProcessPool(workers - 1, log_level, log_format, first_index=1)

    def begin(self, job: GalaxyJob) -> None:
        self._remote.begin(job)
        self._local.begin(job)

    def submit(self, batch: ScanBatch) -> None:
        if not self._remote.try_submit(batch):
            self._local.submit(batch)

    def end(self) -> list[WorkerResult]:
        # Batches no worker has taken yet are converted here rather than waited for, and this
        # process writes its last row groups while the workers finish theirs.
        for batch in self._remote.take_back():
            self._local.submit(batch)
        local = self._local.end()
        return self._remote.end() + local

    def close(self) -> None:
        self._remote.close()
        self._local.close()


def make_pool(workers: int, log_level: str, log_format: str) -> Pool:
    """``workers`` converters in all: this process plus ``workers - 1`` worker processes."""
    return HybridPool(workers, log_level, log_format) if workers >= 2 else InlinePool()
