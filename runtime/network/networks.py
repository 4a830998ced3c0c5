"""Networks as CNI conflists under `<root>/networks/` (podman keeps its own in /etc/cni/net.d): the
default `bridge` and user networks, each a Linux bridge on an IPv4 subnet of its own, with
host-local leases under `<root>/networks/ipam/`."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.network import nat
from runtime.network.attachments import attachments
from runtime.network.cni import CNI_VERSION
from storage.errors import LazyctrError
from storage.files import atomic_write, file_lock

NETWORKS_DIR = "networks"
DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "lazyctr0"
DEFAULT_SUBNET = "10.88.0.0/16"  # podman's; LAZYCTR_BRIDGE_SUBNET (as podman's default_subnet) overrides
SUBNET_ENV = "LAZYCTR_BRIDGE_SUBNET"
USER_POOL = ipaddress.ip_network("10.89.0.0/16")  # podman's default_subnet_pools: a free /24 of it
NOT_BRIDGED = ("none", "host")
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")  # docker's network names


class NetworkError(LazyctrError):
    """A network command that cannot be done (exit 1, as docker's network commands)."""


@dataclass
class Network:
    """A bridge network: its name, its Linux bridge and its IPv4 subnet."""

    name: str
    bridge: str
    subnet: str
    created: float = field(default_factory=time.time)

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def resolves_names(self) -> bool:
        """Containers find each other by name on user networks, as on docker's."""
        return self.name != DEFAULT_NETWORK

    def conflist(self, root: Path) -> dict[str, Any]:
        """The CNI network configuration list, as podman 3 writes it but for NAT and forwarding."""
        ipam = {
            "type": "host-local",
            "routes": [{"dst": "0.0.0.0/0"}],
            "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
            "dataDir": str(ipam_dir(root)),
        }
        return {
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [
                # NAT and forwarding: per network (runtime/network/nat.py), not ipMasq and firewall.
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True, "ipam": ipam},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
            "lazyctr": {"created": self.created},
        }  # fmt: skip

    @classmethod
    def from_conflist(cls, data: dict[str, Any]) -> Network:
        bridge = data["plugins"][0]
        return cls(
            data["name"],
            bridge["bridge"],
            bridge["ipam"]["ranges"][0][0]["subnet"],
            data.get("lazyctr", {}).get("created", 0.0),
        )


def networks_dir(root: Path) -> Path:
    return root / NETWORKS_DIR


def ipam_dir(root: Path) -> Path:
    """host-local's leases: one file per address, named after it, under a directory per network."""
    return networks_dir(root) / "ipam"


def conflist_path(root: Path, name: str) -> Path:
    return networks_dir(root) / f"{name}.conflist"


def lock(root: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(networks_dir(root) / "lock")


def all_networks(root: Path) -> list[Network]:
    """The default network (whether it was used yet or not) and the user networks, by name."""
    found = {DEFAULT_NETWORK: _default_network()}
    for path in sorted(networks_dir(root).glob("*.conflist")):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError):
            network = Network.from_conflist(json.loads(path.read_text()))
            found[network.name] = network
    return sorted(found.values(), key=lambda n: n.name)


def _default_network() -> Network:
    subnet = _subnet(os.environ.get(SUBNET_ENV) or DEFAULT_SUBNET)
    return Network(DEFAULT_NETWORK, DEFAULT_BRIDGE, subnet, 0.0)


def find_network(root: Path, name: str) -> Network:
    for network in all_networks(root):
        if network.name == name:
            return network
    raise NetworkError(f"network {name} not found")


def create_network(root: Path, name: str, subnet: str | None) -> Network:
    """A new user network on a subnet of its own (the first free /24 of 10.89.0.0/16 if not given)."""
    if name in (DEFAULT_NETWORK, *NOT_BRIDGED):
        raise NetworkError(f"{name} is a pre-defined network and cannot be created")
    if not NAME.fullmatch(name):
        raise NetworkError(f"invalid network name {name!r}: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    with lock(root):
        networks = all_networks(root)
        if any(network.name == name for network in networks):
            raise NetworkError(f"network with name {name} already exists")
        taken = [ipaddress.ip_network(n.subnet) for n in networks] + _routed_subnets()
        if subnet is None:
            wanted = next((s for s in USER_POOL.subnets(new_prefix=24) if not _overlaps(s, taken)), None)
            if wanted is None:
                raise NetworkError(f"no free subnet left in {USER_POOL}: give one with --subnet")
        else:
            wanted = ipaddress.ip_network(_subnet(subnet))
            clash = next((n for n in networks if _overlaps(wanted, [ipaddress.ip_network(n.subnet)])), None)
            if clash is not None:
                raise NetworkError(f"subnet {wanted} overlaps that of network {clash.name} ({clash.subnet})")
        bridges = {n.bridge for n in networks} | {iface for _, iface in socket.if_nameindex()}
        bridge = next(f"lazyctr{i}" for i in range(1, 10000) if f"lazyctr{i}" not in bridges)
        network = Network(name, bridge, str(wanted))
        save_network(root, network)
        return network


def save_network(root: Path, network: Network) -> None:
    atomic_write(conflist_path(root, network.name), json.dumps(network.conflist(root), indent=2).encode())


def _subnet(text: str) -> str:
    """An IPv4 subnet in CIDR form with room for a gateway and containers, or a clear error."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise NetworkError(f"invalid subnet {text!r}: {e}") from None
    if subnet.prefixlen > 29:
        raise NetworkError(f"invalid subnet {text!r}: a /{subnet.prefixlen} has no room for containers")
    return str(subnet)


def _overlaps(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, others: list[Any]) -> bool:
    return any(subnet.version == other.version and subnet.overlaps(other) for other in others)


def _routed_subnets() -> list[ipaddress.IPv4Network]:
    """The subnets this network namespace already routes to (not the default route), as podman skips."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            words = line.split()
            destination, mask = (ipaddress.IPv4Address(bytes.fromhex(w)[::-1]) for w in (words[1], words[7]))
            if int(mask):
                found.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return found


def remove_network(root: Path, name: str) -> None:
    """Delete a user network; refused while a container is on it. Its bridge goes too."""
    if name in (DEFAULT_NETWORK, *NOT_BRIDGED):
        raise NetworkError(f"{name} is a pre-defined network and cannot be removed")
    with lock(root):
        network = find_network(root, name)
        users = [
            a.name or a.container_id[:12]
            for a in attachments(root)
            if a.network == name and (a.alive() or not a.detachable_here())  # callers reap the others
        ]
        if users:
            raise NetworkError(f"network {name} is in use by container {', '.join(users)}: remove it first")
        conflist_path(root, name).unlink()
        with contextlib.suppress(FileNotFoundError):
            for lease in (ipam_dir(root) / name).iterdir():
                lease.unlink()
            (ipam_dir(root) / name).rmdir()
        # The bridge plugin makes the bridge but never deletes it (podman deletes it at network rm).
        subprocess.run(["ip", "link", "delete", network.bridge, "type", "bridge"], capture_output=True)
        nat.remove(network)
