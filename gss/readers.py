"""Several serving processes on one port: one writer and ``server.processes - 1`` readers.

gRPC's Python machinery costs most of a lookup (docs/serving.md, "What bounds a lookup"), and
one Python process serves on one core. So, like gRPC's own multiprocessing example, a server
may run several processes listening on the same port (``SO_REUSEPORT``: the kernel spreads
connections across them). RocksDB has one writer, so:

- the **writer** is the process ``gss serve`` starts: the primary store, the changelog
  ingester, the outbox publisher, PutSignals — and it serves lookups too;
- each **reader** (a child process) opens a RocksDB *secondary instance* of the same store,
  serves GetSignals (and WatchSignals, health, reflection) on the same port, and forwards
  PutSignals and DescribeCluster to the writer over a private socket.

**The guarantee kept**: an availability event is published only once its value is readable
through every process that serves. A reader sees the primary's writes as of its last
catch-up (``try_catch_up_with_primary``), whose RocksDB sequence number it reports on a
shared-memory :class:`Board`. Before the publisher sends outbox entries it takes the primary's
sequence number *after* reading them (so it covers them) and :meth:`ReaderGate.wait`\\ s until
every reader in the gate reports at least that. PutSignals does the same before it
acknowledges a write it applied (or waited readable for), so a lookup on any connection after
the acknowledgement sees it (read after write, as with one process).

**A reader that dies or hangs never blocks events for long**: the writer reaps dead readers
(within ~50 ms they leave the gate), and a reader that has not reached the wanted sequence
within ``server.reader_catch_up_timeout_seconds`` (or whose heartbeat stopped) is killed with
SIGKILL — it can then serve nothing stale — and leaves the gate; either way a replacement is
started, which joins the gate *before* it binds the port and catches up once more after
joining, so it never serves a view older than an event already published.

**Metrics**: readers count in prometheus_client's multiprocess mode, in files of a directory
beside the store (emptied when the readers start; a dead reader's counts stay there; removed
once the writer's ``/metrics`` is closed), and the writer's ``/metrics`` adds them to its own
(:class:`gss.metrics.ServingProcessesCollector`).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import pickle
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import structlog
from prometheus_client.multiprocess import mark_process_dead

from contract import processes
from contract.errors import (
    GssError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    WrongNodeError,
)
from contract.settings import Settings
from contract.v1 import envelope_pb2, signal_service_pb2
from gss.metrics import MULTIPROCESS_DIR_ENV

if TYPE_CHECKING:
    from store.db import SignalStore

log = structlog.get_logger(__name__)

# Board layout: a header, then one row per reader slot.
_WANTED, _SERVING, _STOPPING = 0, 1, 2
_HEADER = 4
_PID, _STATE, _SEQUENCE, _HEARTBEAT = 0, 1, 2, 3
_ROW = 4
# Slot states. Readers in JOINED or BOUND are in the gate.
FREE, STARTING, JOINED, BOUND, DEAD = 0, 1, 2, 3, 4
_IN_GATE = (JOINED, BOUND)

# A reader with nothing wanted still catches up this often (values ingested but not yet
# announced become visible, and its heartbeat shows it is alive).
IDLE_CATCH_UP_SECONDS = 0.1
# How often a waiting writer looks at the board (readers are woken through a pipe).
_POLL_SECONDS = 0.001
# How often the writer reaps dead readers.
REAP_SECONDS = 0.05
# Metadata the writer's private socket requires (a secret handed to the readers at spawn).
INTERNAL_TOKEN_HEADER = "gss-internal-token"


class Board:
    """Shared memory between the writer and its readers (a small file mapped by each): per
    reader slot its pid, state, caught-up RocksDB sequence and heartbeat; the sequence the
    writer wants readers to reach; whether the writer is serving (ready) and stopping. Plain
    int64 cells, each written by one process only, so no lock is needed across processes."""

    def __init__(self, path: str | Path, slots: int, *, create: bool = False) -> None:
        self.path = Path(path)
        self.slots = slots
        size = (_HEADER + slots * _ROW) * 8
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(bytes(size))
        with open(self.path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), size)
        self.cells = memoryview(self._map).cast("q")
        self._want_lock = threading.Lock()

    def _at(self, slot: int, column: int) -> int:
        return _HEADER + slot * _ROW + column

    # -- the writer's side ---------------------------------------------------------------

    def want(self, sequence: int) -> None:
        with self._want_lock:
            self.cells[_WANTED] = max(self.cells[_WANTED], sequence)

    def set_serving(self, serving: bool) -> None:
        self.cells[_SERVING] = int(serving)

    def set_stopping(self) -> None:
        self.cells[_STOPPING] = 1

    def assign(self, slot: int) -> None:
        """A new reader is being started in ``slot``: out of the gate until it joins."""
        self.cells[self._at(slot, _STATE)] = STARTING
        self.cells[self._at(slot, _SEQUENCE)] = -1
        self.cells[self._at(slot, _HEARTBEAT)] = time.monotonic_ns()

    def mark_dead(self, slot: int) -> None:
        self.cells[self._at(slot, _STATE)] = DEAD

    # -- the reader's side ---------------------------------------------------------------

    def register(self, slot: int, pid: int) -> None:
        self.cells[self._at(slot, _PID)] = pid
        self.beat(slot)

    def join(self, slot: int) -> None:
        self.cells[self._at(slot, _STATE)] = JOINED

    def bound(self, slot: int) -> None:
        self.cells[self._at(slot, _STATE)] = BOUND

    def report(self, slot: int, sequence: int) -> None:
        self.cells[self._at(slot, _SEQUENCE)] = sequence
        self.beat(slot)

    def beat(self, slot: int) -> None:
        self.cells[self._at(slot, _HEARTBEAT)] = time.monotonic_ns()

    # -- both ----------------------------------------------------------------------------

    @property
    def wanted(self) -> int:
        return int(self.cells[_WANTED])

    @property
    def serving(self) -> bool:
        return bool(self.cells[_SERVING])

    @property
    def stopping(self) -> bool:
        return bool(self.cells[_STOPPING])

    def state(self, slot: int) -> int:
        return int(self.cells[self._at(slot, _STATE)])

    def pid(self, slot: int) -> int:
        return int(self.cells[self._at(slot, _PID)])

    def sequence(self, slot: int) -> int:
        return int(self.cells[self._at(slot, _SEQUENCE)])

    def heartbeat_age(self, slot: int) -> float:
        return (time.monotonic_ns() - int(self.cells[self._at(slot, _HEARTBEAT)])) / 1e9

    def gated(self) -> list[int]:
        """Slots whose readers are in the gate (joined or serving)."""
        return [s for s in range(self.slots) if self.state(s) in _IN_GATE]


@dataclass
class ReaderGate:
    """Blocks until every reader in the gate has caught up to a sequence number.

    ``evict(slot)`` is called for a reader that has not got there within ``timeout_seconds``
    of being asked (or whose heartbeat is that old): it must kill the reader (so it can serve
    nothing more) and take it out of the gate. The wait then goes on without it; it never
    waits for a reader longer than the timeout.
    """

    board: Board
    timeout_seconds: float
    evict: Callable[[int], None]
    poll_seconds: float = _POLL_SECONDS
    # Wakes the readers (they then catch up at once); None: they catch up on their own.
    wake: Callable[[], None] | None = None
    waits: int = 0
    evictions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lagging(self, target: int) -> list[int]:
        return [s for s in self.board.gated() if self.board.sequence(s) < target]

    def wait(self, target: int) -> None:
        """Return once every reader in the gate reads at least sequence ``target``."""
        if not self.lagging(target):
            return
        self.waits += 1
        self.board.want(target)
        if self.wake is not None:
            self.wake()
        asked = time.monotonic()
        while lagging := self.lagging(target):
            waited = time.monotonic() - asked
            for slot in lagging:
                if (
                    waited > self.timeout_seconds
                    or self.board.heartbeat_age(slot) > self.timeout_seconds
                ):
                    with self._lock:
                        if self.board.state(slot) not in _IN_GATE:
                            continue  # evicted by another waiter meanwhile
                        self.evictions += 1
                        log.error(
                            "reader_process_evicted",
                            slot=slot,
                            pid=self.board.pid(slot),
                            reader_sequence=self.board.sequence(slot),
                            wanted_sequence=target,
                            waited_seconds=round(waited, 3),
                            action="killed and replaced; events go on without it",
                        )
                        self.evict(slot)
            time.sleep(self.poll_seconds)


@dataclass
class ReaderPool:
    """The writer's reader processes: started, reaped, replaced, stopped."""

    settings: Settings
    port: int
    internal_address: str
    internal_token: str
    board: Board
    gate: ReaderGate = field(init=False)
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The write ends of the readers' wake pipes.
    _wakes: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reaper: threading.Thread | None = None
    restarts: int = 0

    def __post_init__(self) -> None:
        self.gate = ReaderGate(
            self.board,
            self.settings.server.reader_catch_up_timeout_seconds,
            self._evict,
            wake=self.wake,
        )

    def wake(self) -> None:
        """Wake every reader to catch up now (a byte on its pipe; a full pipe is awake)."""
        with self._lock:  # not while a respawn swaps the pipes
            for fd in self._wakes.values():
                # A full pipe means a wake is pending already; a broken one, a reader gone.
                with contextlib.suppress(OSError):
                    os.write(fd, b"\0")

    @property
    def secondary_root(self) -> Path:
        store = Path(self.settings.store.path)
        return store.parent / f".{store.name}.readers"

    @property
    def metrics_dir(self) -> Path:
        """Where the readers write their metrics (prometheus_client's multiprocess files)."""
        store = Path(self.settings.store.path)
        return store.parent / f".{store.name}.metrics"

    def remove_metrics(self) -> None:
        """Remove the readers' metrics: once the writer's ``/metrics`` no longer reads them
        (removed with the readers, a scrape while the writer stops would see counters drop)."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _spawn(self, slot: int) -> None:
        self.board.assign(slot)
        secondary = self.secondary_root / str(slot)
        shutil.rmtree(secondary, ignore_errors=True)
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        # A session of its own (a Ctrl-C or SIGTERM to the terminal's group reaches only the
        # writer, which stops its readers in order); killed with its starter (contract.processes
        # and a parent check in the reader).
        process = subprocess.Popen(
            [sys.executable, "-c", "from gss.readers import main; main()"],
            stdin=subprocess.PIPE,
            # Set before the reader imports prometheus_client: it counts in files there.
            env={**os.environ, MULTIPROCESS_DIR_ENV: str(self.metrics_dir)},
            start_new_session=True,
            pass_fds=(wake_read,),
            preexec_fn=processes.child_preexec(signal.SIGKILL),  # noqa: PLW1509 (prctl only)
        )
        processes.track(process.pid, f"gss reader {slot + 1}")
        assert process.stdin is not None
        process.stdin.write(
            pickle.dumps(
                (
                    self.settings,
                    slot,
                    str(self.board.path),
                    self.board.slots,
                    self.port,
                    self.internal_address,
                    self.internal_token,
                    str(secondary),
                    os.getpid(),
                    wake_read,
                )
            )
        )
        process.stdin.close()
        os.close(wake_read)
        old = self._wakes.pop(slot, None)
        if old is not None:
            os.close(old)
        self._wakes[slot] = wake_write
        self._procs[slot] = process
        log.info("reader_process_started", slot=slot, pid=process.pid)

    def start(self, timeout_seconds: float) -> ReaderPool:
        """Start every reader and wait until each serves on the port."""
        # Fresh for this run: counts left by an earlier run's readers are not this server's.
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        with self._lock:
            for slot in range(self.board.slots):
                self._spawn(slot)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if all(self.board.state(s) == BOUND for s in range(self.board.slots)):
                break
            for slot, process in self._procs.items():
                if process.poll() is not None:
                    self.stop(0)
                    self.remove_metrics()
                    raise OSError(
                        f"reader process {slot + 1} exited with code {process.returncode} "
                        "before serving (its log says why)"
                    )
            time.sleep(0.02)
        else:
            self.stop(0)
            self.remove_metrics()
            raise OSError(f"reader processes did not serve within {timeout_seconds:.0f} s")
        self._reaper = threading.Thread(target=self._reap, name="gss-reader-reaper", daemon=True)
        self._reaper.start()
        return self

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs.values() if p.poll() is None]

    def _evict(self, slot: int) -> None:
        with self._lock:
            process = self._procs.get(slot)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5)
            self.board.mark_dead(slot)

    def _reap(self) -> None:
        while not self._stop.wait(REAP_SECONDS):
            with self._lock:
                if self._stop.is_set():
                    return
                for slot, process in list(self._procs.items()):
                    if process.poll() is None:
                        continue
                    processes.untrack(process.pid)
                    # Its counters stay in the metrics directory (they must not go back);
                    # only its live gauges, if any, go.
                    mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
                    if self.board.state(slot) != DEAD:
                        self.board.mark_dead(slot)
                    log.error(
                        "reader_process_died",
                        slot=slot,
                        pid=process.pid,
                        exit_code=process.returncode,
                        action="out of the event gate; starting a replacement",
                    )
                    self.restarts += 1
                    self._spawn(slot)

    def drain(self) -> None:
        """Ask every reader to drain (SIGTERM): NOT_SERVING, in-flight calls finish."""
        self._stop.set()
        self.board.set_stopping()
        with self._lock:
            for process in self._procs.values():
                if process.poll() is None:
                    process.terminate()

    def stop(self, grace: float) -> None:
        """Drain and wait ``grace`` (+5 s) for the readers; kill what is left. None remains."""
        self.drain()
        deadline = time.monotonic() + grace + 5
        with self._lock:
            for slot, process in self._procs.items():
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("reader_process_killed", slot=slot, pid=process.pid)
                    process.kill()
                    process.wait(5)
                processes.untrack(process.pid)
                self.board.mark_dead(slot)
        if self._reaper is not None:
            self._reaper.join(5)
        for fd in self._wakes.values():
            os.close(fd)
        self._wakes.clear()
        shutil.rmtree(self.secondary_root, ignore_errors=True)


# -- the reader process ----------------------------------------------------------------------


_CODE_ERRORS: dict[grpc.StatusCode, type[GssError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: WrongNodeError,
}


class WriterLink:
    """A reader's channel to the writer's private socket (PutSignals, DescribeCluster)."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.metadata = ((INTERNAL_TOKEN_HEADER, token),)
        pb = signal_service_pb2
        self.put = self.channel.unary_unary(
            "/gss.v1.SignalService/PutSignals",
            request_serializer=pb.PutSignalsRequest.SerializeToString,
            response_deserializer=pb.PutSignalsResponse.FromString,
        )
        self.describe = self.channel.unary_unary(
            "/gss.v1.SignalService/DescribeCluster",
            request_serializer=pb.DescribeClusterRequest.SerializeToString,
            response_deserializer=pb.ClusterMap.FromString,
        )

    async def call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            kind = _CODE_ERRORS.get(exc.code(), UnavailableError)
            raise kind(exc.details() or f"the writer process answered {exc.code().name}") from None


