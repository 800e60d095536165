"""Starting and stopping the compute job.

In-process, until stopped (a local MiniCluster, or a submission to a remote cluster)::

    with ComputeJob(settings) as job:      # plugins from settings.compute.plugins
        job.wait(stop_event)               # or do other things; leaving the block cancels it

As a command: ``gss compute run`` (same thing, until Ctrl-C), ``python -m compute.flink``
(what ``flink run -pym compute.flink`` and the Kubernetes operator's PythonDriver run:
build the job and block in ``env.execute``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import structlog

from compute.binding import Bound, bind
from compute.loader import load_plugins
from compute.plugin import Plugin
from contract.errors import InvalidArgumentError, UnavailableError
from contract.registry import Registry, load_registry
from contract.settings import Settings

log = structlog.get_logger(__name__)

_TERMINAL = {"FINISHED", "CANCELED", "FAILED"}
STATUS_POLL_SECONDS = 1.0
# How long wait() rides out a JobManager that does not answer before it gives up.
STATUS_UNREACHABLE_SECONDS = 120.0


def bound_plugins(
    settings: Settings, plugins: Sequence[Plugin] | None = None, registry: Registry | None = None
) -> list[Bound]:
    """The plugins the job runs (``settings.compute.plugins`` unless given), checked."""
    registry = registry or load_registry(settings.registry_path)
    chosen = list(plugins) if plugins is not None else load_plugins(settings.compute.plugins)
    return bind(chosen, registry, settings)


def check_ready(settings: Settings, bounds: Sequence[Bound]) -> None:
    """Refuse to start a job that could only fail: no broker, or models without Triton."""
    if not settings.kafka.bootstrap_servers:
        raise InvalidArgumentError(
            "the compute job needs a broker: set GSS_KAFKA__BOOTSTRAP_SERVERS (host:port)"
        )
    needing = [b.ref for b in bounds if b.plugin.model is not None]
    if needing and not settings.triton.url:
        raise InvalidArgumentError(
            f"plugins {', '.join(needing)} call Triton models but triton.url is not set: set "
            "GSS_TRITON__URL (host:port of Triton's HTTP endpoint; `gss models serve` starts "
            "one), or run without them (`gss compute run --skip-models`)"
        )


def ensure_topics(
    settings: Settings,
    bounds: Sequence[Bound],
    registry: Registry | None = None,
    timeout_seconds: float = 30.0,
) -> None:
    """Create the topics the job reads and writes, if missing.

    The galaxies' own topics (changelog, availability, dead letters) through
    :func:`contract.topics.ensure_topics`; content topics here, with the galaxy's partition
    count. The sources
    only see topics that exist when they look (then every 10 s), so the job creates them
    before it starts. Nothing is created when ``kafka.create_topics`` is off.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    from contract.kafka import admin_config
    from contract.topics import ensure_topics as ensure_galaxy_topics

    registry = registry or load_registry(settings.registry_path)
    kafka = settings.kafka
    if not kafka.bootstrap_servers:
        raise InvalidArgumentError("no broker: set GSS_KAFKA__BOOTSTRAP_SERVERS")
    if not kafka.create_topics:
        return  # managed elsewhere (Strimzi KafkaTopics: deploy/kafka, deploy/flink/topics.yaml)
    ensure_galaxy_topics(kafka, registry, timeout_seconds=timeout_seconds)
    wanted: dict[str, int] = {}
    for bound in bounds:
        partitions = registry.galaxy(bound.galaxy).partitions
        wanted[bound.input_topic] = max(wanted.get(bound.input_topic, 1), partitions)
    admin = AdminClient(admin_config(kafka))
    existing = set(admin.list_topics(timeout=timeout_seconds).topics)
    missing = [
        NewTopic(t, n, kafka.replication_factor)
        for t, n in sorted(wanted.items())
        if t not in existing
    ]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, request_timeout=timeout_seconds).items():
        try:
            future.result(timeout=timeout_seconds)
            log.info("topic_created", topic=topic)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise UnavailableError(f"cannot create topic {topic}: {exc}") from exc


