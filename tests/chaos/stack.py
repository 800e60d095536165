"""The parts of the chaos run, each startable, killable with -9 and restartable where clients
look for it (same ports), every process in a session of its own and tracked
(:mod:`contract.processes`), so none outlives the run.

- :class:`Broker`: the local broker (tansu) behind a TCP proxy: an outage cuts every client
  connection and refuses new ones for a while; the broker keeps its data, as Kafka does.
- :class:`Triton`: the local Triton over a repository holding only the chaos job's model.
- :class:`Server`: ``gss serve`` (gRPC API, changelog ingester, outbox publisher) as a child
  process on a fixed port over one store directory.
- :class:`Compute`: the Flink job, ``gss compute run`` as a child process: on a MiniCluster
  (the JVM is a child of it), or submitted in remote mode to a :class:`LocalFlinkCluster`
  (a JobManager and two TaskManagers). A killed job is restarted from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Literal

import structlog

from contract import processes

log = structlog.get_logger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODEL = "safety_classifier"

FlinkMode = Literal["minicluster", "cluster"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes ----------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live, non-zombie process."""
    table: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (
                (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = (int(fields[1]), cmdline)
    return table


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``: pid -> command line."""
    return processes.descendants(root)


def processes_mentioning(text: str) -> dict[int, str]:
    return {pid: cmd for pid, (_, cmd) in _proc_table().items() if text in cmd}


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid``, its process group and every descendant (their groups too); returns
    how many processes were signalled."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(victim, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return len(victims)


def rss_bytes(pid: int | None) -> int:
    """Resident memory of ``pid`` and its descendants (0 if gone)."""
    return 0 if pid is None else processes.rss_bytes([pid, *processes.descendants(pid)])


def _popen(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=processes.child_preexec(signal.SIGKILL, main_thread_only=False),  # noqa: PLW1509
        )
    processes.track(process.pid, " ".join(cmd[:4]))
    return process


def _reap(process: subprocess.Popen[bytes] | None, *, graceful: float = 0.0) -> int | None:
    """Stop ``process`` and everything below it: SIGTERM first when ``graceful`` > 0 (waiting
    that long), then SIGKILL. Returns its exit code."""
    if process is None:
        return None
    if graceful > 0 and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=graceful)
    code = process.poll()
    kill_tree(process.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    processes.untrack(process.pid)
    return code if code is not None else process.returncode


# -- broker -------------------------------------------------------------------------------


class OutageProxy:
    """A TCP proxy in front of the broker (which advertises the proxy's address, so every
    client connection goes through it). :meth:`cut` closes every connection and stops
    listening — to its clients the broker is down — and :meth:`restore` listens again on the
    same port: a broker outage in which the broker keeps its data, as Kafka does."""

    def __init__(self, upstream_port: int | None = None) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cuts = 0

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", self.upstream_port or 0), timeout=5
                )
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for one in (source, sink):
                with contextlib.suppress(OSError):
                    one.shutdown(socket.SHUT_RDWR)
                one.close()
                with self._lock:
                    self._sockets.discard(one)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            victims = list(self._sockets)
        for one in victims:
            with contextlib.suppress(OSError):
                one.shutdown(socket.SHUT_RDWR)
            one.close()
        self.cuts += 1

    def close(self) -> None:
        self.cut()


class Broker:
    """The local broker behind an :class:`OutageProxy`; clients use :attr:`bootstrap_servers`
    (the proxy). Not a process restart: the local broker keeps records in memory (a restarted
    one is empty) and tansu's S3 engine was measured to lose acknowledged records across a
    restart (13 of 10,492 in one stop/start cycle), so neither stands for Kafka's durable
    restart; an outage seen by every client is what the stand-in can do faithfully."""

    def __init__(self) -> None:
        from gss.local.broker import LocalBroker

        self.proxy = OutageProxy()
        self.broker = LocalBroker(advertised=f"127.0.0.1:{self.proxy.port}")

    def start(self) -> Broker:
        self.broker.start()
        self.proxy.upstream_port = self.broker.port
        self.proxy.restore()
        return self

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def pid(self) -> int | None:
        return self.broker.pid  # type: ignore[no-any-return]

    def stop(self) -> None:
        """The outage: every connection cut, new ones refused."""
        self.proxy.cut()

    def restart(self) -> None:
        self.proxy.restore()

    def close(self) -> None:
        self.proxy.close()
        self.broker.stop()


# -- Triton -------------------------------------------------------------------------------


class Triton:
    """The local Triton over a repository with only :data:`MODEL`."""

    def __init__(self, work: Path) -> None:
        from gss.local.triton import LocalTriton

        repo = work / "models"
        if not repo.exists():
            shutil.copytree(
                REPO / "compute" / "models" / MODEL,
                repo / MODEL,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        self.local = LocalTriton(repo)

    def start(self) -> Triton:
        self.local.start()
        return self

    @property
    def url(self) -> str:
        return str(self.local.http_url)

    @property
    def pid(self) -> int | None:
        return self.local.pid  # type: ignore[no-any-return]

    def kill(self) -> None:
        self.local.kill()

    def close(self) -> None:
        self.local.close()


# -- GSS server ---------------------------------------------------------------------------


class Server:
    """``gss serve`` on a fixed port over the store ``work/store``."""

    def __init__(self, work: Path, bootstrap: str, *, sync_writes: bool = True) -> None:
        self.work = work
        self.data = work / "store"
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "GSS_LOG_FORMAT": "json",
            "GSS_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "GSS_SERVER__METRICS_PORT": str(self.metrics_port),
            "GSS_SERVER__SHUTDOWN_GRACE_SECONDS": "5",
            "GSS_STORE__SYNC_WRITES": "true" if sync_writes else "false",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 60.0) -> Server:
        self.process = _popen(
            [
                sys.executable,
                "-m",
                "gss",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data",
                str(self.data),
            ],
            self.work / "server.log",
            self.env,
        )
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        import grpc

        from clients.lookup import GssClient

        deadline = time.monotonic() + timeout
        with GssClient(self.address, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"gss serve exited ({self.process.returncode}); see {self.work / 'server.log'}"
                    )
                try:
                    client.galaxies()
                    return
                except grpc.RpcError:
                    time.sleep(0.2)
        raise RuntimeError(f"gss serve did not answer within {timeout:.0f} s")

    def kill(self) -> None:
        """kill -9: no drain, the store is not closed."""
        _reap(self.process)
        self.process = None

    def stop(self) -> int | None:
        """SIGTERM (drain, close the store); the exit code."""
        code = _reap(self.process, graceful=30)
        self.process = None
        return code

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, summed over labels: name -> value."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3
        ) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


# -- the Flink job --------------------------------------------------------------------------


class Compute:
    """The chaos job (``tests/chaos/plugins.py``) through ``gss compute run``."""

    JOB_NAME = "gss-chaos"

    def __init__(
        self,
        work: Path,
        bootstrap: str,
        triton_url: str | None,
        *,
        mode: FlinkMode = "minicluster",
        checkpoint_seconds: float = 2.0,
    ) -> None:
        self.work = work
        self.mode = mode
        self.checkpoints = work / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "GSS_LOG_FORMAT": "json",
            "GSS_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "GSS_COMPUTE__JOB_NAME": self.JOB_NAME,
            "GSS_COMPUTE__CHECKPOINT_DIR": self.checkpoints.as_uri(),
            "GSS_COMPUTE__CHECKPOINT_INTERVAL_SECONDS": str(checkpoint_seconds),
            # Every kill is a failure Flink counts: never run out of restarts.
            "GSS_COMPUTE__RESTART_ATTEMPTS": "100000",
            "GSS_COMPUTE__RESTART_DELAY_SECONDS": "1",
            "GSS_COMPUTE__METRICS_PORT": "0",
            "GSS_COMPUTE__MODEL_TIMEOUT_SECONDS": "20",
            "GSS_CHAOS_MODELS": "1" if triton_url else "0",
        }
        if triton_url:
            self.env["GSS_TRITON__URL"] = triton_url
        self.cluster: Any = None
        if mode == "cluster":
            from gss.local.flink_cluster import LocalFlinkCluster

            self.cluster = LocalFlinkCluster(work / "flink", task_managers=2)
            self.env["GSS_COMPUTE__MODE"] = "remote"
            self.env["GSS_COMPUTE__JOBMANAGER_ADDRESS"] = self.cluster.rest_address
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_from = 0
        self.resumed_from: list[str | None] = []

    def latest_checkpoint(self) -> str | None:
        """The newest completed checkpoint (``chk-N`` with ``_metadata``) of any run."""
        found = [
            (meta.stat().st_mtime, meta.parent)
            for meta in self.checkpoints.glob("*/chk-*/_metadata")
        ]
        return max(found)[1].as_uri() if found else None

    def start(self) -> Compute:
        """Start the job (the cluster first, in cluster mode), from the newest checkpoint if
        there is one (a job killed with -9 leaves its checkpoints behind)."""
        if self.cluster is not None and not self.cluster.pids():
            self.cluster.start()
        env = dict(self.env)
        resume = self.latest_checkpoint()
        if resume is not None:
            env["GSS_COMPUTE__FLINK_CONFIG"] = json.dumps(
                {
                    "execution.state-recovery.path": resume,
                    "execution.state-recovery.ignore-unclaimed-state": "true",
                }
            )
        self.resumed_from.append(resume)
        log_path = self.work / "compute.log"
        self._log_from = log_path.stat().st_size if log_path.exists() else 0
        self.process = _popen(
            [
                sys.executable,
                "-m",
                "gss",
                "compute",
                "run",
                "--plugins",
                str(REPO / "tests" / "chaos" / "plugins.py"),
                # On a cluster the job is the cluster's once submitted (as in production): a
                # client that waits would cancel it when a status call fails under load.
                *(["--detach"] if self.cluster is not None else []),
            ],
            self.work / "compute.log",
            env,
        )
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def running_job(self) -> str | None:
        """The id of the job RUNNING now (cluster: from its REST API; MiniCluster: its log)."""
        if self.cluster is not None:
            try:
                with urllib.request.urlopen(
                    f"http://{self.cluster.rest_address}/jobs", timeout=3
                ) as r:
                    jobs = json.loads(r.read())["jobs"]
            except OSError:
                return None
            running = [j["id"] for j in jobs if j["status"] == "RUNNING"]
            return running[0] if running else None
        if not self.alive():
            return None
        with (self.work / "compute.log").open("rb") as f:
            f.seek(self._log_from)
            text = f.read().decode(errors="replace")
        found = re.findall(r"compute job ([0-9a-f]{32})", text)
        return found[-1] if found else None

    def wait_running(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running_job() is not None:
                return True
            time.sleep(0.5)
        return False

    def _worker_roots(self) -> list[int]:
        if self.cluster is not None:
            return self.cluster.pids()[1:] if self.cluster.pids() else []
        return [self.pid] if self.pid is not None else []

    def python_workers(self) -> dict[int, str]:
        """The Python worker processes (Beam's boot and the workers it starts) running plugins."""
        found: dict[int, str] = {}
        for root in self._worker_roots():
            found.update(
                {
                    pid: cmd
                    for pid, cmd in descendants(root).items()
                    if "-m pyflink.fn_execution" in cmd
                }
            )
        return found

    def kill_python_worker(self, rng: random.Random, timeout: float = 90.0) -> str:
        """kill -9 one Python worker (waiting, bounded, for one: a job that is restarting
        has none)."""
        deadline = time.monotonic() + timeout
        while not (workers := self.python_workers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not workers:
            return "no python worker found"
        pid = rng.choice(sorted(workers))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"pid {pid}: {workers[pid][:100]}"

    def kill_task_manager(self, rng: random.Random) -> str:
        """kill -9 the TaskManager running the job (either, if that is unknown), and start a
        replacement once the job runs on the other one (or after a while)."""
        assert self.cluster is not None
        job = self.running_job()
        victims: list[int] = []
        if job is not None:
            with contextlib.suppress(OSError, KeyError):
                victims = sorted(self.cluster.task_managers_of(job))
        victim = rng.choice(victims or [0, 1])
        self.cluster.kill_task_manager(victim)
        # Until the job runs again, without the dead TaskManager (bounded).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = self.running_job()
            try:
                if job is not None and victim not in self.cluster.task_managers_of(job):
                    break
            except (OSError, KeyError):
                pass
            time.sleep(1.0)
        return f"taskmanager-{victim}"

    def replace_task_managers(self) -> None:
        assert self.cluster is not None
        for index in range(2):
            self.cluster.start_task_manager(index)

    def kill_job(self) -> str:
        """kill -9 the whole job: MiniCluster: ``gss compute run`` with its JVM and Python
        workers; cluster: the JobManager, both TaskManagers and the client."""
        killed = 0
        if self.process is not None:
            killed += kill_tree(self.process.pid)
            _reap(self.process)
            self.process = None
        if self.cluster is not None:
            killed += len(self.cluster.pids())
            self.cluster.kill()
        return f"{killed} processes"

    def rss(self) -> int:
        total = rss_bytes(self.pid)
        if self.cluster is not None:
            total += sum(rss_bytes(pid) for pid in self.cluster.pids())
        return total

    def stop(self) -> None:
        """Cancel the job (SIGTERM to ``gss compute run``; on a cluster through its REST API),
        then everything is killed."""
        if self.cluster is not None and self.cluster.pids():
            job = self.running_job()
            if job is not None:
                request = urllib.request.Request(
                    f"http://{self.cluster.rest_address}/jobs/{job}?mode=cancel", method="PATCH"
                )
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(request, timeout=10).close()
        _reap(self.process, graceful=20)
        self.process = None
        if self.cluster is not None:
            self.cluster.stop()
