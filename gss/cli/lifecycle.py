"""Lifecycle verbs: ``gss signal promote | deprecate GALAXY/NAME@VERSION``.

Both edit the registry file (``--registry``, default ``registry_path``) in place, keeping its
comments and layout (contract/registry_file.py); servers that follow the file pick the change
up (docs/serving.md, "Signal lifecycle").
"""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from gss.cli.context import CliContext, pass_cli

registry_option = click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Registry file to edit (default: registry_path from settings).",
)
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Print the change as a diff; write nothing."
)


def _edit(
    cli: CliContext, target: str, registry_path: Path | None, dry_run: bool, action: str
) -> None:
    from contract.errors import GssError
    from contract.registry import SignalState, parse_signal_path
    from contract.registry_file import parse, set_default, set_state, write_atomically

    path = registry_path or Path(cli.settings().registry_path)
    try:
        galaxy_name, name, version = parse_signal_path(target)
        if not version:
            raise click.UsageError(f"{target}: name the version, e.g. {target}@2")
        text = path.read_text()
        galaxy = parse(text, path).galaxy(galaxy_name)
        spec = galaxy.signal(name, version)
        pinned = galaxy.default_version(name)
        if action == "promote":
            if spec.deprecated:
                raise click.ClickException(
                    f"{galaxy_name}/{spec.ref} is deprecated: a deprecated version cannot be "
                    "the default (set its state back to active in the registry first)"
                )
            if pinned == version:
                click.echo(f"{galaxy_name}/{spec.ref} is already the default of {name!r}")
                return
            edited = set_default(text, galaxy_name, name, version)
            done = (
                f"promoted {galaxy_name}/{spec.ref}: bare {name!r} was @{pinned}, is now @{version}"
            )
        else:
            if pinned == version:
                raise click.ClickException(
                    f"{galaxy_name}/{spec.ref} is the pinned default of {name!r}: promote "
                    "another version first (gss signal promote)"
                )
            if spec.deprecated:
                click.echo(f"{galaxy_name}/{spec.ref} is already deprecated")
                return
            edited = set_state(text, galaxy_name, name, version, SignalState.DEPRECATED)
            done = f"deprecated {galaxy_name}/{spec.ref} (still readable; lookups are counted)"
        after = parse(edited, path).galaxy(galaxy_name)
        ok = (
            after.default_version(name) == version
            if action == "promote"
            else after.signal(name, version).deprecated
        )
        if not ok:  # the edit did not say what was asked: never write it
            raise click.ClickException(
                f"could not edit {path} safely for {target}; edit it by hand"
            )
    except GssError as exc:
        raise click.ClickException(str(exc)) from exc
    if dry_run:
        diff = difflib.unified_diff(
            text.splitlines(keepends=True), edited.splitlines(keepends=True), str(path), str(path)
        )
        click.echo("".join(diff), nl=False)
        return
    try:
        write_atomically(path, edited)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc}") from exc
    click.echo(f"{done}; wrote {path}")
    click.echo(
        "servers following this file adopt it within seconds (or on SIGHUP); "
        "elsewhere ship the file (ConfigMap) as usual"
    )


@click.command("promote")
@click.argument("target", metavar="GALAXY/NAME@VERSION")
@registry_option
@dry_run_option
@pass_cli
def promote(cli: CliContext, target: str, registry_path: Path | None, dry_run: bool) -> None:
    """Pin NAME@VERSION as the default of NAME: what a bare NAME means from now on.

    Run it once the version's backfill is complete: GSS does not check that (see
    docs/serving.md, "Signal lifecycle"). A deprecated version cannot be promoted."""
    _edit(cli, target, registry_path, dry_run, "promote")


@click.command("deprecate")
@click.argument("target", metavar="GALAXY/NAME@VERSION")
@registry_option
@dry_run_option
@pass_cli
def deprecate(cli: CliContext, target: str, registry_path: Path | None, dry_run: bool) -> None:
    """Mark NAME@VERSION deprecated: still readable and writable, flagged in DescribeGalaxy,
    lookups counted (gss_deprecated_signal_lookups_total). Not the pinned default."""
    _edit(cli, target, registry_path, dry_run, "deprecate")


def register(signal_group: click.Group) -> None:
    signal_group.add_command(promote)
    signal_group.add_command(deprecate)


__all__ = ["register"]