def main() -> None:
    """A reader process's entry (``python -c "from gss.readers import main; main()"``): its
    arguments come pickled on stdin from the writer (:meth:`ReaderPool._spawn`)."""
    (
        settings,
        slot,
        board_path,
        slots,
        port,
        internal_address,
        internal_token,
        secondary_path,
        parent_pid,
        wake_fd,
    ) = pickle.loads(sys.stdin.buffer.read())
    os.set_blocking(wake_fd, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the writer stops readers (SIGTERM)
    if os.getppid() != parent_pid:
        return
    from contract import logs

    logs.configure(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(process=slot + 1)
    board = Board(board_path, slots)
    board.register(slot, os.getpid())
    reader = _Reader(settings, slot, board, port, internal_address, internal_token, secondary_path)
    reader.wake_fd = wake_fd
    reader.run(parent_pid)


class _Reader:
    def __init__(
        self,
        settings: Settings,
        slot: int,
        board: Board,
        port: int,
        internal_address: str,
        internal_token: str,
        secondary_path: str,
    ) -> None:
        from contract.registry import load_registry
        from gss.server import open_store

        self.settings = settings.model_copy(
            update={
                "server": settings.server.model_copy(
                    update={"port": port, "health_port": None, "metrics_port": -1}
                )
            }
        )
        self.slot = slot
        self.board = board
        self.secondary_path = secondary_path
        self.registry = load_registry(settings.registry_path)
        self.store: SignalStore = open_store(self.settings, self.registry, secondary=secondary_path)
        self.link_args = (internal_address, internal_token)
        self.stop = threading.Event()
        self.wake_fd = -1
        self.sequence = self.store.sequence()
        self.board.report(slot, self.sequence)

    def _reload_registry(self) -> None:
        from contract.registry import load_registry

        try:
            changes = self.registry.adopt_lifecycle(load_registry(self.settings.registry_path))
        except GssError as exc:
            log.error("registry_reload_refused", error=str(exc))
            return
        log.info("registry_reloaded", changes=changes)

    def catch_up(self) -> None:
        self.sequence = self.store.catch_up()
        self.board.report(self.slot, self.sequence)

    def follow(self) -> None:
        """Catch up when the writer wakes this reader (a byte on its pipe: a sequence is
        wanted), and every idle interval anyway (values not announced yet, the heartbeat)."""
        while not self.stop.is_set():
            woken, _, _ = select.select([self.wake_fd], [], [], IDLE_CATCH_UP_SECONDS)
            if woken:
                try:
                    if not os.read(self.wake_fd, 4096):
                        return  # the writer is gone
                except BlockingIOError:
                    pass
            try:
                self.catch_up()
            except RuntimeError:
                return  # closed: stopping
            except Exception:
                # Falling behind is safe: the writer evicts (and replaces) a reader that stays
                # behind, so this reader never serves a stale view of an announced value.
                log.exception("reader_catch_up_failed", action="retrying")
                time.sleep(IDLE_CATCH_UP_SECONDS)

    def run(self, parent_pid: int) -> None:
        from gss.server import REGISTRY_POLL_SECONDS, ReaderSide, start_reader_server

        # Join the gate first, then catch up once more, then bind: any event the writer
        # published before the join is covered by that catch-up (module docstring).
        self.board.join(self.slot)
        self.catch_up()
        follower = threading.Thread(target=self.follow, name="gss-reader-follow", daemon=True)
        follower.start()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        drain = asyncio.Event()

        def on_term(_signum: int, _frame: object) -> None:
            loop.call_soon_threadsafe(drain.set)

        signal.signal(signal.SIGTERM, on_term)
        side = ReaderSide(self.slot + 1, WriterLink(*self.link_args))

        async def serve() -> None:
            server = await start_reader_server(self.settings, self.registry, self.store, side)
            self.board.bound(self.slot)
            log.info("reader_process_serving", port=self.settings.server.port, pid=os.getpid())
            serving: bool | None = None
            registry_state = file_state(Path(self.settings.registry_path))
            next_registry_check = time.monotonic() + REGISTRY_POLL_SECONDS
            while not drain.is_set():
                if os.getppid() != parent_pid or self.board.stopping:
                    break
                if time.monotonic() >= next_registry_check:
                    # Follow the registry file's lifecycle changes as the writer does.
                    next_registry_check = time.monotonic() + REGISTRY_POLL_SECONDS
                    state = file_state(Path(self.settings.registry_path))
                    if state != registry_state:
                        registry_state = state
                        self._reload_registry()
                want = self.board.serving
                if want != serving:
                    await server.set_serving(want)
                    serving = want
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drain.wait(), 0.05)
            await server.stop(self.settings.server.shutdown_grace_seconds)
            await side.link.channel.close()

        try:
            loop.run_until_complete(serve())
        finally:
            self.stop.set()
            follower.join(5)
            self.store.close()
            shutil.rmtree(self.secondary_path, ignore_errors=True)
            log.info("reader_process_stopped", pid=os.getpid())


def file_state(path: Path) -> tuple[int, int, int] | None:
    """(mtime, size, inode) of the file ``path`` names (following links), None if unreadable:
    what changes when the registry file is rewritten."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def stored_positions_applied(
    store: SignalStore, positions: Sequence[envelope_pb2.ChangelogPosition]
) -> bool:
    """Whether the store (as this process sees it) holds every given changelog position: its
    stored next offset for the partition is past it (written with the values it covers)."""
    from gss.kafka.meta import offset_key, parse_offset_entry

    for position in positions:
        key = offset_key(position.topic, position.partition)
        raw = store.get_meta(key)
        if raw is None or parse_offset_entry(key, raw)[2] <= position.offset:
            return False
    return True


def new_internal_endpoint() -> tuple[str, str]:
    """A private address (an abstract Unix socket) and a secret for the writer's side door."""
    return f"unix-abstract:gss-writer-{os.getpid()}-{secrets.token_hex(8)}", secrets.token_hex(16)


__all__ = [
    "Board",
    "ReaderGate",
    "ReaderPool",
    "WriterLink",
    "main",
    "new_internal_endpoint",
    "stored_positions_applied",
]
