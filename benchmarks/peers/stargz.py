"""stargz-snapshotter with containerd as a peer of lazyctr: lazy pulls of eStargz and zstd:chunked images.

Debian packages `ctr-remote` and the stargz Go library but not the `containerd-stargz-grpc` daemon, so
`build_snapshotter(cache)` builds a small one (benchmarks/peers/stargz/main.go: the library's fs and
snapshot packages on containerd's snapshots gRPC API) with Debian's Go, offline (GOPATH=/usr/share/gocode,
GO111MODULE=off), once per source version. It needs the Debian packages golang-go and
golang-github-containerd-stargz-snapshotter-dev; where it cannot be built the reason is returned.

`measure(link, registry_address, image_ref, probe)` puts the image in the registry (`lazyctr serve` in
the link's server namespace) into each format under a tag named after the source's digest, then for
each format, from a cold client (a fresh containerd and snapshotter root, dropped page caches): times
`ctr-remote image rpull` (the lazy pull) and `ctr run --snapshotter stargz --rm IMAGE ID PROBE...` to the
probe's exit, both in the client namespace through `nsenter --net` (so the FUSE and overlay mounts stay
visible to containerd, which runs in the host's mount namespace). Every containerd is our own (root,
state, sockets and opt directory in a temporary directory; the machine's instance is never touched; the
e2e tests run theirs with running_containerd too) and everything is cleaned up: tasks, shims, daemons,
mounts, directories, also when an image fails (measure() then returns the reason in one line).

Converting is what takes time (the measurement of a 160 MB image takes seconds, its conversion a minute
or more, both cores busy), so converted images are kept across suite runs, whose registries are fresh:
in an OCI image layout (`cache`/converted, see ConvertedImages) named by the source manifest's digest,
the format and the ctr-remote binary. Cheapest first: the tag is in the registry already; the image is
in the layout and is pushed from it; otherwise one `ctr content fetch` (no unpacking) into a containerd
of our own, `ctr-remote image convert --oci --estargz` and `--zstdchunked` at once, the results copied
(hard links) from containerd's content store into the layout and pushed from there. All of it in the
server namespace, where the registry listens: set-up, not timed, not over the link.

Usage: python -m benchmarks.peers.stargz [--link 100mbit/20ms] [--runs N] [--probe CMD | --image-command]
IMAGE_DIR_OR_REF... (OCI layouts or rootfs tarballs to import, or images of the lazyctr store at --root),
measured one after the other on one registry and link, as the suite does. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from benchmarks.common import (
    CACHE,
    drop_caches,
    free_port,
    lazyctr,
    received,
    serving,
    stop,
    unmount_under,
    unwind_on_sigterm,
)
from benchmarks.link import Link, LinkError, parse_link_spec, shaped_link_of
from lazyfs.host import mounts

SOURCES = Path(__file__).with_name("stargz")
DEFAULT_CACHE = CACHE / "stargz-peer"
LOGS = Path(tempfile.gettempdir()) / "lazyctr-stargz-logs"  # the daemons' logs of a failed run
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src" / "github.com" / "containerd" / "stargz-snapshotter"
PACKAGES = "golang-go golang-github-containerd-stargz-snapshotter-dev"
BINARY = "stargz-grpc-mini"
NAMESPACE = "lazyctr-bench"
FORMATS = {"estargz": ("--estargz",), "zstdchunked": ("--zstdchunked",)}
# eStargz with a prioritized section: the files of our own recorded profile, in its order, passed as the
# record `ctr-remote image optimize` would write. stargz prefetches that section at mount, as our
# snapshotter prefetches a profile: the like-for-like comparison of the two with workload knowledge.
PROFILED = "estargz+profile"
BUILD_TIMEOUT = 1800  # a first build compiles containerd's and grpc's packages: minutes on 2 cores
TOOL_TIMEOUT = 1800
RUN_TIMEOUT = 600  # an rpull or a run to the probe's exit: a hung one must not hold up the suite for long
START_TIMEOUT = 30.0
REF_NAME = "org.opencontainers.image.ref.name"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
CONTENT = Path("root") / "io.containerd.content.v1.content" / "blobs" / "sha256"  # containerd's blobs


class PeerError(Exception):
    """The peer cannot run or failed; the message (one line) says why."""


# -- the snapshotter daemon ---------------------------------------------------------------------


def _source_key() -> str:
    """Names the binary after its sources and the Go toolchain, so an edit or a new Go rebuilds it."""
    digest = hashlib.sha256()
    for path in sorted(SOURCES.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    version = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=60).stdout
    digest.update(version.encode())
    return digest.hexdigest()[:16]


def build_snapshotter(cache: Path) -> Path | str:
    """The daemon's binary, built once into `cache`; or a one-line reason why it cannot be built here."""
    if shutil.which("go") is None:
        return f"no Go compiler (apt-get install {PACKAGES})"
    if not (LIBRARY / "fs").is_dir() or not (LIBRARY / "snapshot").is_dir():
        return f"no stargz Go library in {LIBRARY} (apt-get install {PACKAGES.split()[1]})"
    binary = cache / f"{BINARY}-{_source_key()}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{binary.name}.{os.getpid()}.partial"
    env = dict(
        os.environ,
        GOPATH=str(GOPATH),
        GO111MODULE="off",  # Debian's Go library tree, no module downloads
        GOFLAGS="",
        GOPROXY="off",
        GOCACHE=str(cache / "go-build"),
    )
    try:
        proc = subprocess.run(
            ["go", "build", "-o", str(partial), "."],
            cwd=SOURCES,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        return f"go build of the stargz snapshotter took more than {BUILD_TIMEOUT} s"
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("#")]
        detail = lines[0].strip() if lines else f"exit status {proc.returncode}"
        return f"go build of the stargz snapshotter failed: {detail}"
    partial.rename(binary)  # atomic: no half-written binary under the final name
    return binary


