"""The noise floor and the keep rule, as pure functions of results.tsv rows.

A single run's val_bpb moves with the seed and the machine's timing. Repeated runs of one
commit (the baseline's noise runs, a candidate and its confirmation) measure that spread;
the pooled standard deviation over every such group is the noise floor sigma. A gain
counts only above max(min_delta, z * sigma). `bench/false_keeps.py` simulates this rule
against plain "lower is better" on a noisy metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from worker.vocab import FRONTIER, MEASURED


def row_value(row: dict[str, str], column: str = "val_bpb") -> float | None:
    """A row's val_bpb (or another score column) when it is a real measurement (a crash's
    0.0 is not)."""
    try:
        value = float(row.get(column) or 0)
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def warm_only(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """One commit's runs, less the cold ones when it has warm ones. A run given no compile
    cache (cache_mb 0) compiled inside its wall, which a run with the frontier's cache did
    not: on a GPU that is a tenth of the wall, so the two are not one measurement (the
    baseline's first run is cold, its noise runs warm). On a CPU nothing compiles and every
    run is cold: all are kept. A row with no cache_mb (written before it existed) is not
    known to be cold: kept."""
    warm = [r for r in rows if r.get("cache_mb") in (None, "") or row_value(r, "cache_mb")]
    return warm or rows


def measured(rows: list[dict[str, str]], column: str = "val_bpb") -> list[float]:
    """One commit's measured values of `column` (row_value), from its warm runs when it
    has some (warm_only)."""
    scored = [(row, value) for row in rows if (value := row_value(row, column)) is not None]
    kept = {id(row) for row in warm_only([row for row, _ in scored])}
    return [value for row, value in scored if id(row) in kept]


def measurements(rows: Iterable[dict[str, str]], commit: str, statuses=FRONTIER) -> list[float]:
    """Every val_bpb measured for one commit (7-char prefix match, as results.tsv holds),
    its warm runs only when it has some (warm_only)."""
    return measured([r for r in rows if r["status"] in statuses and r["commit"] == commit[:7]])


def commit_value(rows: Iterable[dict[str, str]], commit: str) -> float | None:
    """The mean val_bpb of a kept commit over its runs, None if it has none."""
    values = measurements(rows, commit)
    return sum(values) / len(values) if values else None


def pooled_sigma(rows: Iterable[dict[str, str]]) -> tuple[float, int]:
    """(sigma, degrees of freedom): the pooled standard deviation of repeated runs.

    Groups are commits measured more than once; each contributes its squared deviations
    from its own mean and n - 1 degrees of freedom. (0.0, 0) when nothing was repeated.
    """
    squares, dof = pooled_squares(measured_groups(rows).values())
    return (math.sqrt(squares / dof), dof) if dof else (0.0, 0)


def measured_groups(rows: Iterable[dict[str, str]]) -> dict[str, list[float]]:
    """commit -> its measured val_bpb values (rows in MEASURED; warm_only)."""
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["status"] in MEASURED:
            groups.setdefault(row["commit"], []).append(row)
    values = {commit: measured(group) for commit, group in groups.items()}
    return {commit: found for commit, found in values.items() if found}


def margin(sigma: float, z: float, min_delta: float) -> float:
    """The smallest gain that counts: above the fixed floor and above z noise sigmas."""
    return max(min_delta, z * sigma)


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; above 30 the
# expansion in 1/dof is within 0.002 of the exact value.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t: a 95% interval is mean +- t975 x standard error."""
    if dof < 1:
        return math.inf
    if dof <= len(_T975):
        return _T975[dof - 1]
    return 1.95996 + 2.37227 / dof + 2.82250 / dof**2


def pooled_squares(groups: Iterable[list[float]]) -> tuple[float, int]:
    squares, dof = 0.0, 0
    for values in groups:
        if len(values) > 1:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return squares, dof


def final_gain(rows: list[dict[str, str]], baseline: str, frontier: str) -> dict | None:
    """The gain of the frontier over the baseline as the final re-measure saw it: fresh
    seeds, after the search stopped, so no selection flatters it (the in-run figure is the
    mean of runs that were kept because they scored well). None without final rows of both.

    For val_bpb and test_bpb: each commit's mean over its `final` rows, the gain (baseline
    minus frontier: positive is better) and the half-width of its 95% confidence interval,
    t975(dof) x sigma x sqrt(1/n_frontier + 1/n_baseline). The keep rule's assumption
    holds here too: one noise sigma for every commit. For val_bpb sigma is pooled over
    every commit the run measured more than once and the two final groups; for test_bpb,
    which nothing else measures, over the two final groups alone.
    """

    def finals(commit: str, column: str) -> list[float]:
        mine = [r for r in rows if r["status"] == "final" and r["commit"] == commit[:7]]
        return measured(mine, column)

    out: dict[str, Any] = {"baseline": baseline[:7], "frontier": frontier[:7]}
    for column, name in (("val_bpb", "val"), ("test_bpb", "test")):
        front, base = finals(frontier, column), finals(baseline, column)
        if not (front and base):
            out[name] = None
            continue
        squares, dof = pooled_squares([front, base])
        if name == "val":
            more_squares, more_dof = pooled_squares(measured_groups(rows).values())
            squares, dof = squares + more_squares, dof + more_dof
        sigma = math.sqrt(squares / dof) if dof else None
        half = (
            None if sigma is None else t975(dof) * sigma * math.sqrt(1 / len(front) + 1 / len(base))
        )
        out[name] = {
            "frontier": sum(front) / len(front),
            "baseline": sum(base) / len(base),
            "gain": sum(base) / len(base) - sum(front) / len(front),
            "ci95": half,
            "runs": min(len(front), len(base)),
            "dof": dof,
        }
    return out if out["val"] else None
