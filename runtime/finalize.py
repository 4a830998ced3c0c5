"""The last steps of every process started in a container, `run`'s PID 1 and `exec`'s alike.

As runc's finalizeNamespace and the exec that follows it: drop capabilities to docker's default set,
set no_new_privs, become the user (and its groups), load the seccomp profile, reset the signals and
exec the command (under a minimal init with `--init`). What comes before (a new root for `run`,
joined namespaces for `exec`) differs; from here on it does not.

Whoever waits for the exec can pass `exec_report`, the write end of a close-on-exec pipe: the process
writes EXEC_TRYING to it just before the exec and EXEC_FAILED if that failed, so its reader knows
the command was exec'd when its end closes after EXEC_TRYING alone (and that it was not when
the process ended without a word: a setup step failed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable

from runtime import seccomp
from runtime import syscalls as sc
from runtime.process import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_SETUP_FAILED,
    ContainerError,
    exit_status,
    run_in_child,
)
from runtime.spec import Process
from runtime.steps import setup_step

EXEC_TRYING, EXEC_FAILED = b"x", b"!"
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGWINCH)  # fmt: skip


def finalize(process: Process, exec_report: int | None = None) -> int:
    """Become `process` (in this already forked child); returns only if the command could not start,
    or with `--init`, once it ended."""
    drop_capabilities()
    set_no_new_privs()
    env = switch_user(process.user, process.env)
    apply_seccomp(process.seccomp)
    if process.init:
        return run_as_init(lambda: exec_command(process.argv, env, process.cwd, exec_report), exec_report)
    return exec_command(process.argv, env, process.cwd, exec_report)


@setup_step
def drop_capabilities() -> None:
    sc.drop_bounding_capabilities(sc.DOCKER_DEFAULT_CAPABILITIES)


@setup_step
def set_no_new_privs() -> None:
    sc.set_no_new_privs()


@setup_step
def switch_user(user: str, env: list[str]) -> list[str]:
    """Become USER[:GROUP] (names from the container's /etc/passwd and /etc/group, or numbers), if given;
    returns `env` with the user's HOME unless it has one."""
    if not user:
        return env
    name, _, group = user.partition(":")
    passwd = _table("/etc/passwd")
    entry = next((row for row in passwd if name in (row[0], row[2])), None)
    if entry is None and not name.isdigit():
        raise ContainerError(f"unable to find user {name}: no matching entries in passwd file")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else 0
    if group:
        groups = [row for row in _table("/etc/group") if group in (row[0], row[2])]
        if not groups and not group.isdigit():
            raise ContainerError(f"unable to find group {group}: no matching entries in group file")
        gid = int(groups[0][2]) if groups else int(group)
    login = entry[0] if entry else ""
    extra = [int(row[2]) for row in _table("/etc/group") if login and login in row[3].split(",")]
    os.setgroups(sorted({gid, *extra}))
    os.setgid(gid)
    os.setuid(uid)
    home = entry[5] if entry else "/"
    return env if any(item.startswith("HOME=") for item in env) else [*env, f"HOME={home}"]


def _table(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 3]
    except OSError:
        return []


@setup_step
def apply_seccomp(profile: str) -> None:
    """After no_new_privs, which a filter needs; last, so the steps before may use what it forbids."""
    seccomp.apply(profile)


def run_as_init(start: Callable[[], int], exec_report: int | None = None) -> int:
    """`--init`: stay PID 1, forward signals to the command, reap every orphan, exit as it does."""
    child = os.fork()
    if child == 0:
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        run_in_child(start)
    if exec_report is not None:
        os.close(exec_report)  # the child's exec is what its reader waits for, not our end
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if pid == child:
            return exit_status(status)


def reset_signals() -> None:
    """The command starts with every signal at its default and none blocked, as under docker.

    Python ignores SIGPIPE and SIGXFSZ, and a lazyctr started in the background by a shell inherits
    an ignored SIGINT and SIGQUIT; ignored signals survive exec, so without this `yes | head` in a
    container would see EPIPE instead of dying, and Ctrl-C would not stop it.
    """
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):  # the C library's own realtime signals
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_command(argv: list[str], env_list: list[str], cwd: str, exec_report: int | None = None) -> int:
    """Exec `argv`; returns docker's status for a working directory or command that is not there."""
    env = dict(item.split("=", 1) for item in env_list if "=" in item)
    try:
        os.chdir(cwd)
    except OSError as e:
        print(f"lazyctr: error: working directory {cwd}: {e.strerror}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    reset_signals()
    if exec_report is not None:
        os.write(exec_report, EXEC_TRYING)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        if exec_report is not None:
            os.write(exec_report, EXEC_FAILED)
        print(f"lazyctr: error: {argv[0]}: {e.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
