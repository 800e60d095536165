"""Small builders shared by tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clients.lookup import make_record
from contract.v1 import envelope_pb2, signals_pb2

BASE_TIME = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def image_id(n: int) -> str:
    """A deterministic 16-byte image signature in hex."""
    return n.to_bytes(16, "big").hex()


def dhash_record(
    n: int, value: int, *, seconds: float = 0.0, producer: str = "test"
) -> envelope_pb2.SignalRecord:
    """images/dhash@1 for image ``n`` with event time BASE_TIME + ``seconds``."""
    return make_record(
        "images",
        image_id(n),
        "dhash@1",
        signals_pb2.DHash(hash=value),
        event_time=BASE_TIME + timedelta(seconds=seconds),
        producer=producer,
    )


def count_record(
    pin: int, count: int, *, event_time: datetime | None = None
) -> envelope_pb2.SignalRecord:
    """pins/save_count_1h@1 for ``pin``, by default with event time now (the signal has a 2h TTL)."""
    return make_record(
        "pins",
        pin,
        "save_count_1h@1",
        signals_pb2.WindowedCount(count=count),
        event_time=event_time or datetime.now(UTC),
    )


@contextmanager
def server_process(
    data: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`gss serve` in a subprocess on a free loopback port; yields (process, address).
    ``env`` adds settings (``GSS_...`` variables)."""
    env = {**os.environ, "GSS_LOG_FORMAT": "json", "GSS_SERVER__METRICS_PORT": "-1", **(env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gss",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data",
            str(data),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        address = None
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while address is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            if match := re.search(r"GSS serving on (\S+)", line):
                address = match[1]
        assert address, "gss serve did not report its address"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
