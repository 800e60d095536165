"""The chaos suite's short variant (what `make test` runs; `make chaos` is the long one): the
same code as ``python -m tests.chaos`` — durable broker, ``gss serve`` with its ingester and
publisher, the Flink job on a MiniCluster, a PutSignals writer, a subscriber — with a few
faults of each cheap kind (kill -9 of the server, of a Python worker and of the whole Flink
job; broker killed and restarted; subscriber stalled and slowed), then every oracle with
exact counts (tests/chaos/oracles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.run import Options, run_chaos

pytestmark = pytest.mark.integration


@pytest.mark.timeout(290)
def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    summary = run_chaos(
        Options(
            faults=8,
            seed=15,
            duration=60.0,
            kinds=(
                "gss_server",
                "broker",
                "subscriber",
                "python_worker",
                "gss_server",
                "broker",
                "subscriber",
                "flink_job",
            ),
            flink="minicluster",
            models=False,
            content_rate=2.0,
            write_rate=60.0,
            warmup=5.0,
            drain_timeout=90.0,
            work=tmp_path / "chaos",
            report=tmp_path / "report.json",
            report_key="short",
        )
    )
    assert summary.failures == []
    assert summary.ok
    assert sum(summary.faults_injected.values()) == 8
    assert summary.writer["acked_records"] > 0
    assert summary.writer["lost"] == 0
    assert summary.compute["values"] > 0
    assert summary.compute["missing"] == 0
    assert summary.replay["keys_compared"] > 0
    assert summary.replay["keys_differing"] == 0
    assert summary.events["expected"] > 0
    assert summary.events["lost"] == 0
    assert summary.losses == summary.duplicates == summary.order_inversions == 0
    assert summary.processes_left == []
