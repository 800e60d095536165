"""The JVM behind PyFlink in this process: launched on first use, stopped on request.

PyFlink starts one Java gateway process per Python process (the local MiniCluster runs in
it) and leaves it to die with its parent. A long-lived process that is done with Flink, or
a test session that must not leave processes behind, calls :func:`shutdown`.

With :func:`own_session` called first, the JVM starts in a session of its own, and so do
the Python workers it starts (``pyflink-udf-runner.sh`` running ``beam_boot``, in the JVM's
process group): a Ctrl-C in the terminal or a SIGTERM to the caller's process group does not
reach them, so the caller cancels its job before the JVM stops, and :func:`shutdown` kills
whatever is left in the group (a worker the JVM did not stop). The group is also killed at
interpreter exit (:mod:`contract.processes`), and the JVM gets SIGTERM if the thread that
launched it dies first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from contract import processes

log = structlog.get_logger(__name__)

_patch_lock = threading.Lock()


def _is_launched() -> bool:
    from pyflink import java_gateway

    return java_gateway._gateway is not None


def prepare_local() -> bool:
    """Before the gateway starts: put Flink's Prometheus reporter on its classpath.

    PyFlink's local MiniCluster does not load reporters from its plugins folder; the jar
    (shipped in the apache-flink wheel) is added through the one classpath hook PyFlink's
    launcher reads, ``HADOOP_CLASSPATH``. Returns False if the gateway already runs (then the
    reporter is there only if an earlier call put it there).
    """
    if _is_launched():
        return False
    import pyflink

    jars = sorted((Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus").glob("*.jar"))
    current = os.environ.get("HADOOP_CLASSPATH", "")
    wanted = [str(j) for j in jars if str(j) not in current.split(os.pathsep)]
    if wanted:
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(p for p in [current, *wanted] if p)
    return True


def own_session() -> None:
    """Have PyFlink launch its gateway JVM in a session (and process group) of its own.

    Idempotent; call before the gateway starts (it has no effect on a running one). PyFlink's
    launcher keeps its own ``preexec_fn`` (the JVM ignores SIGINT); this adds the new session,
    a parent-death SIGTERM (launched from the main thread only) and tracking of the group.
    """
    from pyflink import pyflink_gateway_server as launcher

    with _patch_lock:
        if getattr(launcher.Popen, "_gss_own_session", False):
            return

        def popen(args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            kwargs["start_new_session"] = True
            kwargs["preexec_fn"] = processes.child_preexec(
                signal.SIGTERM, then=kwargs.get("preexec_fn")
            )
            process: subprocess.Popen[bytes] = subprocess.Popen(args, **kwargs)
            processes.track(process.pid, "Flink JVM")
            return process

        popen._gss_own_session = True  # type: ignore[attr-defined]
        launcher.Popen = popen


def shutdown(timeout_seconds: float = 10.0) -> None:
    """Stop this process's Flink gateway JVM (and with it any local MiniCluster), if running."""
    from pyflink import java_gateway

    with java_gateway._lock:
        gateway = java_gateway._gateway
        if gateway is None:
            return
        pid = int(gateway.jvm.java.lang.ProcessHandle.current().pid())
        java_gateway._gateway = None
    with contextlib.suppress(Exception):
        gateway.shutdown()
    deadline = time.monotonic() + timeout_seconds
    sent_term = False
    while _alive(pid):
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            break
        if not sent_term and time.monotonic() >= deadline - timeout_seconds / 2:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            sent_term = True
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    if pid in processes.tracked():
        # In its own group (own_session): Python workers it did not stop are still there.
        if processes.kill_group(pid):
            log.info("flink_workers_killed", pgid=pid)
        processes.untrack(pid)
    log.info("flink_gateway_stopped", pid=pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child counts as gone once reaped
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists()
