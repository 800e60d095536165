"""A local Triton Inference Server over the model repository, started from the project's code.

The server is the ``tritonserver`` binary that PyPI's ``nvidia-pytriton`` ships (Triton 2.51
with its Python backend). :class:`LocalTriton` starts it as a subprocess in its own process
group, on 127.0.0.1 with ports the OS picks, waits until every model is READY, and stops it
(SIGTERM, then SIGKILL of the whole group) on exit::

    with LocalTriton(model_repository(settings.triton)) as triton:
        client = ModelClient(triton.http_url)

Production points ``TritonSettings.url`` at any Triton endpoint instead; :func:`triton_url`
is the one switch between the two (used by ``gss run`` and ``gss models``).

Nothing in site-packages is modified: the Python backend wants its stub for the running
Python next to ``libtriton_python.so``, so each server gets a private backend directory of
symlinks in its work directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import structlog

from compute.triton import model_repository
from compute.triton.transport import TransportError, TritonTransport
from contract import processes
from contract.errors import GssError
from contract.settings import TritonSettings

log = structlog.get_logger(__name__)

_PORT_ATTEMPTS = 3
_POLL_SECONDS = 0.2
# Triton's glog format: E1122 04:41:56.802896 18344 model_lifecycle.cc:642] "failed to load ..."
_ERROR_LINE = re.compile(r"^E\d{4} ")


class TritonStartError(GssError):
    """The local Triton server did not start, or its models did not become READY."""


def find_models(repository: Path) -> list[str]:
    """Model names in a repository: subdirectories holding a ``config.pbtxt``."""
    if not repository.is_dir():
        raise TritonStartError(
            f"model repository {repository} is not a directory; "
            "set GSS_TRITON__MODEL_REPOSITORY (TritonSettings.model_repository)"
        )
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    if not models:
        raise TritonStartError(
            f"model repository {repository} holds no model (no <name>/config.pbtxt)"
        )
    return models


def pytriton_paths() -> tuple[Path, Path, Path]:
    """The tritonserver binary, its bundled shared libraries and its backends directory."""
    # Located, not imported: importing pytriton imports tritonclient.grpc, which refuses
    # PyFlink's grpcio (see transport.py).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError(
            "the local Triton server needs nvidia-pytriton: pip install "
            "'galaxy-signal-service[models]', or set GSS_TRITON__URL to a running Triton"
        )
    root = Path(next(iter(spec.submodule_search_locations))).resolve() / "tritonserver"
    binary = root / "bin" / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    backends = root / "backends"
    for path in (binary, libs, backends / "python" / "libtriton_python.so"):
        if not path.exists():
            raise TritonStartError(f"nvidia-pytriton install is incomplete: {path} is missing")
    return binary, libs, backends


def python_stub() -> Path:
    """The Python backend stub built for the running interpreter's Python version."""
    binary, _, _ = pytriton_paths()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = binary.parent.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    return stub


