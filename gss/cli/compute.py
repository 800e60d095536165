"""Compute verbs: ``gss signal test`` and ``gss compute run | generate | plugins | jars``; the
``signal`` group also holds the lifecycle verbs (``promote``, ``deprecate``: gss/cli/lifecycle.py)."""

from __future__ import annotations

import json
import signal as signals
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import click

from gss.cli import backfill, lifecycle
from gss.cli.context import CliContext, pass_cli


@click.group("signal")
def signal_group() -> None:
    """Develop signals (run plugins locally over events) and move them through their
    lifecycle (promote a version to default, deprecate one)."""


@signal_group.command("test")
@click.argument("plugins", nargs=-1, required=True)
@click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    required=True,
    help='JSON lines: {"topic": ..., "event": {...}} ("-" reads stdin).',
)
@click.option("--topic", default=None, help="Topic of lines that name none.")
@click.option(
    "--keep-open", is_flag=True, help="Do not close open windows at the end of the events."
)
@click.option(
    "--triton",
    "triton_url",
    default=None,
    help="host:port of Triton's HTTP endpoint, for model plugins (triton.url).",
)
@pass_cli
def signal_test(
    cli: CliContext,
    plugins: tuple[str, ...],
    events_path: str,
    topic: str | None,
    keep_open: bool,
    triton_url: str | None,
) -> None:
    """Run PLUGINS (.py files, directories or modules) in-process over the events and print
    the values they would write (one JSON object a line); dead letters too. Counts go to stderr."""
    from compute.harness import LocalHarness, output_json, read_events
    from compute.loader import load_plugins
    from contract.errors import GssError

    settings = cli.settings()
    try:
        found = load_plugins(list(plugins))
        if not found:
            raise click.ClickException(f"no @signal plugins in {', '.join(plugins)}")
        models = None
        if any(p.model for p in found):
            from compute.inference import connect

            models = connect(settings.triton, triton_url)
        harness = LocalHarness(found, settings=settings, registry=cli.registry(), models=models)
        stream = click.open_file(events_path)
        with stream:
            for event_topic, event in read_events(harness, stream, topic):
                for output in harness.send(event_topic, event):
                    click.echo(json.dumps(output_json(output)))
        if not keep_open:
            for output in harness.close():
                click.echo(json.dumps(output_json(output)))
    except GssError as exc:
        raise click.ClickException(str(exc)) from exc
    for (ref, name), count in sorted(harness.metrics.items()):
        click.echo(f"{ref} {name} {count}", err=True)


@click.group()
def compute() -> None:
    """The compute job: plugins on Flink, content events, connector jars."""


@compute.command("run")
@click.option(
    "--plugins",
    "targets",
    multiple=True,
    help="Plugin module, package or path (repeatable; settings: compute.plugins).",
)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--skip-models", is_flag=True, help="Leave out plugins that call Triton models.")
@click.option(
    "--detach", is_flag=True, help="Submit and return (remote mode): the cluster keeps it."
)
@click.option(
    "--from",
    "from_",
    default=None,
    help="Start at this time: the archive's records from then on, then the live topics "
    "(ISO-8601 UTC such as 2026-11-01T00:00Z, or relative: -2h). Settings: compute.history_from.",
)
@click.option(
    "--from-positions",
    default=None,
    help="Start at explicit positions, topic:partition:offset,... (other partitions of those "
    "topics from their beginning): the archive, then the live topics.",
)
@click.option(
    "--history-rate",
    type=float,
    default=None,
    help="Records a second read from the archive, per topic (compute.history_rate_per_second).",
)
@pass_cli
def compute_run(
    cli: CliContext,
    targets: tuple[str, ...],
    duration: float | None,
    skip_models: bool,
    detach: bool,
    from_: str | None,
    from_positions: str | None,
    history_rate: float | None,
) -> None:
    """Run the compute job on Flink until Ctrl-C (a local MiniCluster unless compute.mode says
    otherwise). With --from or --from-positions it reads the archive first, then the live
    topics from the next offset (docs/history.md, "Unified source")."""
    from compute.flink import gateway
    from compute.flink.run import ComputeJob
    from contract.errors import GssError

    compute_overrides = history_options(from_, from_positions, history_rate)
    if targets:
        compute_overrides["plugins"] = list(targets)
    overrides = {"compute": compute_overrides} if compute_overrides else {}
    settings = cli.settings(**overrides)
    try:
        plugins = None
        if skip_models:
            from compute.loader import load_plugins

            plugins = [p for p in load_plugins(settings.compute.plugins) if p.model is None]
        job = ComputeJob(settings, plugins, registry=cli.registry()).start()
    except GssError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"compute job {job.job_id} ({settings.compute.mode}): "
        f"{len(job.bounds)} plugins; Ctrl-C stops",
        err=True,
    )
    if detach:
        return
    stop = threading.Event()
    for signum in (signals.SIGINT, signals.SIGTERM):
        signals.signal(signum, lambda *_: stop.set())
    try:
        status = job.wait(stop, duration)
        cause = job.failure() if status == "FAILED" else None
        click.echo(f"compute job {status.lower()}" + (f": {cause}" if cause else ""), err=True)
    finally:
        job.stop()
        gateway.shutdown()
    if status == "FAILED":
        raise SystemExit(1)


