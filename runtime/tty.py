"""The terminal of `run -it`: a pseudo-terminal for the container, proxied to ours in raw mode.

In raw mode Ctrl-C is just a byte: it reaches the container's terminal, whose line discipline turns
it into SIGINT for the container's foreground process, as with docker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import sys
import termios
import tty
from collections.abc import Iterator


def copy_window_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


def become_terminal_owner(slave: int) -> None:
    """In the container's first process: a new session whose controlling terminal is `slave`."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def proxy(master: int) -> None:
    """Copy our stdin to the container's terminal and its output to our stdout until it closes."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    copy_window_size(stdin, master)
    previous = signal.signal(signal.SIGWINCH, lambda _s, _f: copy_window_size(stdin, master))
    readers = [master, stdin]
    try:
        with raw_terminal(stdin):
            while True:
                ready, _, _ = select.select(readers, [], [])
                if master in ready:
                    try:
                        data = os.read(master, 1 << 16)
                    except OSError:  # EIO: every process of the container let go of the terminal
                        break
                    if not data:
                        break
                    os.write(stdout, data)
                if stdin in ready:
                    data = os.read(stdin, 1 << 16)
                    if data:
                        os.write(master, data)
                    else:
                        readers.remove(stdin)
    finally:
        signal.signal(signal.SIGWINCH, previous)