def _free_ports(count: int) -> list[int]:
    """Ports the OS considers free on 127.0.0.1 right now (held open together, then closed)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalTriton:
    """A tritonserver subprocess over ``model_repository``; a context manager.

    ``http_url`` (``127.0.0.1:PORT``: what the model client and ``TritonSettings.url`` take),
    ``grpc_url`` (same form, for other gRPC clients) and ``metrics_url`` are set once started.
    :meth:`stop` followed by :meth:`start` restarts on the same ports, so clients holding
    the URL reconnect (tests use this to show recovery).
    """

    def __init__(
        self,
        model_repository: Path | str,
        *,
        startup_timeout_seconds: float = 120.0,
        model_config_name: str | None = None,
        stop_timeout_seconds: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.models = find_models(self.model_repository)
        self.startup_timeout_seconds = startup_timeout_seconds
        self.model_config_name = model_config_name
        self.stop_timeout_seconds = stop_timeout_seconds
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._ports: tuple[int, int, int] | None = None
        self._log_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: TritonSettings) -> LocalTriton:
        return cls(
            model_repository(settings),
            startup_timeout_seconds=settings.startup_timeout_seconds,
            model_config_name=settings.model_config_name,
        )

    # -- addresses ---------------------------------------------------------------------

    def _port(self, index: int) -> int:
        if self._ports is None:
            raise RuntimeError("LocalTriton has not been started")
        return self._ports[index]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self._port(0)}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self._port(1)}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._port(2)}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        """The server's stdout and stderr (kept until :meth:`close`)."""
        return self._log_file

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="gss-triton-"))
            _, _, backends = pytriton_paths()
            python_dir = self._workdir / "backends" / "python"
            python_dir.mkdir(parents=True)
            for item in (backends / "python").iterdir():
                if item.name != "__pycache__":
                    (python_dir / item.name).symlink_to(item)
            (python_dir / "triton_python_backend_stub").symlink_to(python_stub())
            self._log_file = self._workdir / "tritonserver.log"
        return self._workdir

    def command(self) -> list[str]:
        """The tritonserver command line for the chosen ports."""
        binary, _, _ = pytriton_paths()
        grpc_port, http_port, metrics_port = self._port(0), self._port(1), self._port(2)
        workdir = self._prepare_workdir()
        args = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={workdir / 'backends'}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics_port}",
            "--allow-metrics=true",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]
        if self.model_config_name:
            args.append(f"--model-config-name={self.model_config_name}")
        return args + self.extra_args

    def _environment(self) -> dict[str, str]:
        _, libs, _ = pytriton_paths()
        env = dict(os.environ)
        # The Python backend stub embeds the interpreter on PATH: ours, with numpy.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env

    def start(self) -> LocalTriton:
        """Start the server and wait until every model is READY; raises TritonStartError."""
        if self.is_running():
            return self
        fixed_ports = self._ports is not None
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if not fixed_ports:
                p = _free_ports(3)
                self._ports = (p[0], p[1], p[2])
            self._launch()
            try:
                self._wait_ready()
                return self
            except TritonStartError as exc:
                self._terminate()
                # Another process may have taken a port between probe and bind: retry fresh.
                port_clash = "already in use" in self._log_tail().lower()
                if fixed_ports or not port_clash or attempt == _PORT_ATTEMPTS:
                    raise
                log.warning("triton_port_clash_retrying", attempt=attempt, error=str(exc))
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        command = self.command()
        assert self._log_file is not None
        with self._log_file.open("ab") as out:
            self._process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                # Its own session: the terminal's Ctrl-C does not reach it (its owner stops it
                # in turn), and teardown kills the stubs in its group too. SIGTERM (a graceful
                # stop) if the thread that started it dies without stopping it.
                start_new_session=True,
                preexec_fn=processes.child_preexec(signal.SIGTERM),  # noqa: PLW1509
            )
        processes.track(self._process.pid, "Triton")
        log.info(
            "triton_starting",
            pid=self._process.pid,
            http_url=self.http_url,
            grpc_url=self.grpc_url,
            model_repository=str(self.model_repository),
            models=self.models,
        )

    def _log_tail(self, lines: int = 5) -> str:
        """The server's error lines (``E<date> ...``) and its last few lines, for messages."""
        if self._log_file is None or not self._log_file.exists():
            return ""
        text = self._log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in text if _ERROR_LINE.match(line)]
        tail = [line for line in text[-lines:] if line not in errors]
        return "\n".join(errors[-20:] + tail)

    def _wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.startup_timeout_seconds
        transport = TritonTransport(self.http_url)
        pending = list(self.models)
        try:
            while pending:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise TritonStartError(
                        f"tritonserver exited with code {self._process.returncode} while loading "
                        f"{self.model_repository}; server log:\n{self._log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise TritonStartError(
                        f"models {pending} not READY after {self.startup_timeout_seconds:.0f} s "
                        f"(raise TritonSettings.startup_timeout_seconds); server log:\n"
                        f"{self._log_tail()}"
                    )
                with contextlib.suppress(TransportError):
                    pending = [m for m in pending if not transport.model_ready(m, timeout=2.0)]
                if pending:
                    time.sleep(_POLL_SECONDS)
        finally:
            transport.close()
        log.info(
            "triton_ready",
            pid=self.pid,
            http_url=self.http_url,
            models=self.models,
            startup_seconds=round(time.monotonic() - started, 3),
        )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                log.warning("triton_stop_timeout_killing", pid=process.pid)
                _killpg(process.pid)
                process.wait(timeout=5)
        # Stubs that outlived their parent are still in the group.
        _killpg(process.pid)
        processes.untrack(process.pid)
        log.info("triton_stopped", pid=process.pid, returncode=process.returncode)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_timeout_seconds``); keeps the ports."""
        self._terminate()

    def kill(self) -> None:
        """SIGKILL the server process alone, as a crash or the OOM killer would: no drain,
        open connections reset. Its orphaned Python-backend stubs are then reaped; the ports
        are kept, so :meth:`start` brings it back where clients look for it."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        log.warning("triton_killed", pid=process.pid)
        self._terminate()

    def close(self) -> None:
        """Stop the server and remove its work directory (backend links, log)."""
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._log_file = None

    def __enter__(self) -> LocalTriton:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _killpg(pgid: int) -> bool:
    """SIGKILL a process group; False when it is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def triton_url(settings: TritonSettings) -> Iterator[str]:
    """The HTTP endpoint (``host:port``) models are served from, for the duration of the block.

    ``settings.url`` set: that endpoint, as is (production; nothing is started).
    ``settings.url`` None: a :class:`LocalTriton` over the settings' model repository,
    stopped when the block ends.
    """
    if settings.url:
        yield settings.url
        return
    with LocalTriton.from_settings(settings) as triton:
        yield triton.http_url
