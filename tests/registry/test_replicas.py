"""Registry replicas: `lazyctr serve` processes on one SeaweedFS bucket, behind a real HAProxy.

Any replica answers any request: an upload whose chunks go to different replicas, a tag moved
on one and read on another at once, the same referrers everywhere, and a replica killed
(SIGKILL) half way through a chunked upload loses none of what it had acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registry.balancer import haproxy_binary, haproxy_config, running_haproxy
from registry.client.api import CHUNK_SIZE, RegistryClient
from tests.conftest import CliRunner, cli_command, unavailable
from tests.lazyctr.test_cli_push_pull import busybox_file
from tests.registry.conftest import Reply, sha256
from tests.registry.seaweedfs import ACCESS_KEY, SECRET_KEY, distinct_free_ports, new_bucket

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def request(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@dataclass
class Replica:
    """A `lazyctr serve` process on the shared bucket, its access log (JSON lines) in a file."""

    address: str
    process: subprocess.Popen[bytes]
    log: Path
    stopped: bool = field(default=False)

    def requests(self, method: str) -> list[str]:
        """The paths of the requests with `method` this replica has answered so far."""
        lines = self.log.read_text().splitlines()
        return [entry["path"] for entry in map(json.loads, lines) if entry["method"] == method]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.stopped = True


def start_replica(root: Path, port: int, endpoint: str, bucket: str) -> Replica:
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # Each replica has its own root: its cache of whole blobs is its own.
    argv = cli_command(root, "serve", "--addr", address, "--s3", endpoint, "--s3-bucket", bucket)
    root.mkdir(parents=True)
    log = root / "access.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*argv, "--log-format", "json"], stdout=out, env=env)
    return Replica(address, process, log)


def wait_until_up(replica: Replica) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{replica.address}/v2/", timeout=1):
                return
        except (OSError, urllib.error.HTTPError):
            assert replica.process.poll() is None, "lazyctr serve exited"
            assert time.monotonic() < deadline, "lazyctr serve never answered"
            time.sleep(0.05)


@dataclass
class Cluster:
    replicas: list[Replica]
    balancer: str  # HOST:PORT of HAProxy in front of them


@contextlib.contextmanager
def cluster(directory: Path, endpoint: str, count: int = 2) -> Iterator[Cluster]:
    """`count` replicas on a fresh bucket, and HAProxy in front of them, until the block ends."""
    if haproxy_binary() is None:
        unavailable("no haproxy (Debian: apt-get install haproxy)")
    bucket = new_bucket(endpoint, "lzr-replicas")
    replicas: list[Replica] = []
    *ports, balancer_port = distinct_free_ports(count + 1)
    try:
        for i, port in enumerate(ports):  # started together, waited for together: each takes a second
            replicas.append(start_replica(directory / f"replica{i}", port, endpoint, bucket))
        for replica in replicas:
            wait_until_up(replica)
        backends = [replica.address for replica in replicas]
        with running_haproxy(backends, balancer_port, directory / "haproxy") as balancer:
            yield Cluster(replicas, balancer)
    finally:
        for replica in replicas:
            if not replica.stopped:
                replica.process.send_signal(signal.SIGTERM)
        for replica in replicas:
            if not replica.stopped:
                assert replica.process.wait(timeout=15) == 0


@pytest.fixture(scope="module")
def replicas(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas and their balancer, shared by the module's tests (each on its own repository)."""
    with cluster(tmp_path_factory.mktemp("lzr-replicas"), s3_endpoint) as running:
        yield running


