"""A network's NAT and forwarding rules: one set per network, as docker and podman's netavark keep them.

The bridge plugin's `ipMasq` and the firewall plugin add the same rules once per container instead,
exec'ing `iptables` some ten times at every start: ~40 ms and ~20-45 ms of it on 2 shared cores,
which is most of what a container on a bridge paid to start. Here, in the namespace lazyctr runs in,
each rule carrying the comment `lazyctr network NAME`:

- nat POSTROUTING `-s SUBNET ! -o BRIDGE -j MASQUERADE`: traffic leaving the network leaves as the
  host's (traffic between its containers keeps its addresses);
- filter FORWARD `-i BRIDGE -j ACCEPT` and `-o BRIDGE` for replies and published ports' DNAT'd
  connections: what a DROP policy (docker's, ufw's) would stop otherwise.

`ensure` adds them while the bridge is not there yet (the bridge plugin makes it at the first ADD),
so once the bridge is there the rules are too, and a start pays nothing for them; `remove` deletes
them when `network rm` deletes the bridge.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from runtime.process import ContainerError

if TYPE_CHECKING:
    from runtime.network.networks import Network


def rules(network: Network) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) for each of the network's rules."""
    comment = ["-m", "comment", "--comment", f"lazyctr network {network.name}"]
    bridge, subnet = network.bridge, network.subnet
    return [
        ("nat", "POSTROUTING", ["-s", subnet, "!", "-o", bridge, *comment, "-j", "MASQUERADE"]),
        ("filter", "FORWARD", ["-i", bridge, *comment, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT",
                               *comment, "-j", "ACCEPT"]),
    ]  # fmt: skip


def ensure(network: Network) -> None:
    """Add whichever of the network's rules is missing (FORWARD's first, ahead of a DROP rule)."""
    for table, chain, rule in rules(network):
        if _iptables("-t", table, "-C", chain, *rule).returncode != 0:
            where = ["-I", chain, "1"] if chain == "FORWARD" else ["-A", chain]
            added = _iptables("-t", table, *where, *rule)
            if added.returncode != 0:
                reason = added.stderr.decode(errors="replace").strip()
                raise ContainerError(f"network {network.name}: iptables failed: {reason}")


def remove(network: Network) -> None:
    """Delete the network's rules, each as often as it is there."""
    for table, chain, rule in rules(network):
        while _iptables("-t", table, "-D", chain, *rule).returncode == 0:
            pass


def _iptables(*args: str) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if binary is None:
        raise ContainerError("iptables not found: install iptables (bridge networks need it)")
    return subprocess.run([binary, "-w", *args], capture_output=True)
