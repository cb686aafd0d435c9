"""The noise floor and margin, from results rows."""

from __future__ import annotations

import statistics

import pytest

from orchestrator import noise


def row(commit: str, val: float, status: str) -> dict[str, str]:
    return {"commit": commit, "val_bpb": f"{val:.6f}", "status": status}


ROWS = [
    row("aaaaaaa", 1.00, "keep"),
    row("aaaaaaa", 1.02, "noise"),
    row("aaaaaaa", 0.98, "noise"),
    row("bbbbbbb", 0.90, "keep"),
    row("bbbbbbb", 0.91, "confirm"),
    row("ccccccc", 0.95, "discard"),  # run once: no spread to measure
    row("ddddddd", 0.00, "crash"),
    row("ddddddd", 0.00, "crash"),
]


def test_pooled_sigma_over_repeated_commits():
    sigma, dof = noise.pooled_sigma(ROWS)
    squares = 2 * 0.02**2 + 2 * 0.005**2  # deviations from each group's own mean
    assert dof == 3
    assert sigma == pytest.approx((squares / 3) ** 0.5)
    only_one_group = noise.pooled_sigma(ROWS[:3])[0]
    assert only_one_group == pytest.approx(statistics.stdev([1.00, 1.02, 0.98]))


def test_nothing_repeated_means_no_estimate():
    assert noise.pooled_sigma([row("a", 1.0, "keep"), row("b", 0.9, "discard")]) == (0.0, 0)


def test_commit_value_is_the_mean_of_the_frontier_runs():
    assert noise.commit_value(ROWS, "aaaaaaa0123") == pytest.approx(1.0)
    assert noise.commit_value(ROWS, "bbbbbbb") == pytest.approx(0.905)
    assert noise.commit_value(ROWS, "ccccccc") is None  # discarded: not a frontier


def test_a_cold_run_is_left_out_where_its_commit_has_warm_ones():
    """The baseline's first run compiled in its wall (no cache); its noise runs did not."""
    cold, warm = row("aaaaaaa", 1.10, "keep"), row("aaaaaaa", 1.00, "noise")
    warm2 = row("aaaaaaa", 1.02, "noise")
    cold["cache_mb"], warm["cache_mb"], warm2["cache_mb"] = "0.000000", "85.2", "85.2"
    rows = [cold, warm, warm2, row("bbbbbbb", 0.9, "keep"), row("bbbbbbb", 0.92, "confirm")]
    assert noise.commit_value(rows, "aaaaaaa") == pytest.approx(1.01)
    assert noise.measured_groups(rows) == {"aaaaaaa": [1.00, 1.02], "bbbbbbb": [0.9, 0.92]}
    # All cold (a CPU, where nothing compiles): every run counts.
    cold2 = {**row("aaaaaaa", 1.0, "noise"), "cache_mb": "0.000000"}
    assert noise.commit_value([cold, cold2], "aaaaaaa") == pytest.approx(1.05)
    # The final re-measure's means too.
    finals = [{**r, "status": "final"} for r in (cold, warm, warm2)]
    finals += [{**row("bbbbbbb", 0.9, "final"), "cache_mb": "85.2"}]
    gain = noise.final_gain(finals, "aaaaaaa", "bbbbbbb")["val"]
    assert gain["baseline"] == pytest.approx(1.01) and gain["gain"] == pytest.approx(0.11)


def test_margin_is_the_larger_of_the_floor_and_z_sigmas():
    assert noise.margin(0.01, 2.0, 0.001) == pytest.approx(0.02)
    assert noise.margin(0.0001, 2.0, 0.001) == 0.001
