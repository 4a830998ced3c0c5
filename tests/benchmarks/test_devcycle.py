"""The development cycle's part of the hello report: one row per dev image, its ratios and notes."""

from __future__ import annotations

from pathlib import Path

from benchmarks.devcycle import cycles_of, edit, render_section


def cycle(image: str, lazy: float, eager: float, own: float) -> dict[str, object]:
    def half(ready: float) -> dict[str, float]:
        return {"pull_s": 0.5, "run_s": ready - 0.5, "ready_s": ready, "total_s": 1.0 + ready}

    return {
        "image": image,
        "edited": "app.py",
        "build_s": 0.4,
        "push_s": 0.6,
        "inherited": f"access profile inherited from r/bench/{image}:1: 9 pieces (7 kept, 2 mapped by path)",
        "lazy": half(lazy),
        "eager": half(eager),
        "lazy_own": half(own),
    }


def test_a_row_per_dev_image_with_the_cycle_ratio_and_the_profile_against_its_own() -> None:
    results = {"dev_cycle": [cycle("flask", 2.0, 18.0, 1.6), cycle("gcc", 3.0, 27.0, 3.0)]}
    lines = render_section(results)
    flask = next(line for line in lines if line.startswith("| flask |"))
    # cycle lazy 1 + 2 = 3 s, eager 1 + 18 = 19 s: 6.33x; inherited 2.0 s over own 1.6 s: 1.25.
    assert "| 3.00 | 19.00 | 6.33x | 1.25 |" in flask
    gcc = next(line for line in lines if line.startswith("| gcc |"))
    assert "| 4.00 | 28.00 | 7.00x | 1.00 |" in gcc
    assert any("cycle is 6.67x faster lazily" in line for line in lines)  # the median of 6.33 and 7
    assert any(line.startswith("- flask: access profile inherited from r/bench/flask:1") for line in lines)


def test_failures_an_old_single_cycle_and_none() -> None:
    failed = cycle("openjdk", 2.0, 20.0, 2.0)
    failed["lazy_own"] = {"error": "lazyctr run failed (1)"}
    lines = render_section({"dev_cycle": [failed, {"image": "python", "error": "build failed"}]})
    assert "- openjdk lazy_own: failed: lazyctr run failed (1)" in lines
    assert "- python: failed: build failed" in lines
    assert next(line for line in lines if line.startswith("| openjdk |")).endswith("| 21.00 | 7.00x | - |")
    old = {"image": "flask", "edited": "app.py", "build_s": 1.0, "push_s": 2.0}
    old["lazy"] = {"pull_s": 0.5, "run_s": 1.0, "total_s": 4.5}
    assert cycles_of({"dev_cycle": old}) == [old]  # a suite of an earlier version kept one object
    assert "| flask | one edit of app.py | 1.00 | 2.00 | 1.50 |" in "\n".join(
        render_section({"dev_cycle": old})
    )
    assert render_section({"dev_cycle": None}) == [] and render_section({}) == []


def test_an_edit_appends_a_line_that_changes_the_image(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    edit(tmp_path, "app.py")
    edit(tmp_path, "Dockerfile")
    assert (tmp_path / "app.py").read_text().splitlines()[-1].startswith("# edited at ")
    assert (tmp_path / "Dockerfile").read_text().splitlines()[-1].startswith("ENV EDITED=")  # not a comment
