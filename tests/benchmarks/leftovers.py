"""What a peer's runs may leave behind on the host, for tests that compare before and after a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def traces(markers: Sequence[str]) -> set[str]:
    """Mount points and the command lines of running processes that contain any of `markers`."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found = {point for point in points if any(marker in point for marker in markers)}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(marker.encode() in cmdline for marker in markers):
                found.add(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found
