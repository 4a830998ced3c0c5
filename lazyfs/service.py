"""The resident lazy engine of a root (`lazyctr service`): lazy pulls and mounts without a start's imports.

A lazy start pays for Python's imports twice: `pull` imports the registry client (aiohttp, about
100 ms of CPU), and `run` forks a mount daemon that imports it again with the fetch engine. A
service, started once for a root, holds all of it imported (and frozen out of the collector's
scans) and forks a child per request, which starts with everything loaded; the command line asks
it over a socket named by the root (`socket_path`) and keeps only its own part. With no service
listening there, the command line does the same work itself (`pull_lazily`, `mount_lazily`). The
snapshotter's mounter (lazyfs/snapshotter/mounter.py) runs `mount_here` the same way: one engine,
three front doors.

One JSON line each way per connection. A request names its operation (`pull`, `mount`), its
arguments and the caller's environment, which the child takes over: credentials, trust policy and
the FUSE transport follow the caller, not the service. The answer is the result, or the error as
the caller would have shown it (its line and exit status). Only root can connect (the socket is mode
0600, in a directory only root may enter); a root has one service (a lock beside the socket).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from storage.errors import EXIT_ERROR, EXIT_INTERNAL, LazyctrError, StorageError, os_error_line
from storage.store import Image, Store

# Sockets live in /run, named by their root: a root's own path may be longer than a socket's
# address can be (108 bytes), and /run is root's, and empty after a reboot, as a socket should be.
SOCKETS = Path("/run/lazyctr")
BACKLOG = 128  # a fleet node's containers may all start at once
# True in a service's child: the work it does asks no service (a pull's mount is made in the same
# process, with the TOCs the pull loaded: storage.tocindex).
_serving = False


class ServiceError(LazyctrError):
    """An error the service met doing a request: its one line, and the status it carries."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServiceStorageError(ServiceError, StorageError):
    """The same, where the work met a StorageError: callers that catch those catch it too."""


def socket_path(root: Path) -> Path:
    """Where the service of `root` listens: /run/lazyctr/service-<hash of the root's path>.sock."""
    key = hashlib.sha256(str(root.absolute()).encode()).hexdigest()[:24]
    return SOCKETS / f"service-{key}.sock"


# -- the work, here or in the service -------------------------------------------------------------


def pull_lazily(store: Store, ref: str, insecure: bool) -> dict[str, Any]:
    """`pull` without --eager, by the root's service if one listens, else here: the image's ID, and
    the line saying what access profile it inherited (None if none)."""
    answer = ask(store.root, "pull", ref=ref, insecure=insecure)
    return answer if answer is not None else _pull_here(store, ref, insecure)


def mount_lazily(store: Store, image: Image, mountpoint: Path, timeout: float, profiled: bool = True) -> None:
    """`mount_here`, by the root's service if one listens (and marked on this process's timeline);
    here in a service's own child."""
    arguments = {"image": image.name, "mountpoint": str(mountpoint), "timeout": timeout, "profiled": profiled}
    if _serving:  # the service's own work (a pull's hold): logged as a request's mount would be
        mount_here(store, image, mountpoint, timeout, profiled)
        with contextlib.suppress(OSError):
            print(_log_line("mount", arguments, {"result": {}}), flush=True)
        return
    if ask(store.root, "mount", **arguments) is None:
        mount_here(store, image, mountpoint, timeout, profiled)
        return
    from lazyfs.host import is_mounted
    from lazyfs.mount import MountState, on_timeline

    if not is_mounted(mountpoint):  # a service in a mount namespace of its own: its mounts are not ours
        raise ServiceStorageError(
            f"{mountpoint}: the lazyctr service mounted it where this process cannot see it"
        )
    on_timeline(MountState.of(store.root, mountpoint))


def mount_here(
    store: Store,
    image: Image,
    mountpoint: Path,
    timeout: float,
    profiled: bool = True,
    fill: bool = False,
    lowers: bool = False,
) -> None:
    """Mount `image` at `mountpoint` (lazyfs.mount.mount); `profiled`: prefetching its access
    profile, its own or one inherited now (a mount recording a profile prefetches nothing)."""
    from lazyfs.lineage import profile_for_mount
    from lazyfs.mount import mount

    prefetch = profile_for_mount(store, image) if profiled else []
    mount(store, image, mountpoint, timeout, prefetch=prefetch, fill=fill, lowers=lowers)


