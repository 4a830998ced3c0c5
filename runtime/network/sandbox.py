"""A container's run on a bridge network: its namespace made before PID 1 is forked, the plugins' ADD
while PID 1 sets up its root, their DEL when it ended (or, when its supervisor died, at the next `run`,
`rm` or `network` command), and the hosts files of the containers on the network."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

from runtime import syscalls as sc
from runtime.network import nat
from runtime.network.attachments import (
    ATTACHMENT_FILE,
    NETNS_FILE,
    Attachment,
    attachments,
    own_netns,
    start_time,
)
from runtime.network.cni import CNI_VERSION, exec_plugin
from runtime.network.networks import Network, conflist_path, find_network, lock, save_network
from runtime.network.ports import PortMapping
from runtime.process import ContainerError
from runtime.rootfs import LOCAL_HOSTS
from storage import timeline
from storage.errors import LazyctrError


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
        with lock(self.root):
            _reap_stale(self.root)
            if not conflist_path(self.root, self.network.name).exists():  # the default one, first used
                save_network(self.root, self.network)
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
                self.dir.name, self.network.name, self.name, self.hostname, str(netns), pid, start_time(pid),
                plugins, own_netns(), [str(p) for p in self.ports],
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
        if self.network.bridge not in {name for _, name in socket.if_nameindex()}:
            with lock(self.root):  # its first container here: the network's rules go in before its bridge
                nat.ensure(self.network)
        # A DEL needs no result of ours (bridge finds the interface in the namespace, host-local and
        # portmap go by the container's ID): the record is saved once, with the address, for the hosts.
        for plugin in attachment.plugins:
            attachment.result = exec_plugin("ADD", plugin, attachment, attachment.result)
            timeline.mark(f"cni {plugin['type']}")
        ips = (attachment.result or {}).get("ips") or [{}]
        attachment.address = ips[0].get("address", "").split("/")[0]
        with lock(self.root):
            attachment.save()
            _write_hosts(self.root, self.network, attachment)

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.join()  # DEL undoes an ADD that has ended
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        if self.attachment is not None:
            with lock(self.root):
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
            exec_plugin("DEL", plugin, attachment, attachment.result)
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
        with lock(root):
            detach(root, attachment)


def reap_stale(root: Path) -> None:
    with lock(root):
        _reap_stale(root)


def _reap_stale(root: Path) -> None:
    """Detach the containers whose supervisor died without doing it (callers hold the lock)."""
    for attachment in attachments(root):
        if not attachment.alive() and attachment.detachable_here():
            with contextlib.suppress(ContainerError):  # a DEL that fails now fails again next time
                detach(root, attachment)


# -- /etc/hosts of the containers on a network ----------------------------------------------------


def _write_hosts(root: Path, network: Network, joined: Attachment | None = None) -> None:
    """Rewrite the hosts files of the containers on `network`: on a user network each names itself
    and every other container; on the default one only `joined` (if any) is written, with its own
    name. In place: the file is bound into the container, a new inode would not be."""
    if network.resolves_names:
        on_network = [a for a in attachments(root) if a.network == network.name and a.address]
    else:
        on_network = [joined] if joined is not None else []
    for attachment in on_network:
        peers = on_network if network.resolves_names else [attachment]
        lines = [LOCAL_HOSTS]
        for peer in sorted(peers, key=lambda p: p is not attachment):  # itself first
            names = dict.fromkeys([peer.hostname, peer.name, peer.container_id[:12]])
            lines.append(f"{peer.address}\t{' '.join(n for n in names if n)}\n")
        with contextlib.suppress(FileNotFoundError), open(attachment.dir / "hosts", "r+") as f:
            f.write("".join(lines))
            f.truncate()
