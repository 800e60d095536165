"""``gss models``: the Triton model repository, a local Triton server, and endpoint checks."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import click
import numpy as np

from compute.triton import model_repository
from gss.cli.context import CliContext, duration_option, pass_cli


@click.group()
def models() -> None:
    """Triton-served models: serve the repository locally, or check an endpoint."""


@models.command("list")
@pass_cli
def list_models(cli: CliContext) -> None:
    """The models in the repository (settings: triton.model_repository)."""
    from gss.local.triton import TritonStartError, find_models

    repository = model_repository(cli.settings().triton)
    try:
        names = find_models(repository)
    except TritonStartError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{repository}:")
    for name in names:
        click.echo(f"  {name}")


@models.command()
@duration_option
@click.option(
    "--config-name",
    default=None,
    help="Use configs/<name>.pbtxt per model, e.g. gpu (settings: triton.model_config_name).",
)
@pass_cli
def serve(cli: CliContext, duration: float | None, config_name: str | None) -> None:
    """Start the local Triton server (nvidia-pytriton) over the repository and wait."""
    from gss.local.triton import LocalTriton, TritonStartError

    settings = cli.settings().triton
    server = LocalTriton(
        model_repository(settings),
        startup_timeout_seconds=settings.startup_timeout_seconds,
        model_config_name=config_name or settings.model_config_name,
    )
    try:
        with server:
            click.echo(f"Triton ready: models {', '.join(server.models)}")
            click.echo(f"  HTTP     {server.http_url}   (GSS_TRITON__URL={server.http_url})")
            click.echo(f"  gRPC     {server.grpc_url}")
            click.echo(f"  metrics  {server.metrics_url}")
            click.echo(f"  log      {server.log_path}")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait(timeout=duration)
    except TritonStartError as exc:
        raise click.ClickException(str(exc)) from exc


def _sample_input(shape: tuple[int, ...], datatype: str) -> Any:
    from compute.triton.transport import numpy_dtype

    # Variable dims get 32: big enough for convolutional models (ocr_det downsamples by 32).
    dims = tuple(32 if d < 0 else d for d in shape)
    rng = np.random.default_rng(0)
    dtype = numpy_dtype(datatype)
    if dtype.kind in "ui":
        return rng.integers(0, 256 if dtype.itemsize == 1 else 1000, size=dims).astype(dtype)
    return rng.random(dims).astype(dtype)


@models.command()
@click.option(
    "--url",
    default=None,
    help="Triton HTTP endpoint host:port (default: triton.url; none: start a local server).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per model.")
@pass_cli
def check(cli: CliContext, url: str | None, as_json: bool) -> None:
    """Call every repository model once on a Triton endpoint; exit 1 if any call fails."""
    from compute.triton.client import ModelClient, ModelError
    from gss.local.triton import TritonStartError, find_models, triton_url

    settings = cli.settings().triton
    if url:
        settings = settings.model_copy(update={"url": url})
    try:
        names = find_models(model_repository(settings))
        failures = 0
        with (
            triton_url(settings) as endpoint,
            ModelClient.from_settings(settings, endpoint) as client,
        ):
            # A local server is READY once started; a remote one gets one call's deadline.
            client.wait_ready(names, timeout_seconds=settings.deadline_seconds)
            for name in names:
                row: dict[str, Any] = {"model_name": name, "url": endpoint}
                try:
                    info = client.model_info(name)
                    item = {s.name: _sample_input(s.shape, s.datatype) for s in info.inputs}
                    started = time.perf_counter()
                    result = client.infer(name, item)
                    row.update(
                        ok=True,
                        model_version=result.model_version,
                        latency_seconds=round(time.perf_counter() - started, 4),
                        inputs={s.name: f"{s.datatype}{list(s.shape)}" for s in info.inputs},
                        outputs={k: f"{v.dtype}{list(v.shape)}" for k, v in result.items()},
                    )
                except ModelError as exc:
                    failures += 1
                    row.update(ok=False, error=str(exc))
                if as_json:
                    click.echo(json.dumps(row))
                elif row["ok"]:
                    click.echo(
                        f"ok    {name} version {row['model_version']} at {endpoint}: "
                        f"{row['inputs']} -> {row['outputs']} in {row['latency_seconds']} s"
                    )
                else:
                    click.echo(f"FAIL  {name} at {endpoint}: {row['error']}")
    except (TritonStartError, ModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    if failures:
        raise SystemExit(1)


def register(main: click.Group) -> None:
    main.add_command(models)
