"""``gss signal backfill GALAXY/NAME@VERSION --since T [--until T] [--rate N/s] [--continue-live]``.

Runs the compute job over the archive with only the named plugin (compute/flink/backfill.py),
and shows progress from the changelog: the values the job wrote (producer
``flink:<job name>``, read from the changelog's end when the backfill started), against the
records the archive's commit markers count in the range.
"""

from __future__ import annotations

import signal as signals
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import click

from gss.cli.context import CliContext, pass_cli


class _Progress:
    """Counts the backfill job's values on the changelog, from where the changelog was when
    the backfill started (a display: nothing depends on it)."""

    def __init__(self, settings: Any, topic: str, producer: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from contract.kafka import consumer_config

        self.producer = producer
        self.values = 0
        self._consumer = Consumer(
            consumer_config(settings.kafka, f"{producer}-progress", f"gss-backfill-{uuid.uuid4()}")
        )
        meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
        start = []
        for p in sorted(meta.partitions):
            # The broker's high watermark: right on Kafka; the local stand-in (tansu) answers 1,
            # so there the count includes the changelog's earlier records of this job name.
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            start.append(TopicPartition(topic, p, high))
        self._consumer.assign(start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gss-backfill-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from contract.v1.envelope_pb2 import SignalRecord

        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.2):
                value = msg.value()
                if msg.error() or not value:
                    continue
                try:
                    record = SignalRecord.FromString(value)
                except Exception:  # not ours to judge: the ingester dead-letters it
                    continue
                if record.envelope.producer == self.producer:
                    self.values += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _line(values: int, total: int, started: float) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    rate = values / elapsed
    share = min(1.0, values / total) if total else 1.0
    eta = f"{max(0.0, (total - values) / rate):.0f} s" if rate > 0 and values < total else "-"
    return (
        f"{values} values, ~{share:.0%} of {total} archived records in range, "
        f"{rate:.0f}/s, ETA {eta}"
    )


@click.command("backfill")
@click.argument("target", metavar="GALAXY/NAME@VERSION")
@click.option("--since", required=True, help="Start: ISO-8601 UTC, or relative (-2h, -7d).")
@click.option("--until", default=None, help="Drop records from this time on (default: none).")
@click.option(
    "--rate",
    default=None,
    help="Records a second read from the archive, e.g. 5000 or 5000/s (history_rate_per_second).",
)
@click.option(
    "--continue-live",
    is_flag=True,
    help="Go on with the live topic after the archive instead of stopping at the switch point.",
)
@click.option(
    "--plugins", "targets", multiple=True, help="Plugin module, package or path (compute.plugins)."
)
@click.option("--progress-seconds", type=float, default=5.0, show_default=True)
@pass_cli
def backfill(
    cli: CliContext,
    target: str,
    since: str,
    until: str | None,
    rate: str | None,
    continue_live: bool,
    targets: tuple[str, ...],
    progress_seconds: float,
) -> None:
    """Compute GALAXY/NAME@VERSION over the archived history (only its plugin), writing through
    the changelog values marked backfill=true (their events rate-limited:
    kafka.backfill_events_per_second). Stops at the switch point unless --continue-live.
    Killed, it resumes from its last checkpoint when run again; a re-run writes nothing new
    (docs/history.md, "Backfill")."""
    from compute.flink import backfill as plan
    from compute.flink import gateway
    from compute.flink.run import ComputeJob
    from contract.errors import GssError
    from gss.archive.replay import parse_time

    def moment(text: str, hint: str) -> datetime:
        try:
            return datetime.fromtimestamp(parse_time(text) / 1000, UTC)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None

    since_at = moment(since, "--since")
    until_at = moment(until, "--until") if until is not None else None
    per_second = None
    if rate is not None:
        try:
            per_second = float(rate.removesuffix("/s"))
        except ValueError:
            raise click.BadParameter(f"{rate!r} is not N or N/s", param_hint="--rate") from None
    overrides: dict[str, Any] = {"plugins": list(targets)} if targets else {}
    base = cli.settings(compute=overrides) if overrides else cli.settings()
    try:
        plugin = plan.find_plugin(base, target)
        compute = plan.compute_overrides(
            base,
            plugin,
            since=since_at,
            until=until_at,
            rate_per_second=per_second,
            continue_live=continue_live,
        )
        settings = cli.settings(compute={**overrides, **compute})
        job = ComputeJob(settings, [plugin], registry=cli.registry())
        bound = job.bounds[0]
        total = plan.archived_records(
            settings,
            bound.input_topic,
            plan.millis(since_at),
            plan.millis(until_at) if until_at else None,
        )
        progress = _Progress(settings, bound.changelog_topic, bound.producer)
        job.start()
    except GssError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"backfill {target}: job {settings.compute.job_name} ({job.job_id}), {total} archived "
        f"records of {bound.input_topic} in range; "
        + ("continues live" if continue_live else "stops at the switch point"),
        err=True,
    )
    stop = threading.Event()
    for signum in (signals.SIGINT, signals.SIGTERM):
        signals.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    status, cause = "RUNNING", None
    try:
        while not stop.is_set():
            status = job.wait(stop, progress_seconds)
            click.echo("backfill: " + _line(progress.values, total, started), err=True)
            if status in ("FINISHED", "CANCELED", "FAILED"):
                cause = job.failure() if status == "FAILED" else None
                break
        time.sleep(1.0)  # the last values reach the progress consumer
    finally:
        job.stop()
        gateway.shutdown()
        progress.close()
    if status == "FINISHED":
        plan.clear_checkpoints(settings.compute.checkpoint_dir or "")
    click.echo(f"backfill {status.lower()}: " + _line(progress.values, total, started), err=True)
    if status == "FAILED":
        click.echo(f"backfill failed: {cause or 'see the Flink log'}", err=True)
        raise SystemExit(1)
