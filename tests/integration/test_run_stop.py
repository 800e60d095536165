"""Stopping `gss run` the way a person or a supervisor does: Ctrl-C (SIGINT to the terminal's
process group) or SIGTERM to the process group (`timeout`, a container runtime).

Every part stops in order, a line each, quietly (no librdkafka connect errors, no py4j
tracebacks), the snapshot is exported, the exit code is 0, and no process it started (broker,
Triton and its stubs, the Flink JVM, PyFlink's Python workers) is left behind. Processes are
found by a marker in their environment, which every descendant inherits: orphans included.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MARKER = "GSS_TEST_RUN_ID"
START_TIMEOUT = 240.0  # Triton and the Flink JVM on a busy 2-core machine
STOP_TIMEOUT = 120.0
GONE_TIMEOUT = 20.0
GSS_RUN = [sys.executable, "-m", "gss", "--log-level", "WARNING", "run", "--port", "0"]
COMPUTE_PARTS = ["content generator", "Flink job", "GSS server", "Triton", "local broker"]


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries ``MARKER=marker``: pid -> command line."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes() + b"\0":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a zombie
            continue
        found[int(entry.name)] = cmdline.strip()
    return found


def session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # state ppid pgrp session ...


@dataclass
class RunningStack:
    """`gss run` in a session of its own, its output collected by two reader threads."""

    process: subprocess.Popen[str]
    marker: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)

    def read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if stream is self.process.stdout and line.startswith("running"):
                self.running.set()

    @property
    def out(self) -> str:
        return "".join(self.stdout)

    @property
    def err(self) -> str:
        return "".join(self.stderr)


@contextlib.contextmanager
def gss_run(data: Path, *args: str) -> Iterator[RunningStack]:
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        MARKER: marker,
        "GSS_SERVER__HOST": "127.0.0.1",
        "GSS_SERVER__METRICS_PORT": "0",
        "GSS_COMPUTE__METRICS_PORT": "0",
    }
    process = subprocess.Popen(
        [*GSS_RUN, "--data", str(data), *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    stack = RunningStack(process, marker)
    readers = [
        threading.Thread(target=stack.read, args=(stream, lines), daemon=True)
        for stream, lines in ((process.stdout, stack.stdout), (process.stderr, stack.stderr))
    ]
    for reader in readers:
        reader.start()
    try:
        yield stack
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        for pid in marked_processes(marker):  # whatever a failed test left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for reader in readers:
            reader.join(timeout=10)


def wait_running(stack: RunningStack) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not stack.running.wait(1.0):
        if stack.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"gss run not running (exit {stack.process.poll()}):\n{stack.out[-3000:]}\n"
                f"{stack.err[-3000:]}"
            )


def wait_for_process(stack: RunningStack, needle: str, timeout: float) -> dict[int, str]:
    """The marked processes once one of them has ``needle`` in its command line."""
    deadline = time.monotonic() + timeout
    while True:
        found = marked_processes(stack.marker)
        if any(needle in cmd for cmd in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def stop_and_check(stack: RunningStack, signum: int, parts: list[str]) -> None:
    """Signal, then: exit 0, a "stopped" line per part in order, the snapshot, a quiet output
    and no process left."""
    process = stack.process
    seen = marked_processes(stack.marker)
    assert process.pid in seen
    os.killpg(process.pid, signum)
    try:
        code = process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gss run still stopping after {STOP_TIMEOUT:.0f} s:\n{stack.out[-3000:]}")
    deadline = time.monotonic() + GONE_TIMEOUT
    left = marked_processes(stack.marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = marked_processes(stack.marker)
    out, err = stack.out, stack.err
    assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    assert not left, f"left behind: {left}"

    name = signal.Signals(signum).name
    assert f"stopping on {name}" in out, out
    stopped = [line[len("stopped ") :] for line in out.splitlines() if line.startswith("stopped ")]
    assert [next((p for p in parts if s.startswith(p)), s) for s in stopped] == parts, stopped
    assert out.rstrip().endswith("\nstopped"), out[-1000:]
    snapshot = re.search(r"^snapshot dt=\S+: (\d+) rows in (\d+) partitions", out, re.MULTILINE)
    assert snapshot is not None, out
    assert out.index("stopping on") < snapshot.start() < out.index("stopped GSS server")
    assert re.search(r"^\d+ availability events in all$", out, re.MULTILINE), out

    everything = out + err
    assert "Traceback" not in everything, err[-3000:]
    assert "Connection refused" not in everything, err[-3000:]
    assert not [line for line in err.splitlines() if "ERROR" in line and "Connect" in line], err[
        -3000:
    ]


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm-to-group"]
)
def test_signal_to_the_group_stops_every_part_in_order(tmp_path: Path, signum: int) -> None:
    """With the Flink job: the JVM and its Python workers (beam_boot) are stopped too."""
    with gss_run(tmp_path / "data", "--rate", "20") as stack:
        wait_running(stack)
        # The job's Python workers start as its tasks deploy, shortly after "running".
        children = wait_for_process(stack, "beam_boot", timeout=90)
        assert any("beam_boot" in cmd for cmd in children.values()), children
        assert any("java" in cmd for cmd in children.values()), children
        assert any("tritonserver" in cmd for cmd in children.values()), children
        # Children are out of the terminal's reach: none is in gss run's session.
        own = session_of(stack.process.pid)
        shared = {pid: cmd for pid, cmd in children.items() if pid != stack.process.pid}
        in_session = {pid: cmd for pid, cmd in shared.items() if session_of(pid) == own}
        assert not in_session, in_session
        stop_and_check(stack, signum, COMPUTE_PARTS)


def test_repeated_signal_is_one_request(tmp_path: Path) -> None:
    """`timeout` signals the process and then its group: both arrive at once, and the stop
    is still the ordered one (a signal a second or more later would force it)."""
    with gss_run(tmp_path / "data", "--no-compute") as stack:
        wait_running(stack)
        os.kill(stack.process.pid, signal.SIGTERM)
        stop_and_check(stack, signal.SIGTERM, ["GSS server", "local broker"])
