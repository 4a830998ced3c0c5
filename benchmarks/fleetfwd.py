"""The fleet's switch: one process that carries the packets of every namespace of the fleet benchmark,
each namespace behind a shaped link (a "port") of its own rate and delay.

benchmarks/link.py joins two namespaces with a TUN device in each and one forwarder process per link
(benchmarks/linkfwd.py). A fleet of 32 nodes that way is 32 Python processes competing for the two
cores with the 32 nodes they serve, each waking per packet; this is the same forwarder turned into a
star: every namespace (the registry, the proxy, each node) gets one TUN device, and this one process
reads a packet from a port, looks up the port of its destination address and lets it cross two
links: out of the sender's link (its token bucket, then its one-way delay) and into the receiver's
(its token bucket, then its one-way delay). So a node's path to the registry has the RTT of the two
links together and the rate of the slower; the registry's link (its uplink) is shared by every node,
as a registry's network is. There is no kernel routing in between and each packet is handled once.

The queue model of each direction of each link is linkfwd's router output port (linkfwd.Bucket): a
drop-tail queue of `queue` bytes before a token bucket of `burst` bytes at `rate` bytes per second (0:
unlimited); the stdin protocol is linkfwd's too (linkfwd.Control).
Packets wait in one heap ordered by the time they are due at their receiver.

Configuration: `--ports JSON`, a list of {"ns": netns path, "ip": dotted IPv4, "rate": bytes/s,
"delay": one-way seconds, "queue": bytes, "burst": bytes}; `--ifname` names the TUN device in each
namespace. stdin: "stats" answers with a JSON line of counters per port on stdout (sent: bytes the
namespace sent into its link; received: bytes delivered to it), end of file ends the process.
Prints "ready" once every device exists; the parent sets their addresses with `ip`.

Usage: python -m benchmarks.fleetfwd --ifname NAME --ports JSON (run by benchmarks/fleet.py).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import select
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.linkfwd import PACKET_MAX, READ_BATCH, Bucket, Control, Timer, open_tun
from runtime import syscalls as sc


@dataclass
class Port:
    """One namespace's link to the switch: its TUN device, both directions and the counters."""

    fd: int
    delay: float
    up: Bucket  # from the namespace into the switch
    down: Bucket  # from the switch to the namespace
    sent_packets: int = 0
    sent_bytes: int = 0
    received_packets: int = 0
    received_bytes: int = 0
    unroutable: int = 0
    write_errors: int = 0

    def stats(self) -> dict[str, Any]:
        return {
            "sent_packets": self.sent_packets,
            "sent_bytes": self.sent_bytes,
            "received_packets": self.received_packets,
            "received_bytes": self.received_bytes,
            "dropped_up": self.up.dropped,
            "dropped_down": self.down.dropped + self.write_errors,
            "unroutable": self.unroutable,
            "peak_queue_up_ms": round(self.up.peak_backlog * 1000, 3),
            "peak_queue_down_ms": round(self.down.peak_backlog * 1000, 3),
        }


def switch(ports: list[Port], by_address: dict[bytes, int]) -> None:
    """Carry packets until stdin ends."""
    timer = Timer()
    control = Control(lambda: {"ports": [port.stats() for port in ports]})
    epoll = select.epoll()
    by_fd = {port.fd: port for port in ports}
    for fd in (*by_fd, timer.fd, control.fd):
        epoll.register(fd, select.EPOLLIN)
    heap: list[tuple[float, int, int, bytes]] = []
    sequence = 0  # ties in due time keep their order, and the heap never compares packets
    read, write, monotonic = os.read, os.write, time.monotonic
    push, pop = heapq.heappush, heapq.heappop
    while True:
        events = epoll.poll()
        now = monotonic()
        for fd, _mask in events:
            source = by_fd.get(fd)
            if source is not None:
                for _ in range(READ_BATCH):
                    try:
                        packet = read(fd, PACKET_MAX)
                    except BlockingIOError:
                        break
                    size = len(packet)
                    source.sent_packets += 1
                    source.sent_bytes += size
                    target = by_address.get(packet[16:20]) if packet[:1] and packet[0] >> 4 == 4 else None
                    if target is None:
                        source.unroutable += 1
                        continue
                    left = source.up.send(size, now)
                    if left < 0:
                        continue
                    destination = ports[target]
                    arrived = destination.down.send(size, left + source.delay)
                    if arrived < 0:
                        continue
                    sequence += 1
                    push(heap, (arrived + destination.delay, sequence, target, packet))
            elif fd == timer.fd:
                timer.clear()
            elif not control.serve():
                return
        now = monotonic()
        while heap and heap[0][0] <= now:
            _, _, target, packet = pop(heap)
            destination = ports[target]
            try:
                write(destination.fd, packet)
            except OSError:  # the receiving stack is full (EAGAIN) or its device is down: lost
                destination.write_errors += 1
                continue
            destination.received_packets += 1
            destination.received_bytes += len(packet)
        timer.arm(heap[0][0] if heap else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ifname", required=True, help="name of the TUN device in every namespace")
    parser.add_argument("--ports", required=True, help="JSON list of {ns, ip, rate, delay, queue, burst}")
    args = parser.parse_args()
    specs = json.loads(args.ports)
    ports: list[Port] = []
    by_address: dict[bytes, int] = {}
    with open("/proc/self/ns/net", "rb") as home:
        for index, spec in enumerate(specs):
            fd = open_tun(spec["ns"], args.ifname)
            up = Bucket(float(spec["rate"]), int(spec["queue"]), int(spec["burst"]))
            down = Bucket(float(spec["rate"]), int(spec["queue"]), int(spec["burst"]))
            ports.append(Port(fd, float(spec["delay"]), up, down))
            by_address[socket.inet_aton(spec["ip"])] = index
        sc.setns(home.fileno(), sc.CLONE_NEWNET)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        switch(ports, by_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
