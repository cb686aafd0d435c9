"""Is the gain real? The final re-measure and the ablation, as pure tables.

A run's in-run gain is flattered by selection: every keep is the best of many noisy tries,
judged on the one validation set they were chosen on. Two checks answer for it, and the
report shows both beside the in-run figure:

- the final re-measure (research/loop.py, launch_final_runs): the frontier and the
  baseline re-run with fresh seeds once the run stopped, scored on validation and on the
  held-out test split no candidate and no decision ever saw (noise.final_gain);
- the ablation (`autoresearch ablate`): each kept change reverted from the final frontier
  in turn and re-run; a change whose removal costs more than the noise carries the gain,
  one whose removal costs nothing within the 95% interval is noise.

No I/O here: the CLI runs the experiments, these functions judge and format them.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator import noise

CARRIES = "carries the gain"
HURTS = "hurts (better without it)"
NOISE = "noise (within the 95% CI)"


def ablation(
    frontier: list[float], variants: list[dict[str, Any]], rows: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """One verdict per kept change. frontier: val_bpb of the final frontier's runs;
    variants: {"id", "commit", "description", "values"} where values are the runs of the
    frontier without that change ([] when the revert conflicts: no verdict). rows: the
    run's results, whose repeated runs join the pooled noise sigma (one sigma for every
    commit, as the keep rule assumes).

    loss = mean(without) - mean(frontier): what removing the change costs in val_bpb,
    positive when the change helps; its 95% interval is t975(dof) x sigma x
    sqrt(1/n_without + 1/n_frontier)."""
    groups = [frontier, *(v["values"] for v in variants)]
    squares, dof = noise.pooled_squares([*groups, *noise.measured_groups(rows).values()])
    sigma = math.sqrt(squares / dof) if dof else None
    base = sum(frontier) / len(frontier) if frontier else None
    out = []
    for v in variants:
        values = v["values"]
        row = {k: v[k] for k in ("id", "commit", "description")}
        row |= {"runs": len(values), "without": None, "loss": None, "ci95": None}
        if not values or base is None:
            row["verdict"] = v.get("why") or "not run"
            out.append(row)
            continue
        without = sum(values) / len(values)
        loss = without - base
        half = None
        if sigma is not None:
            half = noise.t975(dof) * sigma * math.sqrt(1 / len(values) + 1 / len(frontier))
        if half is None:
            verdict = "no noise estimate (one run each)"
        elif loss - half > 0:
            verdict = CARRIES
        elif loss + half < 0:
            verdict = HURTS
        else:
            verdict = NOISE
        row |= {"without": without, "loss": loss, "ci95": half, "verdict": verdict}
        out.append(row)
    return out


def _f(value: float | None, plus: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.6f}" if plus else f"{value:.6f}"


def ablation_markdown(result: dict[str, Any]) -> list[str]:
    """The ablation's table (ablation.json as `autoresearch ablate` writes it)."""
    frontier = result["frontier"]
    lines = [
        f"The final frontier `{frontier['commit']}` ran {len(frontier['values'])} times: "
        f"{_f(frontier['mean'])}. Each kept change was reverted from it in turn and run "
        f"{result['runs']} times with the same seeds.",
        "",
        "| id | change | val_bpb without it | cost of removing it | 95% CI | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in result["changes"]:
        ci = "-" if r["ci95"] is None else f"±{r['ci95']:.6f}"
        lines.append(
            f"| {r['id']} | {_cell(r['description'])} | {_f(r['without'])} | "
            f"{_f(r['loss'], plus=True)} | {ci} | {r['verdict']} |"
        )
    return lines


def final_markdown(summary: dict[str, Any]) -> list[str]:
    """The in-run gain beside the final re-measure's, on validation and on test."""
    final = summary.get("final")
    if not final:
        return []
    lines = [
        "| gain over the baseline | val_bpb gain | 95% CI | runs each |",
        "|---|---:|---:|---:|",
        f"| in the run (kept runs: chosen because they scored well) | "
        f"{_f(summary.get('gain'), plus=True)} | - | - |",
    ]
    for key, name in (
        ("val", "re-measured on validation, fresh seeds"),
        ("test", "on the held-out test split, same runs"),
    ):
        part = final.get(key)
        if part:
            ci = "-" if part["ci95"] is None else f"±{part['ci95']:.6f}"
            lines.append(f"| {name} | {_f(part['gain'], plus=True)} | {ci} | {part['runs']} |")
        else:
            lines.append(f"| {name} | - | - | - |")
    return lines


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