def _pull_here(store: Store, ref: str, insecure: bool) -> dict[str, Any]:
    import asyncio

    from lazyfs.lineage import inherit_profile
    from registry.transfer import pull_lazy

    image = asyncio.run(pull_lazy(store, ref, insecure))
    inherited = inherit_profile(store, image)  # from the store's versions: no round trip
    return {
        "id": str(image.id),
        "name": image.name,
        "inherited": inherited.line() if inherited is not None else None,
    }


def _pull(store: Store, arguments: dict[str, Any]) -> dict[str, Any]:
    return _pull_here(store, str(arguments["ref"]), bool(arguments.get("insecure", False)))


def _mount(store: Store, arguments: dict[str, Any]) -> dict[str, Any]:
    mountpoint, timeout = Path(arguments["mountpoint"]), float(arguments["timeout"])
    mount_here(
        store, store.image(arguments["image"]), mountpoint, timeout, bool(arguments.get("profiled", True))
    )
    return {}


OPERATIONS: dict[str, Callable[[Store, dict[str, Any]], dict[str, Any]]] = {"pull": _pull, "mount": _mount}

# What the work imports: loaded once in the service, before it forks anything.
PRELOAD = ("asyncio", "lazyfs.lineage", "lazyfs.mount", "registry.transfer")


def preload() -> None:
    """Import everything a request and a mount daemon run, and freeze it out of the collector's scans
    (each fork then starts with it loaded, and no collection of the child copies its pages)."""
    import importlib

    from lazyfs.mount import preload_daemon

    for module in PRELOAD:
        importlib.import_module(module)
    preload_daemon()
    gc.freeze()


def perform(store: Store, operation: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run one request; its answer: {"result": ...}, or {"error": line, "exit_code": status,
    "storage": whether it was a StorageError}."""
    try:
        work = OPERATIONS[operation]
    except KeyError:
        return {"error": f"the lazyctr service has no operation {operation!r}", "exit_code": EXIT_INTERNAL}
    try:
        return {"result": work(store, arguments)}
    except LazyctrError as e:
        return {"error": str(e), "exit_code": e.exit_code, "storage": isinstance(e, StorageError)}
    except OSError as e:
        return {"error": os_error_line(e), "exit_code": EXIT_ERROR, "storage": False}
    except Exception as e:  # a bug of ours: the caller shows it as one, and the service lives on
        return {
            "error": f"internal error in the lazyctr service: {type(e).__name__}: {e}",
            "exit_code": EXIT_INTERNAL,
        }


# -- the command line's side ----------------------------------------------------------------------


def ask(root: Path, operation: str, **arguments: Any) -> dict[str, Any] | None:
    """The service's result for the request, or None when the root has no service listening (the
    caller then does the work itself: nothing was done). Its error is raised as ServiceError (a
    ServiceStorageError for a StorageError), with the status the caller would have exited with."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with connection:
        request = {
            "operation": operation,
            "arguments": arguments,
            "environment": dict(os.environ),
            "directory": os.getcwd(),  # relative paths in the environment (--policy) are the caller's
        }
        try:
            # No socket, a service gone, one stopping with our connection queued, or /run/lazyctr
            # closed to a caller who is not root: no service, and nothing done.
            connection.connect(str(socket_path(root)))
            connection.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            return None
        with connection.makefile("rb") as answers:
            try:
                line = answers.readline()
            except OSError:
                line = b""
    if not line:
        raise ServiceError("the lazyctr service ended without answering (see its output)")
    answer: dict[str, Any] = json.loads(line)
    if "error" in answer:
        kind = ServiceStorageError if answer.get("storage") else ServiceError
        raise kind(answer["error"], int(answer.get("exit_code", EXIT_ERROR)))
    result: dict[str, Any] = answer["result"]
    return result


# -- the service ----------------------------------------------------------------------------------


AfterPull = Callable[[Store, Image, int], None]  # the store, the image pulled, the service's pid


def serve(
    store: Store, ready: Callable[[], None] = lambda: None, after_pull: AfterPull | None = None
) -> None:
    """Answer requests at the root's socket until SIGINT or SIGTERM; `ready` is called once the
    socket listens. A root has one service: a second is refused (a lock held for the service's
    life, which a killed one releases, so its socket is replaced). `after_pull` runs in a pull's
    child once the caller has its answer (the command line mounts the image there, so that its
    profile comes while `run` starts: runtime.lazy.hold_for_a_start)."""
    path = socket_path(store.root)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = path.with_suffix(".lock")
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{path}: a lazyctr service of this root runs already") from None
        try:
            preload()
            store.root.mkdir(parents=True, exist_ok=True)
            _listen_and_answer(store, path, ready, after_pull)
        finally:
            lock_path.unlink(missing_ok=True)  # while held: /run keeps no litter of stopped services
    finally:
        os.close(lock)


