"""`lazyctr cp`: files between a container and the host, with docker cp's rules for where they land.

As docker does, the two sides talk in a tar stream: the side that holds the source packs it (its top
entry named `top`, a file or a directory tree), the other side unpacks it next to the destination and
moves it into place. The container's side runs in a forked child chrooted into the container's root,
so symlinks in the container resolve inside it and never reach the host's files: for a running
container its root as its PID 1 sees it (`/proc/PID/root`, volumes included), for a stopped one its
storage driver's root mounted in a private mount namespace of the child, with its volumes bound where
its processes see them (on a lazy image, lazyfs then fetches exactly the files that are read).
Nothing half-copied is left at the destination: what arrives is unpacked into a hidden directory
beside it first, then renamed into place.

The rules (docker's): a file lands at DEST, or in DEST if that is a directory; a directory lands at
DEST if DEST does not exist, else in it (`SRC/.` copies the directory's contents instead); a DEST that
ends in `/` must be a directory; a directory never replaces a file, nor a file a directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from runtime import syscalls as sc
from runtime.drivers import choose_driver
from runtime.lifecycle import saved_volumes
from runtime.process import ContainerError, run_in_child, wait_status
from runtime.rootfs import bind_volumes
from runtime.state import ContainerState, containers_dir
from storage.errors import LazyctrError, StorageError
from storage.store import Store

TOP = "top"  # the name of the source in the stream, whatever it is called on its side
STAGING_PREFIX = ".lazyctr-cp-"


class CopyError(ContainerError):
    """A cp that cannot be done: a missing path, a directory onto a file... (exit 1, as docker's)."""

    exit_code = 1


@dataclass(frozen=True)
class Source:
    """What the stream carries: a `kind` (file or dir), the source's base name, and whether only
    a directory's contents are copied (`SRC/.`)."""

    kind: str
    name: str
    contents_only: bool = False


def split_argument(text: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` -> (container, path); a host path (absolute, `./x`, or without a colon before
    its first `/`) -> (None, path), as docker tells them apart."""
    if text.startswith(("/", ".")) or ":" not in text:
        return None, text
    container, _, path = text.partition(":")
    if "/" in container or not container:
        return None, text
    return container, path or "/"


# -- the sending side ------------------------------------------------------------------------------


def describe(path_text: str) -> tuple[Source, str]:
    """The source at `path_text` (in the current root) and the path to pack; a missing one is refused."""
    contents_only = path_text.endswith(("/.", "/./")) or path_text in (".", "./")
    wants_dir = path_text.endswith("/") or contents_only
    # A trailing `/` (or `/.`) follows a symlink to a directory; otherwise the link itself is copied.
    try:
        st = os.stat(path_text) if wants_dir else os.lstat(path_text)
    except FileNotFoundError:
        raise CopyError(f"no such file or directory: {path_text}") from None
    except NotADirectoryError:
        raise CopyError(f"not a directory: {path_text}") from None
    is_dir = stat.S_ISDIR(st.st_mode)
    if wants_dir and not is_dir:
        raise CopyError(f"not a directory: {path_text}")
    name = os.path.basename(os.path.normpath(path_text)) or "/"
    return Source("dir" if is_dir else "file", name, contents_only and is_dir), path_text


def send(path_text: str, out: BinaryIO) -> None:
    """Describe the source (one JSON line, or `{"error": ...}`), then pack it as a tar stream."""
    try:
        source, path = describe(path_text)
    except CopyError as e:
        out.write(json.dumps({"error": str(e)}).encode() + b"\n")
        return
    out.write(json.dumps(asdict(source)).encode() + b"\n")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=TOP, recursive=True)


def read_header(stream: BinaryIO) -> Source:
    line = stream.readline()
    try:
        header = json.loads(line)
        if "error" in header:
            raise CopyError(str(header["error"]))
        return Source(str(header["kind"]), str(header["name"]), bool(header["contents_only"]))
    except (ValueError, KeyError, TypeError):
        raise CopyError("the other side of the copy ended without saying why") from None


# -- the receiving side ----------------------------------------------------------------------------


def target_for(source: Source, dest_text: str) -> Path:
    """Where the source lands, by docker cp's rules; the refusals raise CopyError."""
    dest = Path(dest_text)
    try:
        st: os.stat_result | None = os.stat(dest_text)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise CopyError(f"not a directory: {dest_text}") from None
    if st is None:
        if dest_text.endswith("/") and source.kind == "file":
            raise CopyError(f"destination directory {dest_text} does not exist")
        if not dest.parent.is_dir():
            raise CopyError(f"no such directory: {dest.parent}")
        return dest
    if stat.S_ISDIR(st.st_mode):
        return dest if source.contents_only else dest / source.name
    if source.kind == "dir":
        raise CopyError(f"cannot copy a directory to a file: {dest_text}")
    if dest_text.endswith("/"):
        raise CopyError(f"not a directory: {dest_text}")
    return dest


def receive(stream: BinaryIO, source: Source, dest_text: str) -> None:
    """Unpack the stream next to where it lands (a hidden directory), then move it into place."""
    target = target_for(source, dest_text)
    if target.is_dir() and not target.is_symlink() and source.kind == "file":
        raise CopyError(f"cannot overwrite directory {target} with a file")
    staging = Path(os.path.dirname(os.path.abspath(target))) / f"{STAGING_PREFIX}{os.urandom(6).hex()}"
    staging.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(staging, filter=_owned_here)
        staged = staging / TOP
        if not os.path.lexists(staged):
            raise CopyError("the copy stream held nothing")
        _place(staged, target)
    except (tarfile.TarError, EOFError) as e:
        raise CopyError(f"the copy stream broke off: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _owned_here(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Only names under TOP; owned by whoever copies (docker cp's rule without -a), modes kept."""
    name = member.name
    if not (name == TOP or name.startswith(TOP + "/")) or ".." in name.split("/"):
        raise CopyError(f"the copy stream names a path outside the copy: {name!r}")
    if member.islnk() and not (member.linkname == TOP or member.linkname.startswith(TOP + "/")):
        raise CopyError(f"the copy stream links outside the copy: {member.linkname!r}")
    return member.replace(uid=None, gid=None, uname=None, gname=None, deep=False)  # type: ignore[arg-type]


def _place(staged: Path, target: Path) -> None:
    """Move `staged` to `target`: a new name is one rename, a directory merges into a directory."""
    if not os.path.lexists(target):
        os.rename(staged, target)
        return
    staged_dir = staged.is_dir() and not staged.is_symlink()
    target_dir = target.is_dir() and not target.is_symlink()
    if staged_dir and target_dir:
        for child in sorted(staged.iterdir()):
            _place(child, target / child.name)
        shutil.copystat(staged, target, follow_symlinks=False)
        return
    if target_dir:
        raise CopyError(f"cannot overwrite directory {target} with a non-directory")
    if staged_dir:
        raise CopyError(f"cannot overwrite non-directory {target} with a directory")
    os.replace(staged, target)


# -- the container's side, in a child chrooted into its root ---------------------------------------


def copy_from_container(store: Store, state: ContainerState, path: str, dest_text: str) -> None:
    """CONTAINER:PATH -> host DEST."""
    read_end, write_end = os.pipe()

    def sender() -> int:
        os.close(read_end)
        # No owner names in the stream (the receiver owns what it unpacks): looking them up would read
        # the container's /etc/passwd and /etc/group, on a lazy image a fetch of files nobody copies.
        tarfile.pwd = tarfile.grp = None  # type: ignore[attr-defined]  # this forked child's own copy
        with contextlib.suppress(BrokenPipeError), os.fdopen(write_end, "wb") as out:
            send(path, out)  # a receiver that refused closed its end: it says why
        return 0

    failure: BaseException | None = None
    with _container_side(store, state, sender) as child:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            try:
                receive(stream, read_header(stream), dest_text)
            except BaseException as e:
                failure = e
            finally:
                stream.close()  # a sender still writing gets EPIPE instead of blocking forever
        _raise_first(child.wait(), failure, f"reading {path} in container {state.name}")


def copy_to_container(store: Store, state: ContainerState, source_text: str, path: str) -> None:
    """Host SOURCE -> CONTAINER:PATH."""
    describe(source_text)  # a missing source is refused before the container is touched
    read_end, write_end = os.pipe()

    def receiver() -> int:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            receive(stream, read_header(stream), path)
        return 0

    failure: BaseException | None = None
    with _container_side(store, state, receiver) as child:
        os.close(read_end)
        try:
            with contextlib.suppress(BrokenPipeError), os.fdopen(write_end, "wb") as out:
                send(source_text, out)  # a receiver that refused closed its end: it says why
        except BaseException as e:
            failure = e
        _raise_first(child.wait(), failure, f"writing {path} in container {state.name}")


def _raise_first(ended: tuple[int, str], failure: BaseException | None, what: str) -> None:
    """The container side's own word first (it knows why its end of the stream broke), then ours."""
    status, said = ended
    if said:
        raise CopyError(said)
    if failure is not None:
        raise failure
    if status != 0:
        raise CopyError(f"{what} failed (status {status})")


@dataclass
class _Child:
    """The container's side of a copy: its PID, and the read end of its stderr."""

    pid: int
    errors: int

    def wait(self) -> tuple[int, str]:
        """Its status and what it said went wrong, once it has ended."""
        said = b""
        while chunk := os.read(self.errors, 4096):
            said += chunk
        os.close(self.errors)
        return wait_status(self.pid), said.decode(errors="replace").strip().removeprefix("lazyctr: error: ")


@contextlib.contextmanager
def _container_side(store: Store, state: ContainerState, body: Callable[[], int]) -> Iterator[_Child]:
    """Fork `body` into the container's root: its live root if it runs, else its driver's, mounted in
    a mount namespace of the child's own; yields the child (the caller waits for it)."""
    if state.running:
        root = f"/proc/{state.pid}/root"
        if not os.path.isdir(root):
            raise CopyError(f"container {state.name} is not running")
        yield _fork(lambda: _chrooted(root, body))
        return
    container_dir = containers_dir(store.root) / state.id
    try:
        image = store.image(state.image)
        driver = choose_driver(store, image, state.driver or None)
    except StorageError as e:
        raise CopyError(f"container {state.name}: its image {state.image}: {e}") from None
    volumes = saved_volumes(store.root, state)
    if driver.name != "copy" or not (container_dir / "rootfs").is_dir():  # copy's is the container's own
        driver.prepare(image, container_dir)
    try:

        def mounted() -> int:
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            rootfs = driver.mount(container_dir)
            bind_volumes(rootfs, volumes)  # as a run binds them: a path in a volume is the volume's
            return _chrooted(str(rootfs), body)

        yield _fork(mounted)
    finally:
        driver.release(container_dir)  # what `prepare` took (a lazy mount), once the child is done


def _chrooted(root: str, body: Callable[[], int]) -> int:
    os.chroot(root)
    os.chdir("/")
    return body()


def _fork(body: Callable[[], int]) -> _Child:
    errors, errors_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(errors)
        os.dup2(errors_write, 2)
        os.close(errors_write)
        run_in_child(lambda: _saying_why(body))
    os.close(errors_write)
    return _Child(pid, errors)


def _saying_why(body: Callable[[], int]) -> int:
    """Run `body`; an error a user can cause becomes one line on stderr (the parent's pipe)."""
    try:
        return body()
    except (LazyctrError, OSError) as e:
        where = f": {e.filename}" if isinstance(e, OSError) and e.filename else ""
        message = f"{e.strerror}{where}" if isinstance(e, OSError) and e.strerror else str(e)
        os.write(2, message.encode() + b"\n")
        return 1
