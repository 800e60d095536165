"""contract.processes: child process groups that never outlive their starter."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from contract import processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")


def _sleeper(preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509


def _gone(process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_kill_tracked_kills_the_group_and_forgets_it() -> None:
    process = _sleeper()
    try:
        processes.track(process.pid, "sleeper")
        assert processes.tracked()[process.pid] == "sleeper"
        assert "sleeper" in processes.kill_tracked()
        assert _gone(process)
        assert process.pid not in processes.tracked()
        assert not processes.kill_group(process.pid)  # nothing left in it
    finally:
        process.kill()
        process.wait()


def test_death_signal_follows_the_starting_thread() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        preexec = processes.child_preexec(signal.SIGKILL, main_thread_only=False)
        started.append(_sleeper(preexec))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    try:
        assert _gone(started[0])  # its starting thread ended: killed by the kernel
        assert started[0].returncode == -signal.SIGKILL
    finally:
        started[0].kill()
        started[0].wait()


def test_no_death_signal_from_another_thread_unless_asked() -> None:
    def then() -> None:  # another preexec_fn: passed through as is
        pass

    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(processes.child_preexec(signal.SIGKILL, then=then))
    )
    thread.start()
    thread.join()
    assert result == [then]
    assert processes.child_preexec(None) is None
    process = _sleeper(processes.child_preexec(signal.SIGTERM))
    try:
        time.sleep(0.1)
        assert process.poll() is None  # started from the main thread, which lives on
    finally:
        process.kill()
        process.wait()
