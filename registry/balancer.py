"""A load balancer in front of registry replicas: HAProxy's configuration, and HAProxy run until a block ends.

Replicas are `lazyctr serve` processes on one shared S3 bucket (`--s3`, `--s3-bucket`): every
piece of state (blobs, links, tags, upload parts) is in the bucket, so any replica answers any
request, an upload included whose earlier chunks went to another one.

Why HAProxy (Debian's `haproxy`) rather than nginx: it streams request bodies to the replica as
they arrive (nginx buffers each one to its own disk first, and caps them at 1 MiB unless told
otherwise), it checks its backends actively (open-source nginx only notices a dead one when a
client's request fails on it), and a request that could not connect to a replica (one that died)
goes to another at once (`option redispatch`). A request already under way on a replica that
dies is answered 502: the client sends it again (registry.client's transport does) and, for an
upload, carries on from where the upload stands, which every replica reads from the bucket.

Requests are spread by their path on a consistent hash: a blob (`/v2/<name>/blobs/<digest>`) is
served by one replica, so only that one fills its cache of whole blobs from the bucket and the
replicas' caches add up rather than each holding the same blobs; an upload's chunks go to one
replica while it lives. `hash-balance-factor`: a replica with half again the average number of
requests under way passes new ones on to the next, so one hot blob does not pin every client to
one replica. A replica that dies has its share of paths moved to the others, nothing else.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

STARTUP_TIMEOUT = 10.0
UP_PATH = "/balancer/up"
CHECK_INTERVAL_MS = 500  # how often HAProxy asks each replica for /v2/


def haproxy_binary() -> str | None:
    """Where `haproxy` is: Debian puts it in /usr/sbin, which a user's PATH may not hold."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


def haproxy_config(backends: Sequence[str], port: int, host: str = "127.0.0.1") -> str:
    """An HAProxy configuration listening on host:port in front of `backends` (HOST:PORT each)."""
    if not backends:
        raise ValueError("a balancer needs at least one backend")
    servers = "\n".join(
        f"    server replica{i} {backend} check inter {CHECK_INTERVAL_MS} fall 2 rise 1"
        for i, backend in enumerate(backends)
    )
    return f"""\
global
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    # A request that cannot connect (its replica died) is sent to another replica at once.
    retries 3
    option redispatch 1
    timeout connect 2s
    # Long enough for a large blob on a slow link; a dead replica is found by the checks instead.
    timeout client 10m
    timeout server 10m
    timeout http-request 1m

frontend registry
    bind {host}:{port}
    # HAProxy answers this itself (200): it is up, whatever the replicas are doing.
    monitor-uri {UP_PATH}
    default_backend replicas

backend replicas
    balance uri
    hash-type consistent
    hash-balance-factor 150
    # /v2/ answers 200, or 401 on a registry that asks for credentials: both mean it is up.
    option httpchk GET /v2/
    http-check expect rstatus ^(200|401)$
{servers}
"""


def _answers(address: str) -> bool:
    """Whether HAProxy itself answers on `address` (not merely something listening there)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=1)  # never through a proxy
    try:
        connection.request("GET", UP_PATH)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def running_haproxy(backends: Sequence[str], port: int, directory: Path) -> Iterator[str]:
    """HAProxy in front of `backends` on 127.0.0.1:port until the block ends; yields its HOST:PORT.

    Its configuration and log are kept in `directory`. RuntimeError if it is not installed or
    does not start.
    """
    haproxy = haproxy_binary()
    if haproxy is None:
        raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(backends, port))
    log = (directory / "haproxy.log").open("wb")
    # -db: stay in the foreground, so stopping this process stops HAProxy.
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers(address):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                lines = (directory / "haproxy.log").read_text(errors="replace").strip().splitlines()
                why = [line for line in lines if "[ALERT]" in line] or lines[-3:] or ["no output"]
                raise RuntimeError(f"haproxy did not start on {address}: {' | '.join(why)}")
            time.sleep(0.02)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