def push_blob(address: str, name: str, data: bytes) -> str:
    digest = sha256(data)
    reply = request(address, "POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data)
    assert reply.status == 201, reply
    return digest


def push_manifest(address: str, name: str, reference: str, doc: dict[str, Any]) -> str:
    reply = request(address, "PUT", f"/v2/{name}/manifests/{reference}", json.dumps(doc).encode(),
                    {"Content-Type": MANIFEST})  # fmt: skip
    assert reply.status == 201, reply
    return str(reply.headers["Docker-Content-Digest"])


def image(address: str, name: str, layer: bytes, subject: str | None = None) -> dict[str, Any]:
    """A manifest of one layer whose blobs are pushed to `name` through `address`."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "layer": sha256(layer)}).encode()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": push_blob(address, name, config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": push_blob(address, name, layer), "size": len(layer)}],
    }
    if subject is not None:
        doc["artifactType"] = "application/vnd.example.sbom"
        doc["subject"] = {"mediaType": MANIFEST, "digest": subject, "size": 1}
    return doc


def start_upload(address: str, name: str) -> str:
    reply = request(address, "POST", f"/v2/{name}/blobs/uploads/")
    assert reply.status == 202, reply
    return str(reply.headers["Location"])


def patch(address: str, location: str, data: bytes, offset: int) -> Reply:
    headers = {
        "Content-Range": f"{offset}-{offset + len(data) - 1}",
        "Content-Type": "application/octet-stream",
    }
    return request(address, "PATCH", location, data, headers)


def test_pushed_through_one_replica_pulled_through_the_other_and_the_balancer(
    replicas: Cluster, lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path
) -> None:
    a, b = replicas.replicas
    layer = os.urandom(200_000)
    digest = push_manifest(a.address, "team/app", "v1", image(a.address, "team/app", layer))
    for address in (b.address, replicas.balancer):
        got = request(address, "GET", "/v2/team/app/manifests/v1")
        assert (got.status, got.headers["Docker-Content-Digest"]) == (200, digest)
        pulled = request(address, "GET", f"/v2/team/app/blobs/{sha256(layer)}")
        assert (pulled.status, pulled.body) == (200, layer)
        ranged = request(
            address, "GET", f"/v2/team/app/blobs/{sha256(layer)}", headers={"Range": "bytes=5-9"}
        )
        assert (ranged.status, ranged.body) == (206, layer[5:10])
    # The real command line: pushed through A; pulled through B, and through the balancer, by two
    # other nodes (roots of their own).
    image_id = lazyctr("import", str(busybox_tar), "busybox").out.strip()
    lazyctr("tag", "busybox", f"{a.address}/test/busybox:latest")
    lazyctr("push", f"{a.address}/test/busybox:latest")
    for node, address in (("node-b", b.address), ("node-balanced", replicas.balancer)):
        argv = cli_command(tmp_path / node, "pull", f"{address}/test/busybox:latest")
        pulled = subprocess.run(argv, capture_output=True, timeout=120)
        assert (pulled.returncode, pulled.stdout.decode().strip()) == (0, image_id), pulled.stderr


def test_a_chunked_upload_goes_on_on_whichever_replica_gets_each_chunk(replicas: Cluster) -> None:
    a, b = replicas.replicas
    data = os.urandom(300_000)
    chunks = [data[i : i + 70_000] for i in range(0, len(data), 70_000)]
    location = start_upload(a.address, "team/chunked")
    offset = 0
    for i, chunk in enumerate(chunks[:-1]):
        reply = patch((a, b)[(i + 1) % 2].address, location, chunk, offset)  # B, A, B, A
        offset += len(chunk)
        assert (reply.status, reply.headers["Range"]) == (202, f"0-{offset - 1}")
        for replica in (a, b):  # each sees the upload stand where the last chunk left it
            status = request(replica.address, "GET", location)
            assert (status.status, status.headers["Range"]) == (204, f"0-{offset - 1}")
    last = chunks[-1]
    headers = {"Content-Range": f"{offset}-{len(data) - 1}"}
    finished = request(b.address, "PUT", f"{location}?digest={sha256(data)}", last, headers)
    assert finished.status == 201, finished
    assert request(a.address, "GET", f"/v2/team/chunked/blobs/{sha256(data)}").body == data
    assert request(a.address, "GET", location).status == 404  # the upload is gone, for both
    assert request(b.address, "GET", location).status == 404

    # Through the balancer, one chunk at a time: the same, on whichever replica it picks.
    location = start_upload(replicas.balancer, "team/balanced")
    offset = 0
    for chunk in chunks:
        assert patch(replicas.balancer, location, chunk, offset).status == 202
        offset += len(chunk)
    assert request(replicas.balancer, "PUT", f"{location}?digest={sha256(data)}").status == 201
    assert request(replicas.balancer, "GET", f"/v2/team/balanced/blobs/{sha256(data)}").body == data


def test_a_tag_moved_on_one_replica_is_seen_on_the_other_at_once(replicas: Cluster) -> None:
    a, b = replicas.replicas
    first = push_manifest(a.address, "team/tags", "latest", image(a.address, "team/tags", b"one"))
    assert (
        request(b.address, "GET", "/v2/team/tags/manifests/latest").headers["Docker-Content-Digest"] == first
    )
    second = push_manifest(b.address, "team/tags", "latest", image(b.address, "team/tags", b"two"))
    for replica in (a, b):  # the very next request, on either replica, sees the move
        got = request(replica.address, "GET", "/v2/team/tags/manifests/latest")
        assert got.headers["Docker-Content-Digest"] == second
    push_manifest(a.address, "team/tags", "stable", image(a.address, "team/tags", b"one"))
    assert request(b.address, "GET", "/v2/team/tags/tags/list").json()["tags"] == ["latest", "stable"]
    assert request(a.address, "DELETE", "/v2/team/tags/manifests/stable").status == 202
    assert request(b.address, "GET", "/v2/team/tags/manifests/stable").status == 404
    assert request(b.address, "GET", "/v2/team/tags/tags/list").json()["tags"] == ["latest"]


def test_referrers_agree_across_replicas(replicas: Cluster) -> None:
    a, b = replicas.replicas
    subject = push_manifest(a.address, "team/refs", "v1", image(a.address, "team/refs", b"subject"))
    sbom = push_manifest(a.address, "team/refs", "sbom1", image(a.address, "team/refs", b"sbom1", subject))

    def referrers(replica: Replica) -> list[str]:
        index = request(replica.address, "GET", f"/v2/team/refs/referrers/{subject}").json()
        return sorted(m["digest"] for m in index["manifests"])

    assert referrers(a) == referrers(b) == [sbom]
    other = push_manifest(b.address, "team/refs", "sbom2", image(b.address, "team/refs", b"sbom2", subject))
    assert referrers(a) == referrers(b) == sorted([sbom, other])
    assert request(b.address, "DELETE", f"/v2/team/refs/manifests/{sbom}").status == 202
    assert referrers(a) == referrers(b) == [other]


def send_half_then_stall(address: str, location: str, data: bytes, offset: int) -> socket.socket:
    """A PATCH of `data` whose body stops half way: the replica is busy receiving it."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: {offset}-{offset + len(data) - 1}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data[: len(data) // 2])
    return sock


def test_a_replica_killed_mid_upload_loses_nothing_it_acknowledged(s3_endpoint: str, tmp_path: Path) -> None:
    with cluster(tmp_path, s3_endpoint) as running:
        a, _ = running.replicas
        # Acknowledged by A before it dies: a whole blob, a manifest, and the first chunk of an upload.
        doc = image(a.address, "team/kill", os.urandom(50_000))
        manifest = push_manifest(a.address, "team/kill", "v1", doc)
        data = os.urandom(3 << 20)
        first, second, rest = data[: 1 << 20], data[1 << 20 : 2 << 20], data[2 << 20 :]
        location = start_upload(a.address, "team/kill")
        assert patch(a.address, location, first, 0).status == 202
        stalled = send_half_then_stall(a.address, location, second, len(first))
        time.sleep(0.3)  # A has the second chunk's headers and half its body, and waits for more
        a.kill()
        stalled.close()

        # The balancer sends everything to the survivor; the upload stands after the first chunk.
        status = request(running.balancer, "GET", location)
        assert (status.status, status.headers["Range"]) == (204, f"0-{len(first) - 1}")
        got = request(running.balancer, "GET", "/v2/team/kill/manifests/v1")
        assert (got.status, got.headers["Docker-Content-Digest"]) == (200, manifest)
        for blob in (doc["config"], *doc["layers"]):
            pulled = request(running.balancer, "GET", f"/v2/team/kill/blobs/{blob['digest']}")
            assert pulled.status == 200 and sha256(pulled.body) == blob["digest"]
        # The client carries on from there through the balancer, and the blob comes out whole.
        assert patch(running.balancer, location, second, len(first)).status == 202
        headers = {"Content-Range": f"{len(data) - len(rest)}-{len(data) - 1}"}
        finished = request(running.balancer, "PUT", f"{location}?digest={sha256(data)}", rest, headers)
        assert finished.status == 201, finished
        pulled = request(running.balancer, "GET", f"/v2/team/kill/blobs/{sha256(data)}")
        assert hashlib.sha256(pulled.body).hexdigest() == sha256(data).split(":")[1]


def test_the_balancer_config_names_each_replica_and_checks_it() -> None:
    config = haproxy_config(["127.0.0.1:5001", "127.0.0.1:5002"], 5000)
    assert "bind 127.0.0.1:5000" in config
    assert "server replica0 127.0.0.1:5001 check" in config
    assert "server replica1 127.0.0.1:5002 check" in config
    assert "option httpchk GET /v2/" in config
    with pytest.raises(ValueError, match="at least one backend"):
        haproxy_config([], 5000)


def client_upload(address: str, name: str, location: str, path: Path) -> None:
    """Our client sends the blob at `path` into the session at `location`, through `address`."""

    async def upload() -> None:
        async with RegistryClient(address) as client:
            session = client.transport.resolve(location)
            await client.upload(name, session, sha256(path.read_bytes()), path)

    asyncio.run(upload())


def test_the_client_goes_on_from_where_the_upload_stands_after_a_lost_answer(
    replicas: Cluster, tmp_path: Path
) -> None:
    a, _ = replicas.replicas
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(CHUNK_SIZE + 100_000))
    data = path.read_bytes()
    # The first chunk reached replica A, whose answer never came back: the client sends it again.
    location = start_upload(replicas.balancer, "team/lost")
    assert patch(a.address, location, data[:CHUNK_SIZE], 0).status == 202
    client_upload(replicas.balancer, "team/lost", location, path)  # 416, then on from CHUNK_SIZE
    assert request(replicas.balancer, "GET", f"/v2/team/lost/blobs/{sha256(data)}").body == data


