"""Progress of `lazyctr push/pull`: plain lines when not on a terminal, bars on one (through a pty)."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
from pathlib import Path

from registry.progress import PlainProgress, TerminalProgress
from storage.digest import Digest
from tests.conftest import CliRunner, cli_command
from tests.registry.conftest import Registry

LINE = re.compile(r"(pushed|exists|mounted|pulled) sha256:[0-9a-f]{64} \d+(\.\d)?[kMG]?B \d+\.\ds")
DIGEST = Digest("sha256:" + "ab" * 32)


def screen(stream: str) -> list[str]:
    """The lines a terminal shows after `stream`: the few controls TerminalProgress uses, emulated."""
    lines = [""]
    row = 0
    for token in re.findall(r"\x1b\[\d*[A-Za-z]|\r|\n|[^\x1b\r\n]+", stream):
        if token == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            pass  # the pty's \r\n, and every line is written from its start anyway
        elif token == "\x1b[2K":
            lines[row] = ""
        elif token.startswith("\x1b[") and token.endswith("F"):
            row -= int(token[2:-1] or 1)
            assert row >= 0, "moved up past the first line"
        else:
            assert not token.startswith("\x1b"), token
            lines[row] += token
    return [line for line in lines if line]


def test_plain_lines_for_push_and_pull(lazyctr: CliRunner, busybox_tar: Path, registry: Registry) -> None:
    image_id = lazyctr("import", str(busybox_tar), "busybox").out.strip()
    target = f"{registry.address}/test/busybox:latest"
    pushed = lazyctr("push", "busybox", target).out.splitlines()
    assert len(pushed) == 3 and all(LINE.fullmatch(line) for line in pushed[:2]), pushed
    assert {line.split()[0] for line in pushed[:2]} == {"pushed"}
    assert pushed[2].startswith("manifest sha256:")
    again = lazyctr("push", "busybox", target).out.splitlines()
    assert {line.split()[0] for line in again[:2]} == {"exists"}

    # The blob progress is the eager pull's: with lazy pull (lazyfs/) it takes --eager.
    eager = ["--eager"] if "--eager" in lazyctr("pull", "--help").out else []
    lazyctr("rmi", "busybox")
    lazyctr("gc")
    quiet = lazyctr("pull", *eager, target)  # off a terminal: no progress unless asked for
    assert (quiet.out.strip(), quiet.stderr) == (image_id, "")
    lazyctr("rmi", target)
    lazyctr("gc")
    pulled = lazyctr("pull", *eager, "--progress", "plain", target)
    assert pulled.out.strip() == image_id  # stdout: the ID alone
    lines = pulled.stderr.splitlines()
    assert len(lines) == 2 and all(LINE.fullmatch(line) for line in lines), lines  # config and layer
    assert {line.split()[0] for line in lines} == {"pulled"}


def test_bars_on_a_terminal_for_a_real_push(
    lazyctr: CliRunner, busybox_tar: Path, registry: Registry, root: Path
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    target = f"{registry.address}/test/busybox:tty"
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            cli_command(root, "push", "busybox", target), stdout=subprocess.PIPE, stderr=terminal
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert proc.returncode == 0, shown
    text = shown.decode()
    assert "\x1b[2K" in text  # rows cleared and redrawn in place
    assert re.search(r"[0-9a-f]{12} \[[=> ]{24}\] \S+/\S+ \S+/s ETA \S+", text), text
    shown_at_the_end = screen(text)
    assert len(shown_at_the_end) == 2 and all(LINE.fullmatch(line) for line in shown_at_the_end), text
    # stdout is not the terminal: it still gets the lines, then the manifest.
    out = stdout.decode().splitlines()
    assert all(LINE.fullmatch(line) for line in out[:2]) and out[2].startswith("manifest sha256:")


def test_terminal_rows_show_bytes_rate_and_eta() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress.start(DIGEST, 10_000_000)
    progress.last_draw = 0.0  # let the next event redraw at once
    progress.transfers[DIGEST].started -= 2.0  # as if it had been running for two seconds
    progress.advance(DIGEST, 2_500_000)
    drawn = out.getvalue()
    assert drawn.count("\x1b[2K") == 2 and "\x1b[1F" in drawn  # the row drawn, then again in place
    assert re.search(r"abababababab \[={6}> {17}\] 2\.5MB/10\.0MB 1\.2MB/s ETA 6\.\ds", drawn), drawn
    progress.done(DIGEST, "pushed")
    assert re.search(r"\x1b\[2Kpushed sha256:(ab){32} 10\.0MB 2\.\ds\n$", out.getvalue()), out.getvalue()


def test_plain_progress_writes_only_finished_blobs() -> None:
    out = io.StringIO()
    progress = PlainProgress(out)
    progress.start(DIGEST, 1234)
    progress.advance(DIGEST, 1000)
    assert out.getvalue() == ""
    progress.done(DIGEST, "pulled")
    assert LINE.fullmatch(out.getvalue().strip()), out.getvalue()
