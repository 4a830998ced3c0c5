"""Pieces the benchmarks share: where they keep things, running tools, registries, mounts and links.

- Where: SOURCE_ROOT (where our packages are imported from: a checkout or an installed wheel's
  site-packages) and CACHE (base tarballs, built images, peers' binaries, kept between runs).
- Tools: the CLI on a store (in the client's network namespace of a shaped link), the `lazyctr`
  executable, set-up commands whose failure is one line (Unavailable), stopping a process.
- A registry (`lazyctr serve`) in the server's namespace of a link, until a block ends.
- The machine: dropping the page cache, the bytes the client's end of a link has received, a
  private /var for peers that write there whatever they are told, mounts left below a directory.
- Outputs of a suite: results.json (also partial, so far), report.md and the plots, each written
  whole; a markdown table row; saving a matplotlib figure.
- BenchError: the hello suite's one-line error (bad input, a machine that cannot run it), here so
  that its peers (benchmarks/peers/) raise it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from benchmarks.link import IFNAME, Link
from benchmarks.unwind import shielded as shielded
from benchmarks.unwind import unwind_on_sigterm as unwind_on_sigterm
from lazyfs.host import mount_points
from runtime import syscalls as sc
from storage.files import atomic_write

if TYPE_CHECKING:  # matplotlib is an extra (lazyctr[bench]): without it, no plots
    from matplotlib.figure import Figure

# The CLI runs from here, so that `python -m lazyctr.cli` imports the same code as this process.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = (SOURCE_ROOT / "pyproject.toml").is_file()
# A checkout keeps what the benchmarks make in its .cache/ (which `make clean` removes); an installed
# copy in the user's cache directory, never in site-packages.
CACHE = (
    SOURCE_ROOT / ".cache"
    if CHECKOUT
    else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lazyctr"
)

PACKAGES = ("lazyctr", "storage", "registry", "lazyfs", "runtime", "builder")
SETUP_TIMEOUT = 300

Tool = TypeVar("Tool")


def compile_sources() -> None:
    """Write our modules' bytecode before timing the CLI (in a checkout: pip compiled an installed copy).

    Python reads .pyc files but, with PYTHONDONTWRITEBYTECODE set (as in some shells and CI), never
    writes them: each CLI start would then compile every module it imports again, about 0.3 s of
    time to ready that no installed copy of lazyctr pays.
    """
    if CHECKOUT:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", *PACKAGES],
            cwd=SOURCE_ROOT,
            check=True,
            capture_output=True,
        )


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's `main`: Ctrl-C, once its clean-up has run, ends it in one line and status 130."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class BenchError(Exception):
    """Bad input or a machine that cannot run the suite; the message is one line."""


class Unavailable(Exception):
    """A tool that cannot run here; the message (one line) says why."""


# -- tools --------------------------------------------------------------------------------------


def stderr_tail(stderr: bytes | str, lines: int = 3) -> str:
    """The last lines of a tool's stderr on one line: a "see the log" needs the line before it."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def run_quietly(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> bytes:
    """Run a set-up step; raise Unavailable with the end of its stderr when it fails."""
    try:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=SETUP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{argv[0]}: {e}") from None
    if proc.returncode != 0:
        raise Unavailable(f"`{' '.join(argv[:3])} ...` exited {proc.returncode}: {stderr_tail(proc.stderr)}")
    return proc.stdout


def lazyctr_executable() -> str:
    """The `lazyctr` command beside this interpreter (its virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "lazyctr"
    found = str(beside) if beside.exists() else shutil.which("lazyctr")
    if found is None:
        sys.exit("lazyctr is not installed: run `make deps` (or pip install lazyctr) first")
    return found


def lazyctr(
    root: Path,
    *args: str,
    netns: str | None = None,
    timeout: float = 1800,
    preexec_fn: Callable[[], object] | None = None,
) -> str:
    """Run the CLI (in the client's network namespace if `netns`; mounts stay visible to the host)."""
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(root), *args]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    env = {"LAZYCTR_NETWORK": "none", **os.environ}  # the suites time images, not bridges and NAT
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=SOURCE_ROOT, preexec_fn=preexec_fn, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lazyctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def base_tarball(kind: str, publisher: Path) -> Path:
    """The root file system tarball of `lazyctr rootfs KIND` (debian: a debootstrap minbase), made once."""
    tarball = CACHE / ("debian-minbase.tar" if kind == "debian" else f"{kind}.tar")
    if not tarball.exists():
        print(f"making the {kind} base (once, kept in {CACHE})...", flush=True)
        tarball.parent.mkdir(parents=True, exist_ok=True)
        lazyctr(publisher, "rootfs", kind, str(tarball))
    return tarball


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Terminate `proc`, then kill it if it has not exited after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(storage: Path, address: str, link: Link | None = None, log: Path | None = None) -> Iterator[None]:
    """`lazyctr serve` on `storage` at `address` (in the link's server namespace), until the block ends.

    Its access log goes to `log` if given (else to our stdout and stderr).
    """
    argv = [sys.executable, "-m", "lazyctr.cli", "serve", "--storage", str(storage), "--addr", address]
    with contextlib.ExitStack() as files:
        output = files.enter_context(open(log, "ab")) if log is not None else None
        kw: dict[str, Any] = {"cwd": SOURCE_ROOT, "stdout": output, "stderr": output}
        server = link.popen("server", argv, **kw) if link else subprocess.Popen(argv, **kw)
    try:  # the server holds its own descriptor of the log
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if link is None:
                    socket.create_connection((host, int(port)), timeout=1).close()
                else:
                    sock = link.socket("client")
                    sock.settimeout(2)
                    sock.connect((host, int(port)))
                    sock.close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the registry (lazyctr serve) did not come up") from None
                time.sleep(0.1)
        yield
    finally:
        with shielded():
            stop(server)


