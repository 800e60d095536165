"""`gss run`, the main job: every part started by the project's own code, signals flowing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def gss_run(data: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gss",
            "--log-level",
            "WARNING",
            "run",
            "--port",
            "0",
            "--data",
            str(data),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "GSS_SERVER__METRICS_PORT": "0", "GSS_COMPUTE__METRICS_PORT": "0"},
    )


def test_gss_run_serving_only_shows_events_flowing(tmp_path: Path) -> None:
    """Without compute: a local broker, writes through the changelog (readable on return), the
    lookups, one availability event per example value, a snapshot, and a clean stop."""
    result = gss_run(tmp_path / "data", "--no-compute", "--duration", "3", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "local Kafka-protocol broker on 127.0.0.1:" in result.stdout
    assert "outcomes [1, 1, 1]" in result.stdout  # APPLIED: readable when PutSignals returned
    assert "3 availability events in all" in result.stdout, result.stdout
    assert "snapshot dt=" in result.stdout
    assert result.stdout.rstrip().endswith("stopped")


def test_gss_run_computes_serves_announces_and_exports(tmp_path: Path) -> None:
    """The whole chain on one machine: generated content events -> Flink plugins (two calling
    Triton) -> changelog -> GSS -> availability events and lookups -> a snapshot partition."""
    # Long enough for a report after the Flink job's first values even on a busy 2-core machine
    # (the MiniCluster and its Python workers alone take 10-20 s to start there).
    result = gss_run(tmp_path / "data", "--duration", "45", "--rate", "20", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Triton serving" in out
    assert re.search(r"compute job \w+ on a Flink MiniCluster: \d+ plugins", out), out
    assert re.search(r"availability events: .*images/dominant_colors@1 \d+", out), out
    # Pin counts move while the job runs: the trailing hour's count fires early.
    assert re.search(r"availability events: .*pins/save_count_last_hour@1 \d+", out), out
    assert re.search(r"save_count_last_hour@1: \{\"count\"", out), out
    assert "(by flink:gss-compute)" in out  # a plugin's value, read back through GetSignals
    # A model plugin's value, with its envelope (which model's is readable for the newest
    # image when a report runs depends on timing).
    assert re.search(r"\(by flink:gss-compute, model \w+@\d+\)", out), out
    snapshot = re.search(r"snapshot dt=\S+: (\d+) rows in (\d+) partitions", out)
    assert snapshot is not None, out
    assert int(snapshot[1]) > 3
    assert list((tmp_path / "data" / "snapshots").glob("images/*/dt=*/_SUCCESS"))
    assert out.rstrip().endswith("stopped")
