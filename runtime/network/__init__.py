"""Container networks: bridge networks through the CNI plugins Debian ships, as podman 3/4 runs them.

A network is a CNI conflist, `<root>/networks/<name>.conflist` (podman keeps its own in
/etc/cni/net.d): the `bridge` plugin (a Linux bridge, a veth per container, the gateway) with
`host-local` addresses (its leases under `<root>/networks/ipam/`), then `portmap` (published ports,
DNAT). NAT for outbound traffic and the FORWARD rules a DROP policy needs are the network's own, one
set per network as docker's and netavark's (`nat`), not the bridge plugin's `ipMasq` and the
`firewall` plugin's one set per container: those cost ~60-90 ms of iptables at every start. The
default network `bridge` is written on first use; `network create` adds user networks.

A container on a network gets a network namespace of its own, bind-mounted at
`containers/<id>/netns` before its PID 1 is forked (so that the plugins' DEL finds its interface
and addresses even after the container ended), and PID 1 joins it. The plugins are exec'd with the
CNI environment protocol (CNI_COMMAND, CNI_NETNS... and the config on stdin) while PID 1 prepares
its root file system and is moved into its cgroup, so part of their cost hides behind it. What was
attached is recorded in `containers/<id>/network.json` (the exact config each plugin got, and its
result) before the first plugin runs, so DEL can undo it whoever runs it: the supervisor when the
container ends, `rm`, or the next `run` or `network` command when the supervisor died.

Names: containers on a user network find each other through /etc/hosts: every attached container's
hosts file (bound into it) is rewritten in place, under a lock, when a container joins or leaves. No
resolver process runs (podman's dnsname needs dnsmasq, docker runs one in its daemon), nothing costs
at start but a few small writes, and every libc and busybox reads /etc/hosts. The default network
does not do it, as docker's does not.

The loopback plugin is not exec'd: PID 1 brings `lo` up itself (runtime/container.py), for free.

The package: `networks` (the conflists: create, find, remove), `nat` (a network's iptables rules),
`ports` (`-p`), `attachments` (what `network.json` records), `cni` (exec'ing a plugin), `sandbox` (a
container's run on a network: namespace, ADD, DEL, hosts files, and the clean-up after crashed
supervisors).
"""
