"""The timeline's arithmetic: which phase the requests and bytes of each process fall in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage import timeline

MS = 1_000_000


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    """A timeline of its own for each test: the module's is process-wide."""
    saved = timeline._timeline
    timeline._timeline = timeline._Timeline()
    yield
    timeline._timeline = saved


def test_nothing_is_kept_until_enabled() -> None:
    timeline.mark("exec")
    timeline.at_end(lambda: timeline.mark("probed"))
    timeline.settle()
    assert [p.name for p in timeline.phases()] == ["process start"]


def test_a_phase_has_what_was_done_since_the_mark_before() -> None:
    timeline.enable()
    timeline.count_request()
    timeline.count_received(100)
    timeline.mark("manifest")
    timeline.mark("config")
    timeline.count_request()
    timeline.count_request()
    timeline.count_received(50)
    timeline.mark("TOCs")
    phases = timeline.phases()
    assert [(p.name, p.requests, p.received) for p in phases] == [
        ("process start", 0, 0),
        ("manifest", 1, 100),
        ("config", 0, 0),
        ("TOCs", 2, 50),
    ]
    assert phases[0].at_ms == 0 and all(p.took_ms >= 0 for p in phases)
    assert phases[-1].at_ms == pytest.approx(sum(p.took_ms for p in phases))


def test_another_process_counts_in_the_phases_its_events_fall_in() -> None:
    timeline.enable()
    timeline.mark("mount up")
    up = timeline._timeline.events[-1].at_ns
    timeline.other("lazyfs", "first read", up + 5 * MS, 2, 2000)  # a profile prefetched before it
    timeline._timeline.events.append(timeline.Event("exec", up + 9 * MS, 0, 0))

    def probe() -> None:  # after the command ended: the daemon's totals
        timeline.other("lazyfs", None, up + 60 * MS, 7, 9000)

    timeline.at_end(probe)
    timeline._timeline.events.append(timeline.Event("exit", up + 50 * MS, 0, 0))
    timeline.settle()
    rows = [(p.name, round(p.took_ms), p.requests, p.received) for p in timeline.phases()[1:]]
    # What the daemon did after its last event falls in the last phase.
    assert rows == [("mount up", rows[0][1], 0, 0), ("first read", 5, 2, 2000), ("exec", 4, 0, 0),
                    ("exit", 41, 5, 7000)]  # fmt: skip