# -- processes, namespaces, mounts --------------------------------------------------------------


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` in a network namespace only: unlike `ip netns exec`, the mount namespace stays the host's."""
    if netns is None:
        return list(argv)
    return ["nsenter", f"--net=/run/netns/{netns}", *argv]


def _run(
    argv: Sequence[str], what: str, *, timeout: float = TOOL_TIMEOUT, env: dict[str, str] | None = None
) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise PeerError(f"{what} took more than {timeout:g} s") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        # The last lines, not only the last: a program's "see the log" needs the line before it.
        detail = " / ".join(lines[-3:])[-400:] if lines else f"exit status {proc.returncode}"
        raise PeerError(f"{what} failed: {detail}")
    return proc.stdout


def _fuse_mounts_under(base: Path) -> int:
    """How many FUSE mounts (stargz's remote layers) there are below `base`."""
    return sum(m.fstype.startswith("fuse") and Path(m.point).is_relative_to(base) for m in mounts())


def _shims_of(address: Path) -> list[int]:
    """The containerd shims our containerd at `address` started (they outlive it by design)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and str(address).encode() in argv:
            pids.append(int(entry.name))
    return pids


def wait_for_socket(path: Path, proc: subprocess.Popen[Any], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if path.exists():
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            lines = log.read_text(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else f"exit status {proc.poll()}"
            raise PeerError(f"{what} did not come up: {detail}")
        time.sleep(0.05)


class Containerd:
    """A containerd of our own under `base`, optionally with a remote snapshotter (stargz's, or
    lazyctr's) proxied to a socket under the name `snapshotter_name`."""

    def __init__(
        self, base: Path, snapshotter_socket: Path | None = None, snapshotter_name: str = "stargz"
    ) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.snapshotter_socket = snapshotter_socket
        self.snapshotter_name = snapshotter_name
        self.env = dict(os.environ, TMPDIR=str(base / "tmp"))

    def config(self) -> str:
        b = self.base
        text = (
            "version = 2\n"
            f'root = "{b}/root"\n'
            f'state = "{b}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[debug]\n  address = "{b}/debug.sock"\n'
            # Otherwise containerd creates /opt/containerd.
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{b}/opt"\n'
        )
        if self.snapshotter_socket is not None:
            text += (
                f"[proxy_plugins.{self.snapshotter_name}]\n"
                f'  type = "snapshot"\n  address = "{self.snapshotter_socket}"\n'
            )
        return text

    def client(self, tool: str, *args: str) -> list[str]:
        return [tool, "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def run(self, tool: str, *args: str, netns: str | None = None, timeout: float = TOOL_TIMEOUT) -> str:
        argv = in_netns(netns, self.client(tool, *args))
        return _run(
            argv, f"{tool} {args[0]} {args[1]}" if len(args) > 1 else tool, timeout=timeout, env=self.env
        )

    def remove_tasks(self) -> None:
        """Kill and delete what is left of containers (after a timeout): they would hold mounts."""
        for kind, remove in (("tasks", ["tasks", "rm", "-f"]), ("containers", ["containers", "rm"])):
            listed = subprocess.run(
                self.client("ctr", kind, "ls", "-q"), capture_output=True, text=True, timeout=60, env=self.env
            )
            for ident in listed.stdout.split():
                subprocess.run(
                    self.client("ctr", *remove, ident), capture_output=True, timeout=60, env=self.env
                )


@contextlib.contextmanager
def running_containerd(
    base: Path,
    *,
    netns: str | None = None,
    snapshotter_socket: Path | None = None,
    snapshotter_name: str = "stargz",
) -> Iterator[Containerd]:
    """A private containerd, stopped on exit with its tasks and shims, even after an error."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir(exist_ok=True)
    daemon = Containerd(base, snapshotter_socket, snapshotter_name)
    config = base / "config.toml"
    config.write_text(daemon.config())
    log_path = base / "containerd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            in_netns(netns, ["containerd", "--config", str(config)]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=daemon.env,
            start_new_session=True,
        )
    try:
        wait_for_socket(daemon.socket, proc, log_path, "containerd")
        yield daemon
    finally:
        try:
            if proc.poll() is None:
                daemon.remove_tasks()
        finally:
            stop(proc, 15)
            for pid in _shims_of(daemon.socket):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_snapshotter(binary: Path, base: Path, *, netns: str | None = None) -> Iterator[Path]:
    """The stargz snapshotter daemon serving under `base`; yields its socket. On exit it is stopped
    (SIGTERM: it unmounts its layers) and whatever it left mounted is unmounted."""
    base.mkdir(parents=True, exist_ok=True)
    sock = base / "snapshotter.sock"
    log_path = base / "snapshotter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            in_netns(netns, [str(binary), "-address", str(sock), "-root", str(base / "root")]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_socket(sock, proc, log_path, "the stargz snapshotter")
        yield sock
    finally:
        stop(proc, 15)
        unmount_under(base)


# -- measuring ----------------------------------------------------------------------------------


def split_ref(registry_address: str, image_ref: str) -> tuple[str, str]:
    """(repository with the registry, tag) of `image_ref`, given with or without the registry address."""
    ref = image_ref if image_ref.startswith(registry_address + "/") else f"{registry_address}/{image_ref}"
    if "@" in ref:
        raise PeerError(f"image {image_ref!r}: give a tag, not a digest (the converted images get tags)")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = ref.rsplit(":", 1)
        return repository, tag
    return ref, "latest"


_MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


def manifest_digest(link: Link, repository: str, tag: str) -> str | None:
    """The digest of repository:tag's manifest in the registry (asked from the server's namespace), or
    None when the registry does not have it."""
    address, _, path = repository.partition("/")
    host, _, port = address.rpartition(":")

    def ask() -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("GET", f"/v2/{path}/manifests/{tag}", headers={"Accept": _MANIFEST_TYPES})
            response = connection.getresponse()
            return response.status, response.getheader("Docker-Content-Digest") or "", response.read()
        finally:
            connection.close()

    try:
        status, claimed, body = link.in_namespace("server", ask)
    except OSError as error:
        raise PeerError(f"cannot reach the registry at {address}: {error}") from None
    if status == 404:
        return None
    if status != 200:
        raise PeerError(f"the registry answered {status} for the manifest of {repository}:{tag}")
    return claimed or f"sha256:{hashlib.sha256(body).hexdigest()}"


# -- converted images: made once, kept across suite runs, pushed into each fresh registry -----------


@dataclass
class Converted:
    """A converted image in the registry: its ref, and how it got there."""

    ref: str
    how: str  # "now" (converted by this call), "cached" (pushed from the cache), "registry" (already there)
    convert_s: float | None  # the conversion step's wall time (fetch and both formats at once) when "now"
    push_s: float | None  # the push from the cache into the registry; None when "registry"


@functools.cache
def _tool_key(tool: str) -> str:
    """Names converted images after the converter's binary too: a new ctr-remote converts again."""
    path = shutil.which(tool)
    if path is None:
        raise PeerError(f"no {tool}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]


def _blob(directory: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256" or len(encoded) != 64 or not all(c in "0123456789abcdef" for c in encoded):
        raise PeerError(f"unexpected digest {digest!r}")
    return directory / encoded


class ConvertedImages:
    """The converted images kept across suite runs: one OCI image layout at `path`, whose blobs every
    image shares (the suite's images have the same base layer: its eStargz form is stored once), one
    image per (source manifest digest, format, ctr-remote binary), named by that key in index.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blobs = path / "blobs" / "sha256"

    @staticmethod
    def key(source_digest: str, fmt: str) -> str:
        return f"{fmt}-{source_digest.partition(':')[2]}-{_tool_key('ctr-remote')}"

    def _index(self) -> list[dict[str, Any]]:
        try:
            manifests = json.loads((self.path / "index.json").read_text()).get("manifests", [])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, AttributeError) as error:
            raise PeerError(f"unreadable {self.path / 'index.json'}: {error}") from None
        return [m for m in manifests if isinstance(m, dict)]

    def find(self, key: str) -> dict[str, Any] | None:
        """The descriptor of the image named `key`, if it and every blob of it are in the layout."""
        for descriptor in self._index():
            if descriptor.get("annotations", {}).get(REF_NAME) == key:
                try:
                    self.blobs_of(descriptor)
                except PeerError:
                    return None  # a blob went missing: convert again
                return descriptor
        return None

    def blobs_of(self, descriptor: dict[str, Any], content: Path | None = None) -> list[dict[str, Any]]:
        """Every blob of the image below `descriptor` (itself last), each before whatever refers to it:
        the order of a push. Read from `content` (a containerd content store) or the layout."""
        directory = content or self.blobs
        path = _blob(directory, descriptor["digest"])
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as error:
            raise PeerError(f"cannot read {descriptor['digest']} from {directory}: {error}") from None
        blobs: list[dict[str, Any]] = []
        if document.get("mediaType", descriptor.get("mediaType")) in INDEX_TYPES:
            for child in document.get("manifests", []):
                blobs += self.blobs_of(child, content)
        else:
            for leaf in [document["config"], *document.get("layers", [])]:
                if not _blob(directory, leaf["digest"]).is_file():
                    raise PeerError(f"blob {leaf['digest']} is missing from {directory}")
                blobs.append(leaf)
        return [*blobs, descriptor]

    def add(self, key: str, descriptor: dict[str, Any], content: Path) -> None:
        """Copies the image below `descriptor` from the containerd content store `content` (hard links
        where they can be made) and names it `key`. A blob appears under its digest whole or not at all,
        and index.json is replaced atomically, under a lock (two suites may convert at once)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        layout = self.path / "oci-layout"
        if not layout.exists():
            _write_atomically(layout, b'{"imageLayoutVersion": "1.0.0"}\n')
        for blob in self.blobs_of(descriptor, content):
            target = _blob(self.blobs, blob["digest"])
            if target.exists():
                continue
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            try:
                try:
                    os.link(_blob(content, blob["digest"]), partial)
                except OSError:  # another file system: copy
                    shutil.copyfile(_blob(content, blob["digest"]), partial)
                partial.rename(target)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        named = dict(descriptor, annotations={REF_NAME: key})
        with open(self.path / "index.json.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifests = [m for m in self._index() if m.get("annotations", {}).get(REF_NAME) != key]
            index = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": [*manifests, named]}
            _write_atomically(self.path / "index.json", json.dumps(index, indent=1).encode() + b"\n")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.rename(path)


def _registry_error(response: http.client.HTTPResponse, what: str) -> PeerError:
    body = response.read()
    try:
        detail = json.loads(body)["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        detail = body.decode(errors="replace").strip().splitlines()[0] if body.strip() else ""
    return PeerError(f"the registry answered {response.status} to {what}" + (f": {detail}" if detail else ""))


def push_converted(images: ConvertedImages, descriptor: dict[str, Any], repository: str, tag: str) -> None:
    """Pushes the image below `descriptor` from the layout to repository:tag (blobs the repository has
    are skipped), over plain HTTP. Call it in the namespace where the registry listens."""
    address, _, path = repository.partition("/")
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TOOL_TIMEOUT, blocksize=1 << 20)
    try:
        for blob in images.blobs_of(descriptor)[:-1]:
            digest = blob["digest"]
            connection.request("HEAD", f"/v2/{path}/blobs/{digest}")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                continue
            connection.request("POST", f"/v2/{path}/blobs/uploads/", headers={"Content-Length": "0"})
            response = connection.getresponse()
            if response.status != 202:
                raise _registry_error(response, f"the upload of {digest}")
            response.read()
            location = urllib.parse.urlsplit(response.getheader("Location") or "")
            query = f"{location.query}&" if location.query else ""
            target = f"{location.path}?{query}digest={urllib.parse.quote(digest)}"
            blob_path = _blob(images.blobs, digest)
            with open(blob_path, "rb") as body:
                headers = {
                    "Content-Length": str(blob_path.stat().st_size),
                    "Content-Type": "application/octet-stream",
                }
                connection.request("PUT", target, body=body, headers=headers)
                response = connection.getresponse()
            if response.status != 201:
                raise _registry_error(response, f"the upload of {digest}")
            response.read()
        manifest = _blob(images.blobs, descriptor["digest"]).read_bytes()
        headers = {"Content-Type": descriptor["mediaType"], "Content-Length": str(len(manifest))}
        connection.request("PUT", f"/v2/{path}/manifests/{tag}", body=manifest, headers=headers)
        response = connection.getresponse()
        if response.status != 201:
            raise _registry_error(response, f"the manifest of {repository}:{tag}")
        response.read()
    except (OSError, http.client.HTTPException) as error:
        raise PeerError(f"pushing {repository}:{tag} failed: {error}") from None
    finally:
        connection.close()


def _convert(
    base: Path,
    link: Link,
    source: str,
    formats: dict[str, Sequence[str]],
    images: ConvertedImages,
    keys: dict[str, str],
) -> float:
    """Converts `source` into each of `formats` (name: ctr-remote options) and keeps the results in
    `images`; the seconds it took. One fetch without unpacking (`ctr content fetch`: conversion reads
    blobs, not snapshots), then the formats at once: each `ctr-remote image convert` keeps one core busy."""
    netns = link.server_ns
    with running_containerd(base) as containerd:
        started = time.monotonic()
        containerd.run("ctr", "content", "fetch", "--plain-http", source, netns=netns)
        names = list(formats)
        targets = {name: f"{source}-{_tag_safe(name)}-converted" for name in names}
        converters: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        try:
            for name in names:
                errors = base / f"convert-{name}.err"
                argv = containerd.client(
                    "ctr-remote", "image", "convert", "--oci", *formats[name], source, targets[name]
                )
                with open(errors, "wb") as err:
                    converters[name] = (
                        subprocess.Popen(
                            in_netns(netns, argv),
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=err,
                            env=containerd.env,
                        ),
                        errors,
                    )
            deadline = started + TOOL_TIMEOUT
            for name, (proc, errors) in converters.items():
                try:
                    status = proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    raise PeerError(
                        f"ctr-remote image convert {formats[name][0]} took more than {TOOL_TIMEOUT} s"
                    ) from None
                if status != 0:
                    lines = [line.strip() for line in errors.read_text(errors="replace").splitlines()]
                    detail = next((line for line in reversed(lines) if line), f"exit status {status}")
                    raise PeerError(f"ctr-remote image convert {formats[name][0]} failed: {detail}")
        finally:
            for proc, _ in converters.values():
                stop(proc, 5)
        listed = containerd.run("ctr", "images", "ls", netns=netns).splitlines()
        content = base / CONTENT
        for name in names:
            # REF TYPE DIGEST SIZE PLATFORMS LABELS; SIZE is the whole image's, so the manifest's is read.
            row = next((line.split() for line in listed if line.split()[:1] == [targets[name]]), None)
            if row is None or len(row) < 3:
                raise PeerError(f"ctr-remote image convert made no image {targets[name]}")
            media_type, digest = row[1], row[2]
            size = _blob(content, digest).stat().st_size
            images.add(keys[name], {"mediaType": media_type, "digest": digest, "size": size}, content)
        return time.monotonic() - started


def _tag_safe(name: str) -> str:
    return name.replace("+", "-")


def convert(
    base: Path,
    link: Link,
    repository: str,
    tag: str,
    images: ConvertedImages,
    record: Path | None = None,
) -> dict[str, Converted]:
    """repository:tag in each format, in the registry under a tag named after the source's digest.

    Cheapest first: a converted tag already in the registry (a second call on the same registry); an
    image kept in `images` by an earlier suite run, pushed into this registry; otherwise a conversion,
    kept in `images` and pushed. Everything runs in the server's namespace, where the registry listens:
    it is set-up, not measured, and does not cross the shaped link. With a `record` (files in the order a
    workload reads them), eStargz is also converted with those files prioritized (PROFILED), named after
    the record's contents too."""
    formats: dict[str, Sequence[str]] = dict(FORMATS)
    variant = {name: name for name in FORMATS}
    if record is not None:
        formats[PROFILED] = (*FORMATS["estargz"], "--estargz-record-in", str(record))
        record_key = hashlib.sha256(record.read_bytes()).hexdigest()[:12]
        variant[PROFILED] = f"{PROFILED}.{record_key}"
    source = f"{repository}:{tag}"
    digest = manifest_digest(link, repository, tag)
    if digest is None:
        raise PeerError(f"{source} is not in the registry")
    suffix = digest.partition(":")[2][:12]
    keys = {name: images.key(digest, variant[name]) for name in formats}
    tags = {name: f"{tag}-{_tag_safe(variant[name])}-{suffix}" for name in formats}
    result: dict[str, Converted] = {}
    for name in formats:
        if manifest_digest(link, repository, tags[name]) is not None:
            result[name] = Converted(f"{repository}:{tags[name]}", "registry", None, None)
    missing = {n: formats[n] for n in formats if n not in result and images.find(keys[n]) is None}
    convert_s = _convert(base, link, source, missing, images, keys) if missing else None
    for name in formats:
        if name in result:
            continue
        descriptor = images.find(keys[name])
        if descriptor is None:
            raise PeerError(f"the converted {name} image of {source} is not in {images.path}")
        started = time.monotonic()
        link.in_namespace(
            "server", functools.partial(push_converted, images, descriptor, repository, tags[name])
        )
        pushed = time.monotonic() - started
        how = "now" if name in missing else "cached"
        result[name] = Converted(
            f"{repository}:{tags[name]}", how, convert_s if how == "now" else None, pushed
        )
    return result


# -- cold runs ----------------------------------------------------------------------------------


def deploy(
    binary: Path, base: Path, link: Link, ref: str, probe: Sequence[str], run_id: str
) -> dict[str, Any]:
    """One cold lazy pull and run of `ref` to the probe's exit; times in seconds and bytes received."""
    try:
        return _deploy(binary, base, link, ref, probe, run_id)
    except PeerError as error:
        # The daemons' logs outlive the run's directory, for a look at what went wrong.
        kept = LOGS / f"{ref.rpartition('/')[2].replace(':', '_')}-{base.name}"
        kept.mkdir(parents=True, exist_ok=True)
        for log in (base / "snapshotter" / "snapshotter.log", base / "containerd" / "containerd.log"):
            if log.exists():
                shutil.copy(log, kept / log.name)
        log = base / "snapshotter" / "snapshotter.log"
        lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
        problems = [
            line for line in lines if "level=error" in line or "level=fatal" in line or "panic" in line
        ]
        if problems:  # what the daemon said is more telling than containerd's "transport is closing"
            raise PeerError(f"{error}; the snapshotter said: {problems[-1].strip()}") from None
        raise


def _deploy(
    binary: Path, base: Path, link: Link, ref: str, probe: Sequence[str], run_id: str
) -> dict[str, Any]:
    snapshotter = running_snapshotter(binary, base / "snapshotter", netns=link.client_ns)
    return cold_run(snapshotter, "stargz", base, link, ref, probe, run_id)


def cold_run(
    snapshotter: contextlib.AbstractContextManager[Path],
    name: str,
    base: Path,
    link: Link,
    ref: str,
    probe: Sequence[str],
    run_id: str,
) -> dict[str, Any]:
    """One cold `ctr-remote image rpull` and `ctr run` of `ref` to the probe's exit, under a private
    containerd whose snapshotter `name` is `snapshotter` (entered here: it yields its socket, its
    files under `base`/snapshotter); times in seconds and bytes received over the link."""
    netns = link.client_ns
    with (
        snapshotter as sock,
        running_containerd(
            base / "containerd", netns=netns, snapshotter_socket=sock, snapshotter_name=name
        ) as containerd,
    ):
        # `ctr run` gives no /etc/hosts (docker, podman, nerdctl and CRI do): without one, "localhost"
        # does not resolve and servers that listen on it (postgresql) do not start.
        hosts = base / "hosts"
        hosts.write_text(HOSTS)
        drop_caches()
        before = received(link)
        started = time.monotonic()
        containerd.run(
            "ctr-remote",
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            name,
            ref,
            netns=netns,
            timeout=RUN_TIMEOUT,
        )
        pulled = time.monotonic()
        # Remote layers are FUSE mounts of the snapshotter; none means it fell back to a full download.
        remote_layers = _fuse_mounts_under(base / "snapshotter")
        containerd.run(
            "ctr",
            "run",
            "--snapshotter",
            name,
            "--rm",
            "--mount",
            f"type=bind,src={hosts},dst=/etc/hosts,options=rbind:ro",
            ref,
            run_id,
            *probe,
            netns=netns,
            timeout=RUN_TIMEOUT,
        )
        done = time.monotonic()
        fetched = received(link) - before
    return {
        "pull_s": pulled - started,
        "run_s": done - pulled,
        "total_s": done - started,
        "bytes": fetched,
        "remote_layers": remote_layers,
    }


def missing_tools() -> list[str]:
    return [
        tool for tool in ("containerd", "ctr", "ctr-remote", "runc", "nsenter") if shutil.which(tool) is None
    ]


def measure(
    link: Link,
    registry_address: str,
    image_ref: str,
    probe: list[str],
    runs: int = 1,
    *,
    cache: Path = DEFAULT_CACHE,
    converted: Path | None = None,
    record: Sequence[str] = (),
) -> dict[str, Any] | str:
    """{"estargz": {...}, "zstdchunked": {...}} (and "estargz+profile": {...} with a `record`: the paths
    of the files a workload reads, in order, prioritized in that eStargz), or a one-line reason when the
    peer cannot run here (then nothing is left behind: no containerd, shim, snapshotter, mount or
    directory of this call).

    Per format: "pull_s" (rpull), "run_s" (ctr run to the probe's exit), "total_s", "bytes" (received by
    the client from the rpull to the probe's exit; the snapshotter keeps fetching whole layers in the
    background meanwhile, as stargz does by default): medians over `runs` cold runs, each run's figures
    under "samples"; "remote_layers" (the fewest FUSE-mounted layers after an rpull: 0 would mean the
    snapshotter fell back to a full download), "ref" (the converted image), "converted" ("now": converted
    by this call; "cached": kept by an earlier one in `converted`, default `cache`/converted, and pushed;
    "registry": the registry had it), "convert_s" (seconds of the conversion when "now": the fetch and
    both formats at once, so the same figure for both) and "push_s" (from the cache into the registry)."""
    if os.geteuid() != 0:
        return "the stargz peer needs root (containerd, mounts, namespaces)"
    missing = missing_tools()
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if runs < 1:
        return f"runs must be at least 1, not {runs}"
    binary = build_snapshotter(cache)
    if isinstance(binary, str):
        return binary
    images = ConvertedImages(converted or cache / "converted")
    work = Path(tempfile.mkdtemp(prefix="lazyctr-stargz-"))
    try:
        repository, tag = split_ref(registry_address, image_ref)
        record_file = None
        if record:
            record_file = work / "record.json"
            record_file.write_text("".join(json.dumps({"path": path}) + "\n" for path in record))
        refs = convert(work / "convert", link, repository, tag, images, record_file)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in refs}
        for number in range(runs):
            for name, made in refs.items():  # round-robin: a slow phase of the machine hits both formats
                base = work / f"{_tag_safe(name)}-{number}"
                try:
                    samples[name].append(deploy(binary, base, link, made.ref, probe, f"stargz-{number}"))
                finally:
                    unmount_under(base)
                    shutil.rmtree(base, ignore_errors=True)
        result: dict[str, Any] = {}
        for name, runs_of in samples.items():
            made = refs[name]
            result[name] = summary(runs_of)
            result[name].update(
                ref=made.ref, converted=made.how, convert_s=made.convert_s, push_s=made.push_s
            )
        return result
    except PeerError as error:
        return str(error)
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as error:
        # Not foreseen, but one image's failure is a line in the report, not the end of the suite.
        return f"{type(error).__name__}: {error}".splitlines()[0]
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        key: statistics.median(sample[key] for sample in samples) for key in ("pull_s", "run_s", "total_s")
    }
    summary["bytes"] = int(statistics.median(sample["bytes"] for sample in samples))
    summary["remote_layers"] = min(sample["remote_layers"] for sample in samples)
    summary["samples"] = samples
    return summary


# -- command line -------------------------------------------------------------------------------


def publish(source: str, store: Path, storage: Path, name: str) -> None:
    """Puts `source` into the registry storage as `name`: an OCI layout directory or a rootfs tarball is
    imported first; anything else is an image of the lazyctr store `store`."""
    path = Path(source)
    with tempfile.TemporaryDirectory(prefix="lazyctr-stargz-publish-") as tmp:
        if path.is_dir() and (path / "oci-layout").is_file():
            store = Path(tmp)
            lazyctr(store, "import", f"oci:{path}", name, timeout=TOOL_TIMEOUT)
            image = name
        elif path.is_file():
            store = Path(tmp)
            lazyctr(store, "import", str(path), name, timeout=TOOL_TIMEOUT)
            image = name
        elif path.is_dir():
            raise PeerError(f"{source}: a directory but not an OCI layout (no oci-layout file)")
        else:
            image = source
        address = f"127.0.0.1:{free_port()}"
        with serving(storage, address, log=Path(os.devnull)):
            lazyctr(store, "push", image, f"{address}/{name}", timeout=TOOL_TIMEOUT)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad arguments are one line on stderr (argparse would print the usage too)."""
        self.exit(2, f"error: {message}\n")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE_DIR_OR_REF", help="OCI layouts, rootfs tarballs or images"
    )
    parser.add_argument("--link", default="100mbit/20ms", help="rate/RTT[/loss] (default 100mbit/20ms)")
    parser.add_argument("--runs", type=int, default=1, help="cold runs per format (default 1)")
    parser.add_argument("--probe", default="echo hello", help="command that exits 0 when ready")
    parser.add_argument(
        "--image-command", action="store_true", help="run each image's own command instead of --probe"
    )
    parser.add_argument("--root", type=Path, default=Path("/var/lib/lazyctr"), help="lazyctr store of IMAGE")
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the daemon is built and converted images kept",
    )
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any] | str] = {}
    measure_s: dict[str, float] = {}
    try:
        spec = parse_link_spec(args.link)
        try:
            probe = shlex.split(args.probe)
        except ValueError as error:
            raise PeerError(f"bad --probe {args.probe!r}: {error}") from None
        if not probe:
            raise PeerError("--probe is empty")
        if args.image_command:
            probe = []  # `ctr run` without a command runs the image's Entrypoint and Cmd
        if args.runs < 1:
            raise PeerError(f"--runs must be at least 1, not {args.runs}")
        for image in args.images:
            source = Path(image)
            if source.is_dir() and not (source / "oci-layout").is_file():
                raise PeerError(f"{image}: a directory but not an OCI layout (no oci-layout file)")
        if os.geteuid() != 0:
            raise PeerError("needs root (network namespaces, containerd, mounts)")
        unwind_on_sigterm()
        binary = build_snapshotter(args.cache)
        if isinstance(binary, str):
            raise PeerError(binary)
        with tempfile.TemporaryDirectory(prefix="lazyctr-stargz-registry-") as storage:
            names = {image: f"bench/stargz-peer-{number}:1" for number, image in enumerate(args.images)}
            for image, name in names.items():
                publish(image, args.root, Path(storage), name)
            with shaped_link_of(spec) as link:
                link.verify()
                address = f"{link.server_ip}:5000"
                with serving(Path(storage), address, link, log=Path(os.devnull)):
                    for image, name in names.items():  # one registry and link, as in the suite
                        started = time.monotonic()
                        results[image] = measure(link, address, name, probe, args.runs, cache=args.cache)
                        measure_s[image] = time.monotonic() - started
                        _print_result(image, results[image], measure_s[image], first=len(results) == 1)
    except (PeerError, LinkError, RuntimeError) as error:  # RuntimeError: a lazyctr command or server
        print(f"error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if len(args.images) > 1:
        print(f"{len(args.images)} images, measure() took {sum(measure_s.values()):.1f} s in all")
    return 1 if any(isinstance(result, str) for result in results.values()) else 0


def _print_result(image: str, result: dict[str, Any] | str, measure_s: float, *, first: bool) -> None:
    if isinstance(result, str):
        print(f"stargz peer skipped {image}: {result}", file=sys.stderr, flush=True)
        return
    if first:
        print(
            f"{'image':<20} {'format':<12} {'pull s':>7} {'run s':>7} {'total s':>7} {'MB recv':>8}"
            f" {'lazy layers':>11}  {'converted':<9} {'convert s':>9} {'push s':>7} {'measure s':>9}"
        )
    for fmt, figures in result.items():
        print(
            f"{image[-20:]:<20} {fmt:<12} {figures['pull_s']:7.2f} {figures['run_s']:7.2f}"
            f" {figures['total_s']:7.2f} {figures['bytes'] / 1e6:8.2f} {figures['remote_layers']:>11}"
            f"  {figures['converted']:<9} {_seconds(figures['convert_s']):>9}"
            f" {_seconds(figures['push_s']):>7} {measure_s:9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