def _listen_and_answer(
    store: Store, path: Path, ready: Callable[[], None], after_pull: AfterPull | None
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Bound under another name and renamed into place once it listens: a caller that finds the
    # socket is answered (one that found nothing listening would do the work itself).
    binding = path.with_name(f".{path.name}.{os.getpid()}")
    binding.unlink(missing_ok=True)
    old_mask = os.umask(0o177)  # 0600 from the start: nobody else may connect, not even for a moment
    try:
        listener.bind(str(binding))
    finally:
        os.umask(old_mask)
    listener.listen(BACKLOG)
    ours = binding.stat().st_ino
    os.rename(binding, path)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # each request's child is reaped by the kernel
    # A stop is a byte on a pipe the loop watches, not an exception from the handler: that could be
    # raised anywhere, such as in the fork handlers, which swallow it.
    stop_read, stop_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(stop_write)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        ready()
        while stop_read not in select.select([listener.fileno(), stop_read], [], [])[0]:
            try:
                connection, _ = listener.accept()
                child = os.fork()
            except OSError as e:  # out of descriptors or processes: this request fails, not the service
                print(f"lazyctr service: cannot take a request: {e}", file=sys.stderr, flush=True)
                time.sleep(0.1)
                continue
            if child == 0:
                _child(connection, listener, (stop_read, stop_write), store, after_pull)
            connection.close()
    finally:
        signal.set_wakeup_fd(-1)
        os.close(stop_read)
        os.close(stop_write)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == ours:  # not a service started as this one stopped
                path.unlink()


def _child(
    connection: socket.socket,
    listener: socket.socket,
    pipe: tuple[int, int],
    store: Store,
    after_pull: AfterPull | None,
) -> NoReturn:
    global _serving
    status = 1
    _serving = True
    service = os.getppid()
    try:
        signal.set_wakeup_fd(-1)
        listener.close()
        for descriptor in pipe:
            os.close(descriptor)
        _answer(connection, store, after_pull, service)
        status = 0
    except BaseException:
        traceback.print_exc()  # a request the protocol could not even read: the service's output says why
    finally:
        os._exit(status)


def ask_alive(path: Path) -> bool:
    """Whether a service listens at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _log_line(operation: str, arguments: dict[str, Any], answer: dict[str, Any]) -> str:
    """The service's line for a request: what was asked, and what came of it."""
    what = {"pull": "ref", "mount": "mountpoint"}.get(operation)
    subject = f" {arguments.get(what)}" if what else ""
    if "error" in answer:
        return f"{operation}{subject}: error: {answer['error']}"
    outcome = answer["result"].get("id", "ok")
    return f"{operation}{subject}: {outcome}"


def _answer(connection: socket.socket, store: Store, after_pull: AfterPull | None, service: int) -> None:
    """One request, in its own child: the caller's environment and directory, the work, the answer.

    A caller interrupted while it waits leaves what the work made, as it would have done the work
    itself: a mount with no user is taken up by the next container of its image, or unmounted by
    `rm`/`prune`, under the slot's lock (runtime/lazy.py)."""
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # mount() waits for its own children; a stop is for us
    with connection, connection.makefile("rb") as requests:
        line = requests.readline()
        if not line:
            return
        request = json.loads(line)
        os.environ.clear()
        os.environ.update(request["environment"])
        with contextlib.suppress(OSError):
            os.chdir(request["directory"])
        operation, arguments = request["operation"], request["arguments"]
        answer = perform(store, operation, arguments)
        with contextlib.suppress(OSError):  # a caller gone (Ctrl-C) is told nothing
            connection.sendall(json.dumps(answer).encode() + b"\n")
    with contextlib.suppress(OSError):  # the service's output gone: nobody to tell
        print(_log_line(operation, arguments, answer), flush=True)
    if operation == "pull" and "result" in answer and after_pull is not None:
        # What follows the answer is the service's: a Ctrl-C at its terminal (or a stop sent to its
        # whole group) is for the service, whose end ends this work too (hold_for_a_start).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        try:
            after_pull(store, store.image(answer["result"]["name"]), service)
        except (LazyctrError, OSError) as e:  # the pull is done: this was a head start, not the work
            with contextlib.suppress(OSError):
                print(f"after pull {arguments.get('ref')}: {e}", flush=True)
