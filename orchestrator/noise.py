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

from worker.vocab import FRONTIER, MEASURED


def row_value(row: dict[str, str]) -> float | None:
    """A row's val_bpb when it is a real measurement (a crash's 0.0 is not)."""
    try:
        value = float(row.get("val_bpb") or 0)
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def measurements(rows: Iterable[dict[str, str]], commit: str, statuses=FRONTIER) -> list[float]:
    """Every val_bpb measured for one commit (7-char prefix match, as results.tsv holds)."""
    out = []
    for row in rows:
        if row["status"] in statuses and row["commit"] == commit[:7]:
            value = row_value(row)
            if value is not None:
                out.append(value)
    return out


def commit_value(rows: Iterable[dict[str, str]], commit: str) -> float | None:
    """The mean val_bpb of a kept commit over its runs, None if it has none."""
    values = measurements(rows, commit)
    return sum(values) / len(values) if values else None


def pooled_sigma(rows: Iterable[dict[str, str]]) -> tuple[float, int]:
    """(sigma, degrees of freedom): the pooled standard deviation of repeated runs.

    Groups are commits measured more than once; each contributes its squared deviations
    from its own mean and n - 1 degrees of freedom. (0.0, 0) when nothing was repeated.
    """
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row["status"] in MEASURED:
            value = row_value(row)
            if value is not None:
                groups.setdefault(row["commit"], []).append(value)
    squares, dof = 0.0, 0
    for values in groups.values():
        if len(values) > 1:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return (math.sqrt(squares / dof), dof) if dof else (0.0, 0)


def margin(sigma: float, z: float, min_delta: float) -> float:
    """The smallest gain that counts: above the fixed floor and above z noise sigmas."""
    return max(min_delta, z * sigma)
