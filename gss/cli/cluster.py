"""``gss cluster run`` (a local cluster of nodes on one broker) and ``gss cluster status``
(the cluster map): docs/cluster.md."""

from __future__ import annotations

import json
from pathlib import Path

import click
import grpc
from google.protobuf import json_format

from gss.cli.context import CliContext, duration_option, pass_cli, stop_on_signals
from gss.cli.serving import _client, _fail_rpc, json_option, target_option


@click.group("cluster")
def cluster_group() -> None:
    """Scale-out serving: a local cluster, the cluster map (docs/cluster.md)."""


@cluster_group.command()
@click.option("--nodes", type=int, default=3, show_default=True, help="Nodes (processes).")
@click.option(
    "--replicas", type=int, default=2, show_default=True, help="Replicas of each partition."
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default="./gss-data/cluster",
    show_default=True,
    help="Store directories go under it (node-<ordinal>).",
)
@duration_option
@pass_cli
def run(cli: CliContext, nodes: int, replicas: int, data: str, duration: float | None) -> None:
    """Run NODES `gss serve` processes on loopback, each hosting its partitions, on the
    configured broker (kafka.bootstrap_servers) or a local one; Ctrl-C or SIGTERM stops them."""
    from gss.local.broker import LocalBroker
    from gss.local.cluster import LocalCluster

    if not 1 <= replicas <= nodes:
        raise click.UsageError(f"--replicas must be between 1 and --nodes ({nodes})")
    settings = cli.settings()
    stop = stop_on_signals()
    broker = None
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        broker = LocalBroker().start()
        bootstrap = broker.bootstrap_servers
    env = {"GSS_CONFIG": str(cli.config_file)} if cli.config_file else {}
    try:
        with LocalCluster(Path(data), bootstrap, nodes=nodes, replicas=replicas, env=env) as local:
            for node in local.nodes:
                click.echo(f"node {node.ordinal}: {node.address} (store {node.data})", err=True)
            click.echo(
                f"{nodes} nodes, {replicas} replicas of each partition, broker {bootstrap}; "
                f"try: gss cluster status --target {local.nodes[0].address}",
                err=True,
            )
            stop.wait(duration)
    finally:
        if broker is not None:
            broker.stop()


@cluster_group.command()
@target_option
@json_option
@pass_cli
def status(cli: CliContext, target: str | None, as_json: bool) -> None:
    """The cluster map as the target node knows it: nodes, partitions, positions, lag."""
    with _client(cli, target) as client:
        try:
            cluster = client.cluster_map()
        except grpc.RpcError as exc:
            raise _fail_rpc(exc) from exc
    if as_json:
        # Zeros too (ordinal 0, lag 0): scripts read every field of every node.
        shown = json_format.MessageToDict(
            cluster, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        click.echo(json.dumps(shown, indent=1))
        return
    for node in cluster.nodes:
        state = ("serving" if node.serving else "NOT SERVING") if node.live else "DOWN"
        click.echo(f"node {node.ordinal}  {node.address}  {state}")
        for p in node.partitions:
            flags = " publishing" if p.publishing else ""
            click.echo(
                f"  {p.galaxy}:{p.partition}  next offset {p.next_offset}  "
                f"lag {p.lag_records}{flags}"
            )


def register(main: click.Group) -> None:
    main.add_command(cluster_group)
