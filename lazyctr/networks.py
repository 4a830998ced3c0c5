"""The network commands: `network create|ls|inspect|rm` (the networks themselves are runtime/network/'s)."""

from __future__ import annotations

import json
import time

import click

from lazyctr.context import COMMANDS, Context, pass_context
from runtime.network import networks
from runtime.network.attachments import Attachment, attachments
from runtime.network.sandbox import reap_stale


@click.group("network")
def network() -> None:
    """Manage networks: create, ls, inspect, rm."""


COMMANDS.append(network)


@network.command()
@click.option("--subnet", help="IPv4 subnet in CIDR form (default: a free /24 of 10.89.0.0/16).")
@click.argument("name")
@pass_context
def create(ctx: Context, subnet: str | None, name: str) -> None:
    """Create a bridge network NAME, on which containers reach each other by name."""
    click.echo(networks.create_network(ctx.root, name, subnet).name)


@network.command("ls")
@pass_context
def ls(ctx: Context) -> None:
    """List networks."""
    reap_stale(ctx.root)
    used = _containers_by_network(ctx)
    click.echo(f"{'NAME':<20}{'DRIVER':<10}{'SUBNET':<20}{'BRIDGE':<12}CONTAINERS")
    for net in networks.all_networks(ctx.root):
        click.echo(
            f"{net.name:<20}{'bridge':<10}{net.subnet:<20}{net.bridge:<12}{len(used.get(net.name, []))}"
        )


@network.command()
@click.argument("names", nargs=-1, required=True)
@pass_context
def inspect(ctx: Context, names: tuple[str, ...]) -> None:
    """Show networks as JSON: subnet, gateway, bridge, CNI configuration and attached containers."""
    reap_stale(ctx.root)
    used = _containers_by_network(ctx)
    found = [networks.find_network(ctx.root, name) for name in names]
    click.echo(json.dumps([_facts(ctx, net, used.get(net.name, [])) for net in found], indent=2))


def _facts(ctx: Context, net: networks.Network, attached: list[Attachment]) -> dict[str, object]:
    return {
        "Name": net.name,
        "Driver": "bridge",
        "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(net.created)) if net.created else "",
        "Subnet": net.subnet,
        "Gateway": net.gateway,
        "Bridge": net.bridge,
        "NameResolution": "/etc/hosts" if net.resolves_names else "none",
        "Containers": {
            a.container_id: {"Name": a.name, "IPv4Address": a.address, "Ports": a.ports} for a in attached
        },
        "CNI": net.conflist(ctx.root),
    }


def _containers_by_network(ctx: Context) -> dict[str, list[Attachment]]:
    used: dict[str, list[Attachment]] = {}
    for attachment in attachments(ctx.root):
        used.setdefault(attachment.network, []).append(attachment)
    return used


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_context
def rm(ctx: Context, names: tuple[str, ...]) -> None:
    """Remove networks; one a container is on is refused."""
    reap_stale(ctx.root)  # what crashed supervisors left uses no network
    for name in names:
        networks.remove_network(ctx.root, name)
        click.echo(name)
