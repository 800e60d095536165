"""ComputeJob.wait against a remote JobManager that stops answering for a while."""

from __future__ import annotations

from typing import Any

import pytest

from compute.examples.images.dhash import dhash
from compute.flink import run
from compute.flink.run import ComputeJob
from contract.errors import UnavailableError
from contract.settings import load_settings


class _Status:
    def __init__(self, name: str) -> None:
        self.name = name

    def result(self) -> str:
        return f"JobStatus.{self.name}"


class _FlakyClient:
    """A JobClient whose status calls fail ``failures`` times, then report ``statuses``."""

    def __init__(self, failures: int, statuses: list[str]) -> None:
        self.failures = failures
        self.statuses = statuses
        self.calls = 0

    def get_job_id(self) -> str:
        return "0" * 32

    def get_job_status(self) -> Any:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Connection refused: 127.0.0.1:8081")
        return _Status(self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0])


def _job(client: _FlakyClient) -> ComputeJob:
    settings = load_settings(
        compute={"mode": "remote", "jobmanager_address": "127.0.0.1:8081"},
        kafka={"bootstrap_servers": "127.0.0.1:9"},
    )
    job = ComputeJob(settings, [dhash])
    job._client = client
    return job


def test_wait_rides_out_a_jobmanager_that_does_not_answer_for_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run, "STATUS_POLL_SECONDS", 0.01)
    client = _FlakyClient(failures=3, statuses=["RUNNING", "RUNNING", "FINISHED"])
    assert _job(client).wait(timeout_seconds=10) == "FINISHED"
    assert client.calls == 6


def test_wait_gives_up_on_a_jobmanager_that_stays_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run, "STATUS_POLL_SECONDS", 0.01)
    monkeypatch.setattr(run, "STATUS_UNREACHABLE_SECONDS", 0.05)
    client = _FlakyClient(failures=10_000, statuses=["RUNNING"])
    with pytest.raises(UnavailableError, match=r"JobManager at 127\.0\.0\.1:8081 has not answered"):
        _job(client).wait(timeout_seconds=10)
    assert client.calls < 10_000