@pytest.mark.parametrize("lost", ["finished", "appended"])
def test_the_client_recovers_a_whole_blob_put_whose_answer_was_lost(
    replicas: Cluster, tmp_path: Path, lost: str
) -> None:
    a, _ = replicas.replicas
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(100_000))
    data, digest = path.read_bytes(), sha256(path.read_bytes())
    location = start_upload(replicas.balancer, f"team/{lost}")
    if lost == "finished":  # the PUT went through on A: the session is gone, the blob is there
        assert request(a.address, "PUT", f"{location}?digest={digest}", data).status == 201
    else:  # A appended the body and died verifying it: sent again, the upload holds it twice
        assert patch(a.address, location, data, 0).status == 202
    client_upload(replicas.balancer, f"team/{lost}", location, path)
    assert request(replicas.balancer, "GET", f"/v2/team/{lost}/blobs/{digest}").body == data


def layer_tarball(path: Path, size: int) -> None:
    """A root file system tarball holding one file of `size` random bytes (it does not compress)."""
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("data/random")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))


@pytest.mark.extended  # 10 to 20 s: a 33 MiB image pushed and pulled
def test_lazyctr_push_goes_on_when_a_replica_is_killed_under_it(
    s3_endpoint: str, tmp_path: Path, lazyctr: CliRunner, root: Path
) -> None:
    tarball = tmp_path / "big.tar"
    layer_tarball(tarball, 2 * CHUNK_SIZE + (1 << 20))  # three PATCH chunks
    lazyctr("import", str(tarball), "big")
    with cluster(tmp_path / "cluster", s3_endpoint) as running:
        target = f"{running.balancer}/team/big:latest"
        lazyctr("tag", "big", target)
        push = subprocess.Popen(
            cli_command(root, "push", target), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        # Kill the replica that took the first chunk, as soon as it has answered it.
        deadline = time.monotonic() + 60
        victim = None
        while victim is None:
            assert push.poll() is None and time.monotonic() < deadline, push.communicate()
            victim = next((r for r in running.replicas if r.requests("PATCH")), None)
            time.sleep(0.02)
        victim.kill()
        out, err = push.communicate(timeout=120)
        assert push.returncode == 0, err.decode()
        assert out.decode().splitlines()[-1].startswith("manifest sha256:")
        lazyctr("rmi", target)
        lazyctr("gc")
        lazyctr("pull", target)
        assert lazyctr("cat", target, "/data/random").stdout == busybox_file(tarball, "data/random")


def test_a_balancer_that_cannot_start_says_why(tmp_path: Path) -> None:
    if haproxy_binary() is None:
        unavailable("no haproxy (Debian: apt-get install haproxy)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = pytest.raises(RuntimeError, match=f"did not start on 127.0.0.1:{port}: .*cannot bind")
        with refused, running_haproxy(["127.0.0.1:1"], port, tmp_path / "haproxy"):
            pass
