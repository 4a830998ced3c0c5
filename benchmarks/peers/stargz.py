"""stargz-snapshotter with containerd as a peer of lazyctr: lazy pulls of eStargz and zstd:chunked images.

Debian packages `ctr-remote` and the stargz Go library but not the `containerd-stargz-grpc` daemon, so
`build_snapshotter(cache)` builds a small one (benchmarks/peers/stargz/main.go: the library's fs and
snapshot packages on containerd's snapshots gRPC API) with Debian's Go, offline (GOPATH=/usr/share/gocode,
GO111MODULE=off), once per source version. It needs the Debian packages golang-go and
golang-github-containerd-stargz-snapshotter-dev; where it cannot be built the reason is returned.

`measure(link, registry_address, image_ref, probe)` converts the image in the registry (`lazyctr serve`
in the link's server namespace) with `ctr-remote image convert --oci --estargz` and `--zstdchunked`,
pushes both under new tags named after the source's digest (in the server namespace: the conversion is
not timed and does not cross the link; a later call finds the tags and skips it), then for each format,
from a cold client (a fresh containerd and snapshotter root, dropped page caches): times `ctr-remote
image rpull` (the lazy pull) and `ctr run --snapshotter stargz --rm IMAGE ID PROBE...` to the probe's
exit, both in the client namespace through `nsenter --net` (so the FUSE and overlay mounts stay visible
to containerd, which runs in the host's mount namespace). Every containerd is our own (root, state,
sockets and opt directory in a temporary directory; the machine's instance is never touched) and
everything is cleaned up: tasks, shims, daemons, mounts, directories.

Usage: python -m benchmarks.peers.stargz [--link 100mbit/20ms] [--runs N] [--probe CMD] IMAGE_DIR_OR_REF
(an OCI layout or rootfs tarball to import, or an image of the lazyctr store at --root). Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from benchmarks.link import IFNAME, Link, LinkError, parse_link_spec, shaped_link_of

REPO = Path(__file__).resolve().parents[2]
SOURCES = Path(__file__).with_name("stargz")
DEFAULT_CACHE = REPO / ".cache" / "stargz-peer"
LOGS = Path(tempfile.gettempdir()) / "lazyctr-stargz-logs"  # the daemons' logs of a failed run
GOPATH = Path("/usr/share/gocode")
LIBRARY = GOPATH / "src" / "github.com" / "containerd" / "stargz-snapshotter"
PACKAGES = "golang-go golang-github-containerd-stargz-snapshotter-dev"
BINARY = "stargz-grpc-mini"
NAMESPACE = "lazyctr-bench"
FORMATS = {"estargz": "--estargz", "zstdchunked": "--zstdchunked"}
BUILD_TIMEOUT = 1800  # a first build compiles containerd's and grpc's packages: minutes on 2 cores
TOOL_TIMEOUT = 1800
START_TIMEOUT = 30.0


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


def _in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
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
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise PeerError(f"{what} failed: {detail}")
    return proc.stdout


def _mounts_under(base: Path) -> list[str]:
    """Mount points at or below `base`, deepest (last mounted) first, from this mount namespace."""
    points = []
    prefix = str(base).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(base) or point.startswith(prefix):
            points.append(point)
    return points[::-1]


def _unmount_all(base: Path) -> None:
    # Lazy unmounts: a FUSE mount whose daemon died would hang a plain umount.
    for point in _mounts_under(base):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)


def _fuse_mounts_under(base: Path) -> int:
    """How many FUSE mounts (stargz's remote layers) there are below `base`."""
    prefix = str(base).rstrip("/") + "/"
    count = 0
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype.startswith("fuse") and fields[4].startswith(prefix):
            count += 1
    return count


def _stop(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def _wait_for_socket(path: Path, proc: subprocess.Popen[Any], log: Path, what: str) -> None:
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
    """A containerd of our own under `base`, optionally with the stargz snapshotter proxied to a socket."""

    def __init__(self, base: Path, snapshotter_socket: Path | None = None) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.snapshotter_socket = snapshotter_socket
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
            text += f'[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "{self.snapshotter_socket}"\n'
        return text

    def client(self, tool: str, *args: str) -> list[str]:
        return [tool, "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def run(self, tool: str, *args: str, netns: str | None = None, timeout: float = TOOL_TIMEOUT) -> str:
        argv = _in_netns(netns, self.client(tool, *args))
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
    base: Path, *, netns: str | None = None, snapshotter_socket: Path | None = None
) -> Iterator[Containerd]:
    """A private containerd, stopped on exit with its tasks and shims, even after an error."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "tmp").mkdir(exist_ok=True)
    daemon = Containerd(base, snapshotter_socket)
    config = base / "config.toml"
    config.write_text(daemon.config())
    log_path = base / "containerd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _in_netns(netns, ["containerd", "--config", str(config)]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=daemon.env,
            start_new_session=True,
        )
    try:
        _wait_for_socket(daemon.socket, proc, log_path, "containerd")
        yield daemon
    finally:
        try:
            if proc.poll() is None:
                daemon.remove_tasks()
        finally:
            _stop(proc)
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
            _in_netns(netns, [str(binary), "-address", str(sock), "-root", str(base / "root")]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_socket(sock, proc, log_path, "the stargz snapshotter")
        yield sock
    finally:
        _stop(proc)
        _unmount_all(base)


# -- measuring ----------------------------------------------------------------------------------


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _received(netns: str) -> int:
    """Bytes the client's end of the link has received so far."""
    out = _run(["nsenter", f"--net=/run/netns/{netns}", "cat", "/proc/net/dev"], "reading /proc/net/dev")
    for line in out.splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == IFNAME:
            return int(counters.split()[0])
    raise PeerError(f"no {IFNAME} in the client namespace")


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


def convert(
    containerd_base: Path, link: Link, repository: str, tag: str
) -> dict[str, tuple[str, float | None]]:
    """The ref of repository:tag in each format, with the seconds its conversion and push took.

    A converted tag carries the source manifest's digest, so a later call (the next run of the suite)
    finds it in the registry and reuses it (seconds None) instead of converting again. The ctr-remote
    clients run in the server's namespace, where the registry listens: the conversion does not cross
    the shaped link (it is set-up, not measured)."""
    source = f"{repository}:{tag}"
    digest = manifest_digest(link, repository, tag)
    if digest is None:
        raise PeerError(f"{source} is not in the registry")
    suffix = digest.partition(":")[2][:12]
    refs: dict[str, tuple[str, float | None]] = {}
    for name in FORMATS:
        target_tag = f"{tag}-{name}-{suffix}"
        if manifest_digest(link, repository, target_tag) is not None:
            refs[name] = (f"{repository}:{target_tag}", None)
    if len(refs) == len(FORMATS):
        return refs
    netns = link.server_ns
    with running_containerd(containerd_base) as containerd:
        started = time.monotonic()
        containerd.run("ctr-remote", "image", "pull", "--plain-http", source, netns=netns)
        pulled = time.monotonic() - started
        for name, flag in FORMATS.items():
            if name in refs:
                continue
            target = f"{repository}:{tag}-{name}-{suffix}"
            started = time.monotonic()
            containerd.run("ctr-remote", "image", "convert", "--oci", flag, source, target, netns=netns)
            containerd.run("ctr-remote", "image", "push", "--plain-http", target, netns=netns)
            refs[name] = (target, pulled + time.monotonic() - started)
    return refs


def deploy(
    binary: Path, base: Path, link: Link, ref: str, probe: Sequence[str], run_id: str
) -> dict[str, Any]:
    """One cold lazy pull and run of `ref` to the probe's exit; times in seconds and bytes received."""
    netns = link.client_ns
    try:
        return _deploy(binary, base, netns, ref, probe, run_id)
    except PeerError as error:
        # The daemons' logs outlive the run's directory, for a look at what went wrong.
        kept = LOGS / base.name
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
    binary: Path, base: Path, netns: str, ref: str, probe: Sequence[str], run_id: str
) -> dict[str, Any]:
    with (
        running_snapshotter(binary, base / "snapshotter", netns=netns) as sock,
        running_containerd(base / "containerd", netns=netns, snapshotter_socket=sock) as containerd,
    ):
        _drop_caches()
        before = _received(netns)
        started = time.monotonic()
        containerd.run(
            "ctr-remote", "image", "rpull", "--plain-http", "--snapshotter", "stargz", ref, netns=netns
        )
        pulled = time.monotonic()
        # Remote layers are FUSE mounts of the snapshotter; none means it fell back to a full download.
        remote_layers = _fuse_mounts_under(base / "snapshotter")
        containerd.run("ctr", "run", "--snapshotter", "stargz", "--rm", ref, run_id, *probe, netns=netns)
        done = time.monotonic()
        fetched = _received(netns) - before
    return {
        "pull_s": pulled - started,
        "run_s": done - pulled,
        "total_s": done - started,
        "bytes": fetched,
        "remote_layers": remote_layers,
    }


def _missing_tools() -> list[str]:
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
) -> dict[str, Any] | str:
    """{"estargz": {...}, "zstdchunked": {...}}, or a one-line reason when the peer cannot run here.

    Per format: "pull_s" (rpull), "run_s" (ctr run to the probe's exit), "total_s", "bytes" (received by
    the client from the rpull to the probe's exit; the snapshotter keeps fetching whole layers in the
    background meanwhile, as stargz does by default): medians over `runs` cold runs, each run's figures
    under "samples"; "remote_layers" (the fewest FUSE-mounted layers after an rpull: 0 would mean the
    snapshotter fell back to a full download), "ref" (the converted image) and "convert_s" (its pull,
    conversion and push; None when it was already in the registry)."""
    if os.geteuid() != 0:
        return "the stargz peer needs root (containerd, mounts, namespaces)"
    missing = _missing_tools()
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if runs < 1:
        return f"runs must be at least 1, not {runs}"
    binary = build_snapshotter(cache)
    if isinstance(binary, str):
        return binary
    work = Path(tempfile.mkdtemp(prefix="lazyctr-stargz-"))
    try:
        repository, tag = split_ref(registry_address, image_ref)
        refs = convert(work / "convert", link, repository, tag)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in FORMATS}
        for number in range(runs):
            for name, (ref, _) in refs.items():  # round-robin: a slow phase of the machine hits both formats
                base = work / f"{name}-{number}"
                try:
                    samples[name].append(deploy(binary, base, link, ref, probe, f"stargz-{number}"))
                finally:
                    _unmount_all(base)
                    shutil.rmtree(base, ignore_errors=True)
        result: dict[str, Any] = {}
        for name, runs_of in samples.items():
            result[name] = _summary(runs_of)
            result[name]["ref"], result[name]["convert_s"] = refs[name]
        return result
    except PeerError as error:
        return str(error)
    finally:
        _unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        key: statistics.median(sample[key] for sample in samples) for key in ("pull_s", "run_s", "total_s")
    }
    summary["bytes"] = int(statistics.median(sample["bytes"] for sample in samples))
    summary["remote_layers"] = min(sample["remote_layers"] for sample in samples)
    summary["samples"] = samples
    return summary