def rotating_rounds(
    tools: Sequence[Tool], rounds: int, live: Callable[[Tool], bool]
) -> Iterator[tuple[int, Tool]]:
    """(round, tool) for each of `rounds` timed rounds over the tools still `live` at its start, each round
    starting one tool further on, so that drift in the machine's load falls on every tool alike."""
    for n in range(rounds):
        alive = [tool for tool in tools if live(tool)]
        shift = n % len(alive) if alive else 0
        for tool in alive[shift:] + alive[:shift]:
            yield n, tool


# -- the machine --------------------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def received(link: Link) -> int:
    """Bytes the client's end of the link has received so far."""
    return _client_bytes(link, 0)


def sent(link: Link) -> int:
    """Bytes the client's end of the link has sent so far."""
    return _client_bytes(link, 8)


def _client_bytes(link: Link, column: int) -> int:
    """A byte counter of the client's interface in /proc/net/dev (0: received, 8: sent)."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{link.client_ns}", "cat", "/proc/net/dev"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == IFNAME:
            return int(counters.split()[column])
    return 0


def unmount_under(base: Path) -> None:
    """Detach every mount at or below `base`, the last mounted first, so that `base` can be removed.

    Detached lazily: a plain unmount of a FUSE mount whose daemon died would hang.
    """
    for point in reversed(mount_points()):
        if Path(point).is_relative_to(base):
            with suppress(OSError):
                sc.umount2(point, sc.MNT_DETACH)


@contextmanager
def cold_root(work: Path) -> Iterator[Path]:
    """An empty store root; whatever a failed run left mounted below it is detached on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="root-", dir=work))
    try:
        yield tmp / "root"
    finally:
        with shielded():
            unmount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def resident_service(root: Path, netns: str | None = None, timeout: float = 60) -> Iterator[None]:
    """`lazyctr service` of `root` (in network namespace `netns`), up and loaded before the block, as
    a node's engine is before it starts anything; stopped after."""
    from lazyfs.service import ask_alive, socket_path

    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(root), "service"]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    service = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=SOURCE_ROOT)
    try:
        deadline = time.monotonic() + timeout
        while not ask_alive(socket_path(root)):
            if service.poll() is not None or time.monotonic() > deadline:
                ended = service.poll() is not None and service.stderr is not None
                why = stderr_tail(service.stderr.read()) if ended and service.stderr else "timed out"
                raise RuntimeError(f"lazyctr service did not come up: {why}")
            time.sleep(0.05)
        yield
    finally:
        with shielded():
            stop(service, 15)


@contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A temporary directory, with whatever was mounted below it, removed on the way out."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield base
    finally:
        with shielded():
            unmount_under(base)
            shutil.rmtree(base, ignore_errors=True)


def isolate_var(base: Path, targets: Sequence[str]) -> str:
    """Give this process (and so the tools it starts) empty `targets` (e.g. /var/lib, /var/tmp) from
    directories below `base`, in a private mount namespace; say what was done, in one line.

    As root, containers/image (podman, buildah) writes its blob-info cache to /var/lib/containers/cache
    and big temporary files to /var/tmp whatever the configuration says, and podman runs runc with its
    default state directory, /run/runc. Binding empty directories there in a private mount namespace of
    our own keeps the host's untouched and costs the timed runs nothing, unlike wrapping each tool in
    `unshare`.
    """
    if any(base.is_relative_to(d) for d in targets):
        return f"not isolated ({base} is under one of {', '.join(targets)}): the tools may write the host's"
    try:
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        made = ""
        for target in targets:
            source = base / ("private" + target.replace("/", "-"))
            source.mkdir(mode=0o700)
            if not os.path.isdir(target):
                os.makedirs(target, mode=0o700)  # the tool would have made it anyway
                made = f" (made an empty {target} on the host to mount on)"
            sc.mount(str(source), target, None, sc.MS_BIND)
    except OSError as e:
        return f"not isolated ({e}): the tools may write the host's {', '.join(targets)}"
    return f"private mount namespace: {', '.join(targets)} are empty temporary directories{made}"


def save_partial(results: dict[str, Any], out: Path) -> None:
    """results.json so far: a suite stopped half-way still leaves what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", (json.dumps({**results, "partial": True}, indent=2) + "\n").encode())


def write_outputs(
    results: dict[str, Any],
    out: Path,
    render_report: Callable[[dict[str, Any], Sequence[str]], str],
    draw_plots: Callable[[dict[str, Any], Path], list[Path]],
) -> Path:
    """results.json, report.md (by the suite's `render_report`, given the plots' names) and the plots (by
    its `draw_plots`) in `out`, each written whole, then renamed into place; the path of report.md."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    try:
        plots = draw_plots(results, out)
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        print("no plots: they need matplotlib (pip install 'lazyctr[bench]')", flush=True)
        plots = []
    atomic_write(out / "report.md", render_report(results, [p.name for p in plots]).encode())
    return out / "report.md"


def markdown_row(cells: Sequence[str]) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(cells) + " |"


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a plot as PNG and free its figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
