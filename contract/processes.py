"""Child processes that stop when the process that started them says so, and never outlive it.

The local stand-ins (the broker, Triton, PyFlink's gateway JVM and the Python workers it
starts) run in a session of their own, so the terminal's Ctrl-C or a SIGTERM to the process
group reaches only their starter, which stops them itself, in order. Out of the terminal's
group they would survive their starter, so each group is also:

* tracked here, and killed (SIGKILL to the whole group) by :func:`kill_tracked`, which runs
  at interpreter exit and which a starter calls on every exit path of its own;
* given a parent-death signal on Linux (``PR_SET_PDEATHSIG``) for the case nothing above
  runs (the starter killed with SIGKILL). The kernel sends it when the *thread* that started
  the child ends, so :func:`child_preexec` sets it only for children started from the main
  thread unless told otherwise.

    process = subprocess.Popen(cmd, start_new_session=True, preexec_fn=child_preexec())
    processes.track(process.pid, "broker")
    ...
    processes.kill_group(process.pid)   # also what stopping it normally ends with
    processes.untrack(process.pid)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved in the parent: the child, between fork and exec, only calls it.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

_lock = threading.RLock()  # reentrant: kill_tracked may run in a signal handler
_groups: dict[int, str] = {}  # process group id -> what runs in it


def child_preexec(
    death_signal: int | None = signal.SIGKILL,
    *,
    main_thread_only: bool = True,
    then: Callable[[], None] | None = None,
) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child ``death_signal`` when its starting thread ends.

    ``main_thread_only``: from another thread (which may end long before the process does)
    no death signal is set. ``then`` runs after, in the child (another ``preexec_fn``).
    None when there is nothing to do.
    """
    prctl = _PRCTL
    if death_signal is None or prctl is None:
        return then
    if main_thread_only and threading.current_thread() is not threading.main_thread():
        return then
    signum = int(death_signal)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum)
        if then is not None:
            then()

    return preexec


def track(pgid: int, name: str) -> None:
    """Remember a child's process group (its pid, started with ``start_new_session``)."""
    with _lock:
        _groups[pgid] = name


def untrack(pgid: int) -> None:
    """Forget a group that was stopped (so a reused id is never signalled)."""
    with _lock:
        _groups.pop(pgid, None)


def tracked() -> dict[int, str]:
    """The groups still tracked: process group id -> name."""
    with _lock:
        return dict(_groups)


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> bool:
    """Signal a whole process group; False when no process is left in it."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_tracked() -> list[str]:
    """SIGKILL every tracked group and forget them; the names of those that had a process."""
    with _lock:
        groups = list(_groups.items())
        _groups.clear()
    killed = []
    for pgid, name in groups:
        with contextlib.suppress(OSError):
            if kill_group(pgid):
                killed.append(name)
    return killed


atexit.register(kill_tracked)


def descendants(root: int) -> dict[int, str]:
    """Every live (not zombie) process below ``root``, from /proc: pid -> command line."""
    parents: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if fields[0] != "Z":
            pid = int(stat.parent.name)
            parents.setdefault(int(fields[1]), []).append(pid)
            commands[pid] = command.decode(errors="replace").strip()
    found: dict[int, str] = {}
    queue = [root]
    while queue:
        for child in parents.get(queue.pop(), []):
            found[child] = commands[child]
            queue.append(child)
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of ``pids`` together (those gone count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU seconds ``pids`` have used so far (those gone count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total
