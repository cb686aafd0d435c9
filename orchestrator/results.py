"""results.tsv: one row per attempt, appended whole, never rewritten.

The first five columns are the original autoresearch log (commit, val_bpb, memory_gb,
status, description) so existing notebooks read it; more columns follow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
)
# Status of a row: the decision for a scored candidate, else what stopped it.
ROW_STATUSES = (
    "keep",
    "discard",
    "crash",
    "oom",
    "nan",
    "timeout",
    "overtime",
    "rejected",
    "infra_error",
    "noise",  # a run of the frontier with another seed, for the noise floor
    "confirm",  # the re-run of a would-be keep (its candidate's row says keep or discard)
    "reapplied",  # won on an older frontier; its change was queued again on the new one
    "stale",  # won on an older frontier; its change conflicts with the new one
)


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
    kept = [r for r in rows if r["status"] == "keep"]
    return kept[-1] if kept else None


def counts(rows: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out
