"""A local Flink standalone session cluster: a JobManager and TaskManagers as processes of
their own, started with the scripts PyFlink's wheel ships (``pyflink/bin/jobmanager.sh``,
``taskmanager.sh``), for running the compute job in ``remote`` mode the way a real cluster
runs it — and for killing a TaskManager under it. Development and tests only; production
runs Flink's Kubernetes operator (deploy/flink).

    with LocalFlinkCluster(task_managers=2, work_dir=tmp) as cluster:
        settings.compute.mode = "remote"; settings.compute.jobmanager_address = cluster.rest_address
        ...
        cluster.kill_task_manager(0)    # kill -9, as a crashed pod
        cluster.start_task_manager(0)   # and a replacement

Every process runs in a session of its own, tracked by :mod:`contract.processes` (killed if
the starter dies), on loopback with OS-chosen ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
import yaml

from contract import processes
from contract.errors import UnavailableError

log = structlog.get_logger(__name__)


def _pyflink_dir() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalFlinkCluster:
    """A JobManager (REST on an OS-chosen port of 127.0.0.1) and ``task_managers``
    TaskManagers with ``slots`` slots each."""

    def __init__(
        self,
        work_dir: Path,
        *,
        task_managers: int = 2,
        slots: int = 1,
        startup_timeout_seconds: float = 90.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.slots = slots
        self.startup_timeout_seconds = startup_timeout_seconds
        self.rest_port = _free_port()
        self.rpc_port = _free_port()
        self.extra_config = extra_config or {}
        self._job_manager: subprocess.Popen[bytes] | None = None
        self._task_managers: list[subprocess.Popen[bytes] | None] = [None] * task_managers

    @property
    def temp_dir(self) -> Path:
        """The processes' temporary files (``io.tmp.dirs``): emptied on start and on stop."""
        return self.work_dir / "flink-tmp"

    @property
    def rest_address(self) -> str:
        """host:port of the JobManager's REST endpoint (``compute.jobmanager_address``)."""
        return f"127.0.0.1:{self.rest_port}"

    # -- configuration ---------------------------------------------------------------------

    def _conf_dir(self) -> Path:
        conf = self.work_dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        shipped = _pyflink_dir() / "conf"
        for name in ("log4j.properties", "log4j-console.properties", "logback.xml"):
            if (shipped / name).exists():
                (conf / name).write_bytes((shipped / name).read_bytes())
        config = yaml.safe_load((shipped / "config.yaml").read_text())
        flat = {
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": self.rpc_port,
            "jobmanager.memory.process.size": "1024m",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.host": "127.0.0.1",
            "taskmanager.rpc.port": "0",
            "taskmanager.data.port": 0,
            "taskmanager.numberOfTaskSlots": self.slots,
            "taskmanager.memory.process.size": "1280m",
            "blob.server.port": "0",
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": self.rest_port,
            # The plugins' Python runs in the interpreter that started the cluster (its venv).
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            # A TaskManager killed with -9 is noticed within seconds, not the default 50.
            "heartbeat.interval": 1000,
            "heartbeat.timeout": 5000,
            # Working directories, blobs (each job's jars), the RPC system's jar: under the
            # cluster's directory, removed when it stops (Flink leaves them when killed).
            "io.tmp.dirs": str(self.temp_dir),
            **self.extra_config,
        }
        for key in ("jobmanager", "taskmanager", "rest", "parallelism"):
            config.pop(key, None)
        config.update(flat)
        # What Flink and PyFlink put in the JVM's own temp directory (the web server's files,
        # Python environments) goes with the rest.
        opts = config.setdefault("env", {}).setdefault("java", {}).setdefault("opts", {})
        opts["all"] = f"{opts.get('all', '')} -Djava.io.tmpdir={self.temp_dir}".strip()
        (conf / "config.yaml").write_text(yaml.safe_dump(config))
        return conf

    def _environment(self, conf: Path) -> dict[str, str]:
        logs = self.work_dir / "log"
        logs.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(conf),
            FLINK_LOG_DIR=str(logs),
            FLINK_PID_DIR=str(self.work_dir),
            FLINK_HOME=str(_pyflink_dir()),
        )
        return env

    def _launch(self, role: str, index: int | None = None) -> subprocess.Popen[bytes]:
        conf = self.work_dir / "conf"
        script = _pyflink_dir() / "bin" / f"{role}.sh"
        name = role if index is None else f"{role}-{index}"
        out = (self.work_dir / "log" / f"{name}.out").open("ab")
        # A TaskManager's resource id names it in the REST API (which one runs a task).
        args = [] if index is None else [f"-Dtaskmanager.resource-id={name}"]
        process = subprocess.Popen(
            ["bash", str(script), "start-foreground", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._environment(conf),
            start_new_session=True,
            preexec_fn=processes.child_preexec(signal.SIGKILL),  # noqa: PLW1509
        )
        out.close()
        processes.track(process.pid, f"Flink {name}")
        log.info("flink_process_started", role=role, index=index, pid=process.pid)
        return process

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> LocalFlinkCluster:
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # left by processes killed earlier
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._conf_dir()
        self._environment(self.work_dir / "conf")
        self._job_manager = self._launch("jobmanager")
        for index in range(len(self._task_managers)):
            self._task_managers[index] = self._launch("taskmanager", index)
        self.wait_task_managers(len(self._task_managers))
        log.info(
            "flink_cluster_ready",
            rest_address=self.rest_address,
            task_managers=len(self._task_managers),
        )
        return self

    def overview(self) -> dict[str, Any]:
        """The JobManager's ``/overview`` (task managers, slots, jobs)."""
        with urllib.request.urlopen(f"http://{self.rest_address}/overview", timeout=5) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def wait_task_managers(self, count: int) -> None:
        """Until ``count`` TaskManagers are registered (UnavailableError after the timeout)."""
        deadline = time.monotonic() + self.startup_timeout_seconds
        last: Any = None
        while time.monotonic() < deadline:
            if self._job_manager is not None and self._job_manager.poll() is not None:
                raise UnavailableError(
                    f"the Flink JobManager exited ({self._job_manager.returncode}); see "
                    f"{self.work_dir / 'log'}"
                )
            try:
                last = self.overview()
                if last.get("taskmanagers", 0) >= count:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.5)
        raise UnavailableError(
            f"the local Flink cluster did not get {count} TaskManagers within "
            f"{self.startup_timeout_seconds:.0f} s (last: {last}); logs in {self.work_dir / 'log'}"
        )

    def task_managers_of(self, job_id: str) -> set[int]:
        """The indexes of the TaskManagers running tasks of ``job_id`` now."""
        found: set[int] = set()
        base = f"http://{self.rest_address}/jobs/{job_id}"
        with urllib.request.urlopen(base, timeout=5) as r:
            vertices = json.loads(r.read())["vertices"]
        for vertex in vertices:
            with urllib.request.urlopen(
                f"{base}/vertices/{vertex['id']}/taskmanagers", timeout=5
            ) as r:
                for tm in json.loads(r.read())["taskmanagers"]:
                    name = str(tm.get("taskmanager-id", ""))
                    if name.startswith("taskmanager-"):
                        found.add(int(name.rsplit("-", 1)[1]))
        return found

    def completed_checkpoints(self, job_id: str) -> int:
        with urllib.request.urlopen(
            f"http://{self.rest_address}/jobs/{job_id}/checkpoints", timeout=5
        ) as r:
            return int(json.loads(r.read())["counts"]["completed"])

    def kill_task_manager(self, index: int) -> None:
        """SIGKILL one TaskManager (and its Python workers), as a crashed node."""
        process = self._task_managers[index]
        if process is None:
            return
        processes.kill_group(process.pid)
        process.wait(timeout=10)
        processes.untrack(process.pid)
        self._task_managers[index] = None
        log.warning("flink_task_manager_killed", index=index, pid=process.pid)

    def start_task_manager(self, index: int) -> None:
        """Start (again) the TaskManager ``index``."""
        if self._task_managers[index] is None:
            self._task_managers[index] = self._launch("taskmanager", index)

    def pids(self) -> list[int]:
        """The JobManager's and running TaskManagers' process ids (their group ids too)."""
        return [p.pid for p in [self._job_manager, *self._task_managers] if p is not None]

    def kill(self) -> None:
        """SIGKILL the JobManager and every TaskManager at once (the whole deployment and the
        job on it crash); :meth:`start` brings the cluster back on the same REST port."""
        running = [p for p in [*self._task_managers, self._job_manager] if p is not None]
        for process in running:
            processes.kill_group(process.pid)
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            processes.untrack(process.pid)
        self._task_managers = [None] * len(self._task_managers)
        self._job_manager = None
        log.warning("flink_cluster_killed", rest_address=self.rest_address)

    def stop(self) -> None:
        """SIGTERM every process, SIGKILL what is left after a few seconds."""
        running = [p for p in [*self._task_managers, self._job_manager] if p is not None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            processes.kill_group(process.pid)
            processes.untrack(process.pid)
        self._task_managers = [None] * len(self._task_managers)
        self._job_manager = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        log.info("flink_cluster_stopped", rest_address=self.rest_address)

    def __enter__(self) -> LocalFlinkCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
