"""A file followed while it is written: the reader gets every byte in order, waits for those not yet
written, sees a retry's rewrite, and fails (never hangs) when the writer gives up."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from storage.growing import DownloadAbandoned, GrowingFile


def follow(growing: GrowingFile) -> tuple[threading.Thread, list[bytes | Exception]]:
    """A thread reading the whole file in small reads; its result (bytes or the error) in the list."""
    result: list[bytes | Exception] = []
    reader = growing.reader()

    def read() -> None:
        try:
            result.append(b"".join(iter(lambda: reader.read(1000), b"")))
        except Exception as e:  # the test looks at it
            result.append(e)
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    return thread, result


def test_the_reader_gets_what_is_written_as_it_is_written(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    with open(tmp_path / "blob", "w+b") as f:
        growing = GrowingFile(f, "blob")
        thread, result = follow(growing)
        for start in range(0, len(data), 70_000):
            growing.write(data[start : start + 70_000])
            time.sleep(0.01)
        assert thread.is_alive()  # it waits for more until the writer says it is done
        growing.finish()
        thread.join(10)
    assert result == [data]


def test_a_retry_rewrites_from_the_start(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    with open(tmp_path / "blob", "w+b") as f:
        growing = GrowingFile(f, "blob")
        growing.write(data[:20_000])
        growing.seek(0)
        growing.truncate()
        thread, result = follow(growing)
        growing.write(data)
        growing.finish()
        thread.join(10)
    assert result == [data]


def test_an_abandoned_download_fails_the_reader(tmp_path: Path) -> None:
    with open(tmp_path / "blob", "w+b") as f:
        growing = GrowingFile(f, "blob sha256:abc")
        thread, result = follow(growing)
        growing.write(b"x" * 5000)
        growing.abandon()
        thread.join(10)
    assert not thread.is_alive()
    (error,) = result
    assert isinstance(error, DownloadAbandoned) and "blob sha256:abc" in str(error)


def test_a_closed_reader_reads_no_more(tmp_path: Path) -> None:
    with open(tmp_path / "blob", "w+b") as f:
        growing = GrowingFile(f, "blob")
        growing.write(b"abc")
        reader = growing.reader()
        assert reader.read(2) == b"ab"
        reader.close()
        with pytest.raises(DownloadAbandoned, match="closed"):
            reader.read(1)


def test_closing_the_reader_wakes_a_read_waiting_in_another_thread(tmp_path: Path) -> None:
    with open(tmp_path / "blob", "w+b") as f:
        growing = GrowingFile(f, "blob")
        reader = growing.reader()
        failed: list[Exception] = []

        def read() -> None:
            try:
                reader.read(10)
            except DownloadAbandoned as e:
                failed.append(e)

        thread = threading.Thread(target=read)
        thread.start()
        time.sleep(0.1)
        assert thread.is_alive()  # nothing written: it waits
        reader.close()
        thread.join(10)
    assert not thread.is_alive() and len(failed) == 1
