"""A local S3-compatible object store for development and tests: moto's server mode.

moto (``moto[server]``, in the ``local`` extra) runs as a child process on an OS-chosen port
of 127.0.0.1, in a session of its own (contract/processes.py), in memory: a stopped server
forgets every bucket. Any access key and secret are accepted::

    with LocalS3() as s3:
        s3.create_bucket("archive")
        settings = load_settings(archive={"root": "s3://archive/gss", **s3.archive_settings()})
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType

import structlog

from contract import processes
from contract.errors import UnavailableError

log = structlog.get_logger(__name__)

ACCESS_KEY = "gss-local"
SECRET_KEY = "gss-local-secret"
REGION = "us-east-1"
_START_ATTEMPTS = 3


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalS3:
    """A moto S3 server child process."""

    def __init__(self, host: str = "127.0.0.1", *, ready_timeout_seconds: float = 30.0) -> None:
        self.host = host
        self.port: int | None = None
        self.ready_timeout_seconds = ready_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("the local S3 server has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def archive_settings(self) -> dict[str, str]:
        """The ``archive`` settings that point at this server (endpoint, region, credentials)."""
        return {
            "s3_endpoint": self.endpoint,
            "s3_region": REGION,
            "s3_access_key": ACCESS_KEY,
            "s3_secret_key": SECRET_KEY,
        }

    def start(self) -> LocalS3:
        if self._process is not None and self._process.poll() is None:
            return self
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise UnavailableError(
                "the local S3 server needs moto: pip install 'galaxy-signal-service[local]'"
            ) from exc
        for _ in range(_START_ATTEMPTS):
            port = _free_port(self.host)
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=processes.child_preexec(signal.SIGKILL, main_thread_only=False),  # noqa: PLW1509
            )
            processes.track(process.pid, "local s3")
            if self._wait_ready(process, port):
                self._process, self.port = process, port
                log.info("s3_started", endpoint=self.endpoint, pid=process.pid)
                return self
            _terminate(process)
        raise UnavailableError(f"the local S3 server (moto) did not start on {self.host}")

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.ready_timeout_seconds
        url = f"http://{self.host}:{port}/moto-api/"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0):
                return True
            time.sleep(0.05)
        return False

    def create_bucket(self, bucket: str) -> None:
        from pyarrow import fs as pafs

        fs = pafs.S3FileSystem(
            endpoint_override=f"{self.host}:{self.port}",
            scheme="http",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            allow_bucket_creation=True,
        )
        fs.create_dir(bucket)

    def stop(self) -> None:
        if self._process is not None:
            _terminate(self._process)
            log.info("s3_stopped", pid=self._process.pid)
            self._process = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        processes.kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            processes.kill_group(process.pid)
            process.wait(timeout=5)
    processes.untrack(process.pid)
