"""A local cluster: ``nodes`` `gss serve` processes on loopback sharing one broker
(`gss cluster run`, the cluster tests and benchmark; docs/cluster.md, "A local cluster").

Each node is a real server process with its own store directory (``<root>/node-<ordinal>``),
started with ``cluster.nodes``, ``cluster.replicas`` and its ordinal, listening on a port the OS
picks; nodes find each other on the broker's announcement topic. Processes run in sessions of
their own and are killed with their starter (:mod:`contract.processes`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import structlog

from contract import processes
from contract.errors import UnavailableError

log = structlog.get_logger(__name__)
_SERVING = re.compile(r"GSS serving on (\S+)")


class LocalNode:
    """One `gss serve` process of a local cluster."""

    def __init__(self, ordinal: int, data: Path, env: Mapping[str, str]) -> None:
        self.ordinal = ordinal
        self.data = data
        self.env = dict(env)
        self.address: str | None = None
        self.process: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_seconds: float = 60.0) -> LocalNode:
        """Start the process and wait until it reports its address."""
        return self.spawn().wait_address(timeout_seconds)

    def spawn(self) -> LocalNode:
        """Start the process (it dies with the calling thread: call from one that outlives it)."""
        self.address = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gss", "serve", "--port", "0", "--data", str(self.data)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
            preexec_fn=processes.child_preexec(signal.SIGKILL, main_thread_only=False),  # noqa: PLW1509
        )
        processes.track(self.process.pid, f"gss node {self.ordinal}")
        return self

    def wait_address(self, timeout_seconds: float = 60.0) -> LocalNode:
        """Wait until the process reports the address it serves on."""
        assert self.process is not None
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout_seconds
        while self.address is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            self.log_lines.append(line)
            if match := _SERVING.search(line):
                self.address = match[1]
        if self.address is None:
            self.kill()
            tail = "".join(self.log_lines[-20:])
            raise UnavailableError(f"gss node {self.ordinal} did not start:\n{tail}")
        # Keep the pipe drained (and the last lines, for a failing test's report).
        threading.Thread(target=self._drain, name=f"gss-node-{self.ordinal}", daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line)
            del self.log_lines[:-200]

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is drained, no tombstone is announced)."""
        if self.process is not None:
            processes.kill_group(self.process.pid)
            self.process.wait(timeout=10)
            processes.untrack(self.process.pid)

    def stop(self, timeout_seconds: float = 20.0) -> None:
        """SIGTERM: drain, announce leaving, close the store; SIGKILL if it takes too long."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                log.warning("node_stop_timed_out", ordinal=self.ordinal)
        self.kill()


class LocalCluster:
    """``nodes`` local GSS nodes with ``replicas`` replicas of each partition on one broker."""

    def __init__(
        self,
        root: Path,
        bootstrap_servers: str,
        *,
        nodes: int,
        replicas: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.bootstrap_servers = bootstrap_servers
        self.replicas = replicas
        base = {
            **os.environ,
            "GSS_LOG_FORMAT": "json",
            "GSS_SERVER__HOST": "127.0.0.1",
            "GSS_SERVER__METRICS_PORT": "-1",
            "GSS_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers,
            "GSS_CLUSTER__NODES": str(nodes),
            "GSS_CLUSTER__REPLICAS": str(replicas),
            **(env or {}),
        }
        self.nodes = [
            LocalNode(i, self.root / f"node-{i}", {**base, "GSS_CLUSTER__ORDINAL": str(i)})
            for i in range(nodes)
        ]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes if n.address is not None and n.running]

    def start(self) -> LocalCluster:
        """Start every node (from this thread: they die with it) and wait until each reports
        its address."""
        errors: list[BaseException] = []

        def wait(node: LocalNode) -> None:
            try:
                node.wait_address()
            except BaseException as exc:  # reported below, with the others
                errors.append(exc)

        for node in self.nodes:
            node.spawn()
        threads = [threading.Thread(target=wait, args=(n,)) for n in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        log.info("local_cluster_started", node_addresses=self.addresses, replicas=self.replicas)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