# -- command line -------------------------------------------------------------------------------


def _lazyctr(root: Path, *args: str) -> None:
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(root), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=REPO)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise PeerError(f"lazyctr {args[0]} failed: {lines[-1] if lines else proc.returncode}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(storage: Path, address: str, link: Link | None = None) -> Iterator[None]:
    """`lazyctr serve` on `address` (in the link's server namespace if `link`), until the block ends."""
    argv = [sys.executable, "-m", "lazyctr.cli", "serve", "--storage", str(storage), "--addr", address]
    server = subprocess.Popen(
        _in_netns(link.server_ns if link else None, argv),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                sock = link.socket("server") if link else socket.socket()
                with sock:
                    sock.settimeout(2)
                    sock.connect((host, int(port)))
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise PeerError("the registry (lazyctr serve) did not come up") from None
                time.sleep(0.1)
        yield
    finally:
        _stop(server, 10)


def publish(source: str, store: Path, storage: Path, name: str) -> None:
    """Puts `source` into the registry storage as `name`: an OCI layout directory or a rootfs tarball is
    imported first; anything else is an image of the lazyctr store `store`."""
    path = Path(source)
    with tempfile.TemporaryDirectory(prefix="lazyctr-stargz-publish-") as tmp:
        if path.is_dir() and (path / "oci-layout").is_file():
            store = Path(tmp)
            _lazyctr(store, "import", f"oci:{path}", name)
            image = name
        elif path.is_file():
            store = Path(tmp)
            _lazyctr(store, "import", str(path), name)
            image = name
        elif path.is_dir():
            raise PeerError(f"{source}: a directory but not an OCI layout (no oci-layout file)")
        else:
            image = source
        address = f"127.0.0.1:{_free_port()}"
        with serving(storage, address):
            _lazyctr(store, "push", image, f"{address}/{name}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad arguments are one line on stderr (argparse would print the usage too)."""
        self.exit(2, f"error: {message}\n")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds the context managers: daemons, mounts and namespaces go


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("image", metavar="IMAGE_DIR_OR_REF", help="OCI layout, rootfs tarball or image")
    parser.add_argument("--link", default="100mbit/20ms", help="rate/RTT[/loss] (default 100mbit/20ms)")
    parser.add_argument("--runs", type=int, default=1, help="cold runs per format (default 1)")
    parser.add_argument("--probe", default="echo hello", help="command that exits 0 when ready")
    parser.add_argument("--root", type=Path, default=Path("/var/lib/lazyctr"), help="lazyctr store of IMAGE")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the daemon is built")
    args = parser.parse_args(argv)
    try:
        spec = parse_link_spec(args.link)
        try:
            probe = shlex.split(args.probe)
        except ValueError as error:
            raise PeerError(f"bad --probe {args.probe!r}: {error}") from None
        if not probe:
            raise PeerError("--probe is empty")
        if args.runs < 1:
            raise PeerError(f"--runs must be at least 1, not {args.runs}")
        source = Path(args.image)
        if source.is_dir() and not (source / "oci-layout").is_file():
            raise PeerError(f"{args.image}: a directory but not an OCI layout (no oci-layout file)")
        if os.geteuid() != 0:
            raise PeerError("needs root (network namespaces, containerd, mounts)")
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        binary = build_snapshotter(args.cache)
        if isinstance(binary, str):
            raise PeerError(binary)
        name = "bench/stargz-peer:1"
        with tempfile.TemporaryDirectory(prefix="lazyctr-stargz-registry-") as storage:
            publish(args.image, args.root, Path(storage), name)
            with shaped_link_of(spec) as link:
                link.verify()
                address = f"{link.server_ip}:5000"
                with serving(Path(storage), address, link):
                    result = measure(link, address, name, probe, args.runs, cache=args.cache)
    except (PeerError, LinkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if isinstance(result, str):
        print(f"stargz peer skipped: {result}", file=sys.stderr)
        return 1
    print(f"{'format':<12} {'pull s':>8} {'run s':>8} {'total s':>8} {'MB recv':>8} {'lazy layers':>11}")
    for fmt, figures in result.items():
        print(
            f"{fmt:<12} {figures['pull_s']:8.2f} {figures['run_s']:8.2f} {figures['total_s']:8.2f}"
            f" {figures['bytes'] / 1e6:8.2f} {figures['remote_layers']:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