def history_options(
    from_: str | None, from_positions: str | None, history_rate: float | None
) -> dict[str, object]:
    """compute.* settings for ``--from``, ``--from-positions`` and ``--history-rate``."""
    from gss.archive.replay import parse_time

    out: dict[str, object] = {}
    if from_ is not None:
        try:
            out["history_from"] = datetime.fromtimestamp(parse_time(from_) / 1000, UTC)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--from") from None
    if from_positions:
        positions: dict[str, dict[int, int]] = {}
        for item in from_positions.split(","):
            topic, _, rest = item.strip().rpartition(":")
            topic, _, partition = topic.rpartition(":")
            if not (topic and partition.isdigit() and rest.isdigit()):
                raise click.BadParameter(
                    f"{item!r} is not topic:partition:offset", param_hint="--from-positions"
                )
            positions.setdefault(topic, {})[int(partition)] = int(rest)
        out["history_positions"] = positions
    if history_rate is not None:
        out["history_rate_per_second"] = history_rate
    return out


@compute.command("generate")
@click.option("--rate", type=float, default=20.0, show_default=True, help="Events a second.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--image-share",
    type=float,
    default=0.5,
    show_default=True,
    help="Fraction of events that are images (the rest are pin events).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--images",
    type=click.Choice(["photos", "shapes"]),
    default="photos",
    show_default=True,
    help="photos: bundled photographs, rendered text and their near duplicates; "
    "shapes: small synthetic 32x32 pictures.",
)
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write --count events as JSON lines here instead of producing to Kafka.",
)
@click.option("--count", type=int, default=100, show_default=True, help="Events for --jsonl.")
@pass_cli
def compute_generate(
    cli: CliContext,
    rate: float,
    duration: float | None,
    image_share: float,
    seed: int,
    images: Literal["photos", "shapes"],
    jsonl: str | None,
    count: int,
) -> None:
    """Produce content events (images, pin engagement) to content.images and content.pins,
    or write them as JSON lines for `gss signal test`."""
    from gss.local.generator import ContentGenerator, produce, write_jsonl

    if jsonl is not None:
        with click.open_file(jsonl, "w") as out:
            written = write_jsonl(
                ContentGenerator(seed=seed, images=images).events(
                    count, datetime.now(UTC), image_share=image_share
                ),
                out,
            )
        click.echo(f"wrote {written} events", err=True)
        return
    settings = cli.settings()
    stop = threading.Event()
    for signum in (signals.SIGINT, signals.SIGTERM):
        signals.signal(signum, lambda *_: stop.set())
    try:
        stats = produce(
            settings,
            rate_per_second=rate,
            stop=stop,
            duration_seconds=duration,
            image_share=image_share,
            seed=seed,
            images=images,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"produced {stats.images} image and {stats.pins} pin events ({stats.errors} undelivered)",
        err=True,
    )


@compute.command("plugins")
@click.option("--plugins", "targets", multiple=True, help="Plugin module, package or path.")
@pass_cli
def compute_plugins(cli: CliContext, targets: tuple[str, ...]) -> None:
    """List the plugins the job would run, checked against the registry."""
    from compute.flink.run import bound_plugins
    from contract.errors import GssError

    overrides = {"compute": {"plugins": list(targets)}} if targets else {}
    settings = cli.settings(**overrides)
    try:
        bounds = bound_plugins(settings, registry=cli.registry())
    except GssError as exc:
        raise click.ClickException(str(exc)) from exc
    for bound in bounds:
        plugin = bound.plugin
        extra = f" model={plugin.model}" if plugin.model else ""
        click.echo(
            f"{bound.ref:36} {plugin.shape:9} {bound.input_topic} -> {bound.changelog_topic}{extra}"
        )


@compute.command("jars")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to put them (settings: compute.jars_dir).",
)
@pass_cli
def compute_jars(cli: CliContext, directory: Path | None) -> None:
    """Fetch the Flink Kafka connector jars from PyPI (once), build GSS's connector jar (for
    reading history; needs javac) and print their paths."""
    from compute.flink.connectors import ensure_connectors
    from compute.flink.jars import ensure_jars
    from contract.errors import UnavailableError

    directory = directory or cli.settings().compute.jars_dir
    for path in ensure_jars(directory):
        click.echo(str(path))
    try:
        click.echo(str(ensure_connectors(directory)))
    except UnavailableError as exc:
        # The live-only job runs without it; only reading history needs it.
        click.echo(f"warning: {exc}", err=True)


@compute.command("cluster")
@click.option("--task-managers", type=int, default=2, show_default=True)
@click.option(
    "--slots",
    type=int,
    default=2,
    show_default=True,
    help="Slots per TaskManager (a job with windows or joins needs 2 x parallelism: "
    "compute.stateful_slot_sharing_group; 2 lets it restart on one TaskManager).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("gss-data") / "flink-cluster",
    show_default=True,
    help="Configuration, logs, and the processes' temporary files (flink-tmp/, emptied "
    "on start and stop).",
)
def compute_cluster(task_managers: int, slots: int, directory: Path) -> None:
    """A local Flink standalone session cluster (a JobManager and TaskManagers as processes of
    their own, from PyFlink's scripts) until Ctrl-C: run the job on it with
    `gss compute run` and GSS_COMPUTE__MODE=remote GSS_COMPUTE__JOBMANAGER_ADDRESS=<printed>."""
    from gss.local.flink_cluster import LocalFlinkCluster

    stop = threading.Event()
    for signum in (signals.SIGINT, signals.SIGTERM):
        signals.signal(signum, lambda *_: stop.set())
    with LocalFlinkCluster(
        directory.resolve(), task_managers=task_managers, slots=slots
    ) as cluster:
        click.echo(
            f"Flink cluster: REST and web UI http://{cluster.rest_address} "
            f"(GSS_COMPUTE__JOBMANAGER_ADDRESS={cluster.rest_address}); logs in "
            f"{directory / 'log'}; Ctrl-C stops it",
            err=True,
        )
        stop.wait()


lifecycle.register(signal_group)
signal_group.add_command(backfill.backfill)


def register(main: click.Group) -> None:
    main.add_command(signal_group)
    main.add_command(compute)


__all__ = ["register"]
