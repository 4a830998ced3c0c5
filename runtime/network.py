"""Container networks: bridge networks through the CNI plugins Debian ships, as podman 3/4 runs them.

A network is a CNI conflist, `<root>/networks/<name>.conflist` (podman keeps its own in
/etc/cni/net.d): the `bridge` plugin (a Linux bridge, a veth per container, the gateway, NAT for
outbound traffic) with `host-local` addresses (its leases under `<root>/networks/ipam/`), then
`portmap` (published ports, DNAT) and `firewall` (the FORWARD rules a DROP policy needs). The default
network `bridge` is written on first use; `network create` adds user networks.

A container on a network gets a network namespace of its own, bind-mounted at
`containers/<id>/netns` before its PID 1 is forked (so that the plugins' DEL finds the addresses it
must un-NAT even after the container ended), and PID 1 joins it. The plugins are exec'd with the CNI
environment protocol (CNI_COMMAND, CNI_NETNS... and the config on stdin) while PID 1 prepares its root
file system, so most of their cost hides behind it. What was attached is recorded in
`containers/<id>/network.json` (the exact config each plugin got, and its result) before the first
plugin runs, so DEL can undo it whoever runs it: the supervisor when the container ends, `rm`, or
the next `run` when the supervisor died (`reap_stale`).

Names: containers on a user network find each other through /etc/hosts: every attached container's
hosts file (bound into it) is rewritten in place, under a lock, when a container joins or leaves. No
resolver process runs (podman's dnsname needs dnsmasq, docker runs one in its daemon), nothing costs
at start but a few small writes, and every libc and busybox reads /etc/hosts. The default network
does not do it, as docker's does not.

The loopback plugin is not exec'd: PID 1 brings `lo` up itself (runtime/container.py), for free.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime import syscalls as sc
from runtime.process import ContainerError
from runtime.rootfs import LOCAL_HOSTS
from runtime.state import containers_dir
from storage import timeline
from storage.errors import LazyctrError
from storage.files import atomic_write, file_lock

CNI_VERSION = "1.0.0"
CNI_PATHS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's containernetworking-plugins; upstream's
NETWORKS_DIR = "networks"
ATTACHMENT_FILE = "network.json"
NETNS_FILE = "netns"
IFNAME = "eth0"

DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "lazyctr0"
DEFAULT_SUBNET = "10.88.0.0/16"  # podman's; LAZYCTR_BRIDGE_SUBNET (as podman's default_subnet) overrides
SUBNET_ENV = "LAZYCTR_BRIDGE_SUBNET"
USER_POOL = ipaddress.ip_network("10.89.0.0/16")  # podman's default_subnet_pools: a free /24 of it
NOT_BRIDGED = ("none", "host")
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")  # docker's network names


class NetworkError(LazyctrError):
    """A network command that cannot be done (exit 1, as docker's network commands)."""


# -- published ports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    """`-p [IP:]HOST:CONTAINER[/tcp|/udp]`, in CNI's portMappings shape."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        spec, _, protocol = text.partition("/")
        protocol = protocol or "tcp"
        parts = spec.rsplit(":", 2)
        if protocol not in ("tcp", "udp") or len(parts) < 2:
            raise ContainerError(f"invalid port {text!r}: expected [IP:]HOST:CONTAINER[/tcp|/udp]")
        host_ip = parts[0] if len(parts) == 3 else ""
        if host_ip:
            try:
                host_ip = str(ipaddress.IPv4Address(host_ip))
            except ValueError:
                raise ContainerError(f"invalid port {text!r}: {host_ip!r} is no IPv4 address") from None
        host, container = (_port(text, p) for p in parts[-2:])
        return cls(host, container, protocol, host_ip)

    def cni(self) -> dict[str, Any]:
        mapping: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            mapping["hostIP"] = self.host_ip
        return mapping

    def __str__(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.container_port}/{self.protocol}"


def _port(text: str, number: str) -> int:
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ContainerError(f"invalid port {text!r}: {number!r} is not a port number (1-65535)")
    return int(number)


def reserve_ports(ports: list[PortMapping]) -> list[socket.socket]:
    """Bind every host port, as docker-proxy and podman do, so that no one else (another container
    included) takes it while the container runs; the sockets are held, never listened on: DNAT takes
    the traffic before it could reach them."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            try:
                s.bind((port.host_ip, port.host_port))
            except OSError as e:
                where = f"{port.host_ip or '0.0.0.0'}:{port.host_port}/{port.protocol}"
                reason = "port is already allocated" if e.errno == errno.EADDRINUSE else e.strerror
                raise ContainerError(f"bind for {where} failed: {reason}") from None
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


# -- networks -------------------------------------------------------------------------------------


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
        """The CNI network configuration list, as podman 3 writes it."""
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
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True, "ipam": ipam},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "firewall", "backend": "iptables"},
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


def _conflist_path(root: Path, name: str) -> Path:
    return networks_dir(root) / f"{name}.conflist"


def _lock(root: Path) -> contextlib.AbstractContextManager[None]:
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
    with _lock(root):
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
        _save(root, network)
        return network


def _save(root: Path, network: Network) -> None:
    atomic_write(_conflist_path(root, network.name), json.dumps(network.conflist(root), indent=2).encode())


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
    with _lock(root):
        _reap_stale(root)
        network = find_network(root, name)
        users = [a.name or a.container_id[:12] for a in attachments(root) if a.network == name]
        if users:
            raise NetworkError(f"network {name} is in use by container {', '.join(users)}: remove it first")
        _conflist_path(root, name).unlink()
        with contextlib.suppress(FileNotFoundError):
            for lease in (ipam_dir(root) / name).iterdir():
                lease.unlink()
            (ipam_dir(root) / name).rmdir()
        # The bridge plugin makes the bridge but never deletes it (podman deletes it at network rm).
        subprocess.run(["ip", "link", "delete", network.bridge, "type", "bridge"], capture_output=True)


# -- a container's attachment ---------------------------------------------------------------------


@dataclass
class Attachment:
    """A container's place on a network, as `containers/<id>/network.json` records it."""

    container_id: str
    network: str
    name: str
    hostname: str
    netns: str  # the bind-mounted network namespace
    supervisor: int  # the process that detaches it when the container ends
    supervisor_start: str  # its start time (/proc/PID/stat), so that a reused PID is not it
    plugins: list[dict[str, Any]]  # the config each plugin got at ADD: DEL gets the same
    host_netns: int  # the inode of the namespace the plugins ran in (the bridge and NAT rules are there)
    ports: list[str] = field(default_factory=list)
    address: str = ""  # the container's IPv4 address, once attached
    result: dict[str, Any] | None = None  # the last plugin's result

    @classmethod
    def load(cls, container_dir: Path) -> Attachment | None:
        try:
            return cls(**json.loads((container_dir / ATTACHMENT_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        atomic_write(self.dir / ATTACHMENT_FILE, json.dumps(asdict(self)).encode())

    @property
    def dir(self) -> Path:
        return Path(self.netns).parent

    def alive(self) -> bool:
        """Whether its supervisor still runs (and will detach it)."""
        return _start_time(self.supervisor) == self.supervisor_start

    def detachable_here(self) -> bool:
        """Whether we run in the namespace it was attached from: a DEL elsewhere would miss its rules."""
        return self.host_netns == _own_netns()


def _own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def attachments(root: Path) -> list[Attachment]:
    containers = containers_dir(root)
    found = (Attachment.load(d) for d in sorted(containers.iterdir())) if containers.is_dir() else iter(())
    return [a for a in found if a is not None]


def _start_time(pid: int) -> str:
    """When process `pid` started (in clock ticks since boot); '' if it does not run (a zombie does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[19] if fields[0] != "Z" else ""
    except (OSError, IndexError):
        return ""


class Sandbox:
    """The network side of one container's run: `open` before PID 1 is forked (a namespace for it to
    join), `connect` while PID 1 sets up its root, `close` when it ended."""

    def __init__(self, root: Path, container_dir: Path, network: str, name: str, hostname: str,
                 ports: list[PortMapping]) -> None:  # fmt: skip
        self.root = root
        self.dir = container_dir
        self.network = find_network(root, network)
        self.name, self.hostname, self.ports = name, hostname, ports
        self.netns_fd = -1
        self.attachment: Attachment | None = None
        self._connecting: threading.Thread | None = None
        self._failure: BaseException | None = None

    def open(self) -> None:
        """Leave what crashed supervisors left, make the namespace and record the attachment."""
        with _lock(self.root):
            _reap_stale(self.root)
            if not _conflist_path(self.root, self.network.name).exists():  # the default one, first used
                _save(self.root, self.network)
            netns = self.dir / NETNS_FILE
            plugins = [
                {"cniVersion": CNI_VERSION, "name": self.network.name, **plugin}
                for plugin in self.network.conflist(self.root)["plugins"]
                if plugin["type"] != "portmap" or self.ports  # its exec costs ~7 ms for nothing
            ]
            for plugin in plugins:
                if plugin["type"] == "portmap":
                    plugin["runtimeConfig"] = {"portMappings": [p.cni() for p in self.ports]}
            pid = os.getpid()
            self.attachment = Attachment(
                self.dir.name, self.network.name, self.name, self.hostname, str(netns), pid, _start_time(pid),
                plugins, _own_netns(), [str(p) for p in self.ports],
            )  # fmt: skip
            self.attachment.save()  # before anything exists: whatever exists later, DEL finds
            try:
                make_network_namespace(netns)
                self.netns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                timeline.mark("netns")
            except BaseException:
                detach(self.root, self.attachment)
                self.attachment = None
                raise

    def start_connecting(self) -> None:
        """`connect` in a thread, so that the plugins run while lazyctr moves PID 1 into its cgroup."""

        def connect() -> None:
            try:
                self.connect()
            except BaseException as e:
                self._failure = e

        self._connecting = threading.Thread(target=connect, name="cni")
        self._connecting.start()

    def wait_connected(self) -> None:
        """Return once `start_connecting`'s plugins are done; raise what failed them."""
        if self._connecting is not None:
            self._connecting.join()
            self._connecting = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def connect(self) -> None:
        """ADD through the plugins, in order, each getting the previous one's result."""
        attachment = self.attachment
        assert attachment is not None
        for plugin in attachment.plugins:
            attachment.result = _exec_plugin("ADD", plugin, attachment, attachment.result)
            if plugin is attachment.plugins[0]:
                # The addresses: what a DEL needs as its prevResult if we die before the end.
                ips = attachment.result.get("ips") or [{}]
                attachment.address = ips[0].get("address", "").split("/")[0]
                attachment.save()
            timeline.mark(f"cni {plugin['type']}")
        with _lock(self.root):
            attachment.save()
            _write_hosts(self.root, self.network)

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.join()  # DEL undoes an ADD that has ended
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        if self.attachment is not None:
            with _lock(self.root):
                detach(self.root, self.attachment)
            self.attachment = None


def make_network_namespace(path: Path) -> None:
    """A new network namespace bind-mounted at `path`, as `ip netns add` makes one; we stay in ours."""
    path.touch()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWNET)
        try:
            sc.mount("/proc/thread-self/ns/net", str(path), None, sc.MS_BIND)
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)


def detach(root: Path, attachment: Attachment) -> None:
    """DEL through the plugins in reverse order, then the namespace goes (callers hold the lock)."""
    errors = []
    for plugin in reversed(attachment.plugins):
        try:
            _exec_plugin("DEL", plugin, attachment, attachment.result)
        except ContainerError as e:
            errors.append(str(e))
    netns = Path(attachment.netns)
    with contextlib.suppress(OSError):
        sc.umount2(netns, sc.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        netns.unlink()
    with contextlib.suppress(FileNotFoundError):
        (attachment.dir / ATTACHMENT_FILE).unlink()
    with contextlib.suppress(LazyctrError):
        _write_hosts(root, find_network(root, attachment.network))
    if errors:
        raise ContainerError(f"network {attachment.network}: {'; '.join(errors)}")


def release(container_dir: Path) -> None:
    """Detach the container in `container_dir` if it still is attached (its supervisor is gone)."""
    attachment = Attachment.load(container_dir)
    if attachment is not None and not attachment.alive():
        if not attachment.detachable_here():
            where = f"container {attachment.name} was attached to network {attachment.network}"
            raise ContainerError(f"{where} from another network namespace: remove it from there")
        root = container_dir.parent.parent
        with _lock(root):
            detach(root, attachment)


def reap_stale(root: Path) -> None:
    with _lock(root):
        _reap_stale(root)


def _reap_stale(root: Path) -> None:
    """Detach the containers whose supervisor died without doing it (callers hold the lock)."""
    for attachment in attachments(root):
        if not attachment.alive() and attachment.detachable_here():
            with contextlib.suppress(ContainerError):  # a DEL that fails now fails again next time
                detach(root, attachment)


def _exec_plugin(
    command: str, plugin: dict[str, Any], attachment: Attachment, prev: dict[str, Any] | None
) -> dict[str, Any]:
    """Run one CNI plugin as the CNI spec's protocol says: the environment, the config on stdin, the
    result (or an error object) on stdout."""
    kind = plugin["type"]
    binary = next((Path(d) / kind for d in CNI_PATHS if (Path(d) / kind).exists()), None)
    if binary is None:
        raise ContainerError(f"CNI plugin {kind} not found in {':'.join(CNI_PATHS)}:"
                             " install containernetworking-plugins")  # fmt: skip
    config = dict(plugin, prevResult=prev) if prev is not None else plugin
    env = dict(
        os.environ,
        CNI_COMMAND=command,
        CNI_CONTAINERID=attachment.container_id,
        # Not mounted after a reboot (or a failed open): DEL then releases what is outside it alone.
        CNI_NETNS=attachment.netns if os.path.ismount(attachment.netns) else "",
        CNI_IFNAME=IFNAME,
        CNI_PATH=":".join(CNI_PATHS),
    )
    proc = subprocess.run([binary], input=json.dumps(config).encode(), env=env, capture_output=True)
    try:
        answer: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        answer = {}
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        message = answer.get("msg") or stderr or f"exit {proc.returncode}"
        details = f" ({answer['details']})" if answer.get("details") else ""
        raise ContainerError(f"network {attachment.network}: CNI {kind} {command} failed: {message}{details}")
    return answer


# -- /etc/hosts of the containers on a network ----------------------------------------------------


def _write_hosts(root: Path, network: Network) -> None:
    """Rewrite each attached container's hosts file: itself, and on a user network every other
    container by name. In place: the file is bound into the container, a new inode would not be."""
    on_network = [a for a in attachments(root) if a.network == network.name and a.address]
    for attachment in on_network:
        peers = on_network if network.resolves_names else [attachment]
        lines = [LOCAL_HOSTS]
        for peer in sorted(peers, key=lambda p: p is not attachment):  # itself first
            names = dict.fromkeys([peer.hostname, peer.name, peer.container_id[:12]])
            lines.append(f"{peer.address}\t{' '.join(n for n in names if n)}\n")
        with contextlib.suppress(FileNotFoundError), open(attachment.dir / "hosts", "r+") as f:
            f.write("".join(lines))
            f.truncate()
