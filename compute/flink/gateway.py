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

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import structlog

from contract import processes

log = structlog.get_logger(__name__)

_patch_lock = threading.Lock()
# Each gateway whose threads share one context class loader (share_class_loader): its loader.
_shared_loaders: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
# This process's directory for its gateway JVM's Flink temporary files (temp_dir).
_temp: dict[str, Path] = {}
_TEMP_PREFIX = "gss-flink-"
_OWNER_FILE = "owner.pid"
# py4j (shaded in Flink) runs each connection in a GatewayConnection thread; GatewayServer's
# thread accepts them, and a thread inherits its creator's context class loader.
_PY4J_THREAD_RUNNABLES = (".py4j.GatewayConnection", ".py4j.GatewayServer")


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


def share_class_loader() -> None:
    """Give every thread of the gateway's py4j server one context class loader, so that jars
    PyFlink adds later (``pipeline.jars``, the Kafka connector) are seen by every call.

    PyFlink's ``add_jars_to_context_class_loader`` changes the context class loader of the
    Java thread serving that one call. py4j's gateway is not pinned to threads: as soon as two
    Python threads use it at once (a caller's thread, or py4j's release of Java objects run by
    the garbage collector in whatever thread collects), a second connection opens, served by
    another Java thread, and a later call may land there and fail to find the connector's
    classes. With one ``java.net.URLClassLoader`` as the context loader of every py4j thread,
    and of the accepting thread that new connection threads inherit it from, PyFlink adds
    its jars to that shared loader instead. Idempotent for a running gateway; starts it if
    needed (call :func:`own_session` and :func:`prepare_local` first).
    """
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import to_jarray

    gw = get_gateway()
    with _patch_lock:
        if gw in _shared_loaders:
            return
        jvm = gw.jvm
        parent = jvm.java.lang.ClassLoader.getSystemClassLoader()
        loader = jvm.java.net.URLClassLoader(to_jarray(jvm.java.net.URL, []), parent)
        # The accepting thread first, so connections opened from now on inherit the loader;
        # then every connection thread there is by then.
        shared = 0
        for role in ("GatewayServer", "GatewayConnection"):
            stacks = jvm.java.lang.Thread.getAllStackTraces()
            for thread in stacks.keySet():
                if _py4j_role(stacks.get(thread)) == role:
                    thread.setContextClassLoader(loader)
                    shared += 1
        _shared_loaders[gw] = loader
        log.info("flink_gateway_class_loader_shared", threads=shared)


def _py4j_role(stack: Any) -> str:
    """The py4j runnable (``GatewayServer`` or ``GatewayConnection``) a thread with this stack
    trace runs (near the bottom of its stack), or an empty string for any other thread."""
    depth = len(stack)
    for i in range(depth - 1, max(depth - 4, -1), -1):
        name = str(stack[i].getClassName())
        for runnable in _PY4J_THREAD_RUNNABLES:
            if name.endswith(runnable):
                return runnable.rsplit(".", 1)[1]
    return ""


def temp_dir() -> Path:
    """This process's directory for the Flink temporary files of its gateway JVM
    (``io.tmp.dirs`` of a local job: the MiniCluster's working directories and blobs, the
    RPC system's jar Flink extracts on each start, Python archives). Flink deletes them only
    when it closes cleanly; GSS removes the directory when it stops the JVM (:func:`shutdown`,
    interpreter exit), and the next process to make one removes those whose owner died
    without doing so (killed)."""
    with _patch_lock:
        if "dir" in _temp:
            return _temp["dir"]
    _sweep_orphans(Path(tempfile.gettempdir()))
    with _patch_lock:
        if "dir" not in _temp:
            path = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
            # Written whole, then renamed: a sweep never reads half an owner.
            (path / f".{_OWNER_FILE}").write_text(str(os.getpid()))
            os.replace(path / f".{_OWNER_FILE}", path / _OWNER_FILE)
            _temp["dir"] = path
        return _temp["dir"]


def _sweep_orphans(root: Path) -> None:
    for path in root.glob(f"{_TEMP_PREFIX}*"):
        try:
            owner = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being made now
        if owner != os.getpid() and not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            log.info("flink_temp_dir_removed", path=str(path), owner_pid=owner)


def _remove(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _remove_temp_at_exit() -> None:
    # Runs before contract.processes kills what is left (atexit is last in, first out): kill
    # first, so that no JVM writes there meanwhile, and without calling into a JVM that may
    # not answer.
    if "dir" in _temp:
        processes.kill_tracked()
        _remove(_temp.pop("dir", None))


# Registered after contract.processes' own (imported above), so it runs first.
atexit.register(_remove_temp_at_exit)


def shutdown(timeout_seconds: float = 10.0) -> None:
    """Stop this process's Flink gateway JVM (and with it any local MiniCluster), if running."""
    from pyflink import java_gateway

    with java_gateway._lock:
        gateway = java_gateway._gateway
        with _patch_lock:  # the stopping JVM's: a JVM started from now on gets a new one
            temp = _temp.pop("dir", None)
        if gateway is None:
            _remove(temp)
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
    _remove(temp)
    log.info("flink_gateway_stopped", pid=pid)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a child of this process's, once reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    try:  # a zombie child counts as gone once reaped
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True  # not a child of ours, and signal 0 found it
