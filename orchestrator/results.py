"""results.tsv: one row per attempt, appended whole, never rewritten.

The first five columns are the original autoresearch log (commit, val_bpb, memory_gb,
status, description) so existing notebooks read it; more columns follow.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator import noise
from worker.vocab import RAN, RowStatus

COLUMNS = (
    "commit",
    "val_bpb",
    "memory_gb",
    "status",
    "description",
    "id",
    "parent",
    "proposer",
    "worker",
    "training_s",
    "total_s",
    "tokens",
    "params",
    "mfu",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "error",
    "time",
    "source_hash",
    "seed",
    "cage",  # docker, process, or process-weak: what held the candidate (README's table)
    "why",  # the LLM's one-line hypothesis (WHY:), if it gave one
    "program",  # sha256 (12) of the program.md an LLM proposal was made under
    "hardware",  # accelerator (or CPU), driver, CUDA, torch, image: what ran it
    "test_bpb",  # on the held-out test split: final re-measure rows only
    # Where an experiment's time went (seconds), besides training_s and total_s: the
    # candidate's start-up (import, build_model), compile and first step, saving the
    # weights, the eval phase's scoring; the train process's start before the handover,
    # the queue, and from the worker's end to this row; the compile cache's copy in and out
    # (seconds) and the size of the copy (MB, 0 when the candidate started cold).
    "startup_s",
    "first_step_s",
    "save_s",
    "eval_s",
    "prestart_s",
    "queue_s",
    "record_s",
    "cache_s",
    "cache_mb",
)
# The time split `status` and the report show, in the order an experiment spends it
# ("steps": training_s less the first step, the training the wall is for).
TIME_SPLIT = (
    "queue",
    "cache",
    "prestart",
    "startup",
    "first_step",
    "steps",
    "save",
    "eval",
    "record",
)
TIME_ROWS = 20  # the split is the mean over this many of the last rows that ran
# Status of a row: the decision for a scored candidate, else what stopped it.
ROW_STATUSES = tuple(RowStatus)


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 1e6 else f"{value:.0f}"
    return " ".join(str(value).split())[:300]


@dataclass
class ResultsFile:
    path: Path

    def __post_init__(self) -> None:
        self._cache: tuple[tuple[int, int], list[dict[str, str]]] | None = None

    def rows(self) -> list[dict[str, str]]:
        """Every row; parsed again only when the file changed (the loop asks often)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == key:
            return list(self._cache[1])
        # Plain tab-split: fields are written flat (no tabs or newlines), never quoted.
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines:
            return []
        header = lines[0].split("\t")
        rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]
        self._cache = (key, rows)
        return list(rows)

    def append(self, row: dict[str, Any]) -> dict[str, str]:
        """Write one complete line with a single write and fsync it: no half rows.
        Returns the row as written (every column, as text)."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown results columns {sorted(unknown)}")
        if row.get("status") not in ROW_STATUSES:
            raise ValueError(f"bad row status {row.get('status')!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = {c: _clean(row.get(c)) for c in COLUMNS}
        line = "\t".join(written.values()) + "\n"
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(("\t".join(COLUMNS) + "\n" if new else "") + line)
            fh.flush()
            os.fsync(fh.fileno())
        return written

    def tail_text(self, n: int) -> str:
        if not self.path.is_file():
            return ""
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return "\n".join(lines[:1] + (lines[1:][-n:] if n > 0 else []))


def best_kept(rows: list[dict[str, str]]) -> dict[str, str] | None:
    """The last keep row: with keeps only on improvement, it is the best so far."""
    kept = [r for r in rows if r["status"] == RowStatus.KEEP]
    return kept[-1] if kept else None


def counts(rows: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out


# A state hash not updated for this long belongs to an orchestrator that is gone.
STALE_STATE_S = 120.0


def epoch(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return 0.0


def number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def time_split(rows: list[dict[str, str]], last: int = TIME_ROWS) -> dict[str, Any] | None:
    """Mean seconds of each part of TIME_SPLIT over the last rows whose train phase ran
    (training_s present), and the share of total_s (train phase start to eval end) spent
    in training steps. None before any such row; a part no row measured is None."""
    ran = [r for r in rows if number(r.get("training_s")) is not None][-last:]
    if not ran:
        return None

    def mean(values: list[float | None]) -> float | None:
        found = [v for v in values if v is not None]
        return sum(found) / len(found) if found else None

    def part(row: dict[str, str], name: str) -> float | None:
        if name == "steps":
            training, first = number(row.get("training_s")), number(row.get("first_step_s"))
            return None if training is None else training - (first or 0.0)
        return number(row.get(f"{name}_s"))

    out: dict[str, Any] = {name: mean([part(r, name) for r in ran]) for name in TIME_SPLIT}
    total = mean([number(r.get("total_s")) for r in ran])
    out |= {"total": total, "rows": len(ran)}
    out["steps_share"] = out["steps"] / total if total and out["steps"] is not None else None
    return out


def time_text(split: dict[str, Any]) -> str:
    """time_split as one line: each part's mean seconds, then the steps' share."""
    parts = ", ".join(
        f"{name.replace('_', ' ')} {split[name]:.2f}"
        for name in TIME_SPLIT
        if split[name] is not None
    )
    share = split["steps_share"]
    tail = "" if share is None else f"; steps {100 * share:.1f}% of {split['total']:.2f} s"
    return f"{parts}{tail} (mean s of the last {split['rows']})"


def summary(all_rows: list[dict[str, str]], state: dict[str, str], now: float) -> dict[str, Any]:
    """Best, gain over the baseline, counts, noise floor, LLM use, experiments per hour."""
    kept = []
    for r in all_rows:
        if r["status"] == RowStatus.KEEP:
            # A kept commit's value is the mean of its runs (noise runs, confirmations).
            runs = noise.measurements(all_rows, r["commit"])
            kept.append(
                {
                    "id": r["id"],
                    "commit": r["commit"],
                    "val_bpb": number(r["val_bpb"]),
                    "mean": sum(runs) / len(runs) if runs else None,
                    "runs": len(runs),
                    "description": r["description"],
                    "why": r.get("why", ""),
                }
            )
    baseline = {"id": kept[0]["id"], "val_bpb": kept[0]["mean"]} if kept else None
    best = None
    if kept:
        best = {k: kept[-1][k] for k in ("id", "commit", "description")}
        best["val_bpb"] = kept[-1]["mean"] or kept[-1]["val_bpb"]
    base_value = baseline["val_bpb"] if baseline else None
    sigma, dof = noise.pooled_sigma(all_rows)
    ran = [r for r in all_rows if r["status"] in RAN]
    # The rate of this session (the state's start): an earlier session's rows and the time
    # between sessions would both distort it.
    started = number(state.get("started")) or (epoch(all_rows[0]["time"]) if all_rows else now)
    session = [r for r in ran if epoch(r["time"]) >= started - 1]
    running = state.get("status") == "running" and now - (number(state.get("updated")) or 0) < (
        STALE_STATE_S
    )
    end = now if running else (epoch(all_rows[-1]["time"]) if all_rows else now)
    hours = max(end - started, 1.0) / 3600
    return {
        "rows": len(all_rows),
        "counts": counts(all_rows),
        # Rows by the cage that held their candidate (process-weak: the kernel could not).
        "cages": dict(Counter(r["cage"] for r in all_rows if r.get("cage"))),
        "baseline": baseline,
        "best": best,
        "gain": (base_value - best["val_bpb"]) if best and base_value else None,
        # The final re-measure's gain, on validation and test (noise.final_gain).
        "final": (
            noise.final_gain(all_rows, kept[0]["commit"], kept[-1]["commit"])
            if len(kept) > 1
            else None
        ),
        "kept": kept,
        "noise": {
            "sigma": sigma if dof else None,
            "dof": dof,
            "margin": number(state.get("margin")),
        },
        "llm": {
            "prompt_tokens": int(sum(number(r.get("prompt_tokens")) or 0 for r in all_rows)),
            "completion_tokens": int(
                sum(number(r.get("completion_tokens")) or 0 for r in all_rows)
            ),
            "cost_usd": sum(number(r.get("cost_usd")) or 0 for r in all_rows),
            "model": state.get("model", ""),
        },
        "experiments": len(ran),
        "time": time_split(all_rows),
        "hours": hours,  # this session's
        "per_hour": len(session) / hours,
        "running": running,
        # A "running" state nobody has refreshed for minutes: its orchestrator is gone.
        "stop_reason": state.get("stop_reason", "")
        or (
            "stopped (orchestrator gone)"
            if state.get("status") == "running" and not running
            else ""
        ),
    }
