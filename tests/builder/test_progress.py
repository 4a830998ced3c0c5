"""Progress as BuildKit's plain printer writes it, and the terminal view."""

from __future__ import annotations

import io
import re
import threading

from builder.progress import PlainProgress, TerminalProgress


def test_plain_printer_numbers_steps_and_shows_output_cached_done_and_errors() -> None:
    out = io.StringIO()
    progress = PlainProgress(out)
    first = progress.start("[build 1/3] FROM busybox")
    progress.done(first)
    second = progress.start("[build 2/3] RUN echo hi")
    progress.output(second, "hi")
    progress.done(second)
    third = progress.start("[build 3/3] COPY . /src")
    progress.cached(third)
    fourth = progress.start("[stage-1 2/2] RUN exit 3")
    progress.error(fourth, 'process "/bin/sh -c exit 3" did not complete successfully: exit code: 3')
    lines = out.getvalue().splitlines()
    assert lines[0] == "#1 [build 1/3] FROM busybox"
    assert re.fullmatch(r"#1 DONE \d+\.\ds", lines[1])
    assert lines[2] == ""
    assert lines[3] == "#2 [build 2/3] RUN echo hi"
    assert re.fullmatch(r"#2 \d+\.\d{3} hi", lines[4])
    assert re.fullmatch(r"#2 DONE \d+\.\ds", lines[5])
    assert "#3 CACHED" in lines
    assert lines[-2] == '#4 ERROR: process "/bin/sh -c exit 3" did not complete successfully: exit code: 3'


def test_output_from_another_thread_keeps_lines_whole() -> None:
    out = io.StringIO()
    progress = PlainProgress(out)
    step = progress.start("[1/1] RUN seq 1000")

    def chatter(n: int) -> None:
        for i in range(200):
            progress.output(step, f"line {n} {i}")

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.done(step)
    body = [line for line in out.getvalue().splitlines() if " line " in line]
    assert len(body) == 800
    assert all(re.fullmatch(r"#1 \d+\.\d{3} line \d \d+", line) for line in body)


def test_terminal_view_redraws_the_tail_and_folds_finished_steps() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out)
    step = progress.start("[1/2] RUN make")
    for i in range(20):
        progress.output(step, f"compiling {i}")
    progress.done(step)
    cached = progress.start("[2/2] COPY . /src")
    progress.cached(cached)
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movements: the live area is redrawn in place
    assert "=> [1/2] RUN make" in text
    assert "=> [2/2] COPY . /src CACHED" in text
    failing = progress.start("[3/3] RUN false")
    progress.output(failing, "the reason")
    progress.error(failing, "exit code: 1")
    assert "the reason" in out.getvalue().split("ERROR")[-2] + out.getvalue().split("ERROR")[-1]
