"""benchmarks/unwind.py: SIGTERM unwinds a benchmark like Ctrl-C, and waits for a teardown under way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]

PROBE = """
import os, signal
from benchmarks.unwind import shielded, unwind_on_sigterm
unwind_on_sigterm()
done = []
try:
    with shielded():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes enough for a pending handler to run
            pass
        done.append("teardown")
except KeyboardInterrupt:
    done.append("interrupted")
try:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
        pass
except KeyboardInterrupt:
    done.append("unshielded")
print(" ".join(done))
"""


def test_sigterm_waits_for_a_shielded_teardown_then_interrupts() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["teardown", "interrupted", "unshielded"]