class ComputeJob:
    """The compute job on Flink (MiniCluster or remote), from start until stopped.

    ``start()`` returns once the job is submitted (a local MiniCluster takes a few seconds
    more to read its first records); ``stop()`` cancels it. A context manager does both.
    """

    def __init__(
        self,
        settings: Settings,
        plugins: Sequence[Plugin] | None = None,
        *,
        registry: Registry | None = None,
        create_topics: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry or load_registry(settings.registry_path)
        self.bounds = bound_plugins(settings, plugins, self.registry)
        self.create_topics = create_topics
        self._client: Any = None

    @property
    def job_id(self) -> str | None:
        return str(self._client.get_job_id()) if self._client is not None else None

    def start(self) -> ComputeJob:
        from compute.flink.job import (
            build_pipeline,
            create_environment,
            plugin_jobs_summary,
            python_workers,
        )

        check_ready(self.settings, self.bounds)
        if self.create_topics:
            ensure_topics(self.settings, self.bounds, self.registry)
        started = time.monotonic()
        with python_workers(self.settings):
            env = create_environment(self.settings)
            build_pipeline(env, self.bounds, self.settings)
            self._client = env.execute_async(self.settings.compute.job_name)
        log.info(
            "compute_job_started",
            job_id=self.job_id,
            mode=self.settings.compute.mode,
            plugins=plugin_jobs_summary(self.bounds),
            startup_seconds=round(time.monotonic() - started, 3),
        )
        return self

    def status(self) -> str:
        """Flink's job status name (RUNNING, FAILED, ...), or NOT_STARTED."""
        if self._client is None:
            return "NOT_STARTED"
        try:
            return str(self._client.get_job_status().result()).rsplit(".", 1)[-1]
        except Exception:
            if self.settings.compute.mode != "local":
                raise
        # A local job that ended (a bounded one: a backfill) takes its MiniCluster with it;
        # its result future still says how it ended.
        try:
            self._client.get_job_execution_result().result()
        except Exception:
            return "FAILED"
        return "FINISHED"

    def failure(self) -> str | None:
        """Why the job failed: the innermost cause Flink reports (for a damaged archive file,
        the file and its offsets); None unless :meth:`status` is FAILED."""
        if self._client is None or self.status() != "FAILED":
            return None
        try:
            self._client.get_job_execution_result().result()
        except Exception as exc:
            return failure_cause(str(exc))
        return None

    def wait(
        self, stop: threading.Event | None = None, timeout_seconds: float | None = None
    ) -> str:
        """Block until the job ends, ``stop`` is set or the timeout passes; the last status."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        unreachable_since: float | None = None
        while True:
            try:
                status = self.status()
                unreachable_since = None
            except Exception as exc:
                # A remote JobManager that does not answer for a moment (restarting, failing
                # over) is not a failed job: keep waiting, and give up (without cancelling
                # anything here) only once it has been unreachable for long.
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= STATUS_UNREACHABLE_SECONDS:
                    raise UnavailableError(
                        f"the JobManager at {self.settings.compute.jobmanager_address} has not "
                        f"answered for {STATUS_UNREACHABLE_SECONDS:.0f} s: {exc}"
                    ) from exc
                log.warning("compute_job_status_unavailable", job_id=self.job_id, error=str(exc))
                status = "UNKNOWN"
            if status in _TERMINAL or (stop is not None and stop.is_set()):
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            (stop or threading.Event()).wait(STATUS_POLL_SECONDS)

    def stop_with_savepoint(self, directory: str, timeout_seconds: float = 120.0) -> str:
        """Stop the job with a savepoint in ``directory`` (a URI) and return the savepoint's
        path: start the job again with ``compute.flink_config`` ``execution.state-recovery.path``
        set to it to resume exactly there (how a job is upgraded: docs/compute.md)."""
        client, self._client = self._client, None
        if client is None:
            raise InvalidArgumentError("the job is not running")
        from pyflink.java_gateway import get_gateway

        # PyFlink 2.3's JobClient.stop_with_savepoint calls a Java signature Flink 2 no longer
        # has (it now takes the savepoint's format): call Java's directly.
        formats = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType
        future = client._j_job_client.stopWithSavepoint(False, directory, formats.CANONICAL)
        path = str(
            future.get(
                int(timeout_seconds), get_gateway().jvm.java.util.concurrent.TimeUnit.SECONDS
            )
        )
        log.info("compute_job_stopped_with_savepoint", job_id=str(client.get_job_id()), path=path)
        return path

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """Cancel the job (idempotent). Values already written stay; offsets resume from the
        last checkpoint when a job with the same name starts again."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.cancel().result()
            log.info("compute_job_stopped", job_id=str(client.get_job_id()))
        except Exception as exc:  # already finished or failed: nothing left to cancel
            log.info("compute_job_stop_skipped", error=str(exc)[:300])

    def __enter__(self) -> ComputeJob:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def failure_cause(report: str) -> str:
    """The innermost ``Caused by:`` of a Java exception report (its first line if none)."""
    causes = [line.strip() for line in report.splitlines() if line.strip().startswith("Caused by:")]
    if not causes:
        return report.strip().splitlines()[0] if report.strip() else report
    return causes[-1].removeprefix("Caused by:").strip()


def execute(settings: Settings) -> None:
    """Build the job and run it in the calling Flink client until it ends (blocking).

    What ``python -m compute.flink`` does: under ``flink run`` or the operator's
    PythonDriver the client submits it to its cluster; alone it runs a MiniCluster.
    """
    from compute.flink.job import (
        build_pipeline,
        create_environment,
        plugin_jobs_summary,
        python_workers,
    )

    registry = load_registry(settings.registry_path)
    bounds = bound_plugins(settings, None, registry)
    check_ready(settings, bounds)
    ensure_topics(settings, bounds, registry)
    with python_workers(settings):
        env = create_environment(settings)
        build_pipeline(env, bounds, settings)
        log.info("compute_job_submitting", plugins=plugin_jobs_summary(bounds))
        env.execute(settings.compute.job_name)
