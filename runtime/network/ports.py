"""Published ports: `-p [IP:]HOST:CONTAINER[/tcp|/udp]` parsed, and the host ports held while a
container runs."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from runtime.process import ContainerError


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
