"""`gss run` starts its own broker and shows values flowing to availability events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_gss_run_shows_events_flowing(tmp_path: Path) -> None:
    """The main job starts a local broker, writes through the changelog, prints the lookups
    and one availability event per example value, and stops cleanly (broker included)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gss",
            "--log-level",
            "WARNING",
            "run",
            "--duration",
            "3",
            "--port",
            "0",
            "--data",
            str(tmp_path / "data"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "GSS_SERVER__METRICS_PORT": "0"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "local Kafka-protocol broker on 127.0.0.1:" in result.stdout
    assert "outcomes [1, 1, 1]" in result.stdout  # APPLIED: readable when PutSignals returned
    events = [line for line in result.stdout.splitlines() if line.strip().startswith("event ")]
    assert len(events) == 3, result.stdout
    assert result.stdout.rstrip().endswith("stopped")
