"""Where a run's time went, and the share of the wall spent in training steps (a benchmark
of a finished or running run, not a test).

Reads a run folder (results.tsv and each experiment's decision.json) and prints, for
every experiment whose train phase ran: queue, cache (the compile cache's copy in and
out), prestart (the train process's start before the handover), startup (the candidate's import and build_model), first step (compile included), steps (training after the first step), save,
eval, record, the job's total_s; then the means and the steps' share of the train phase's
wall (the budget's train_wall_s) and of total_s.

    python bench/time_share.py [--runs-dir workspace/runs] [--tag TAG] [--last N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import view  # noqa: E402
from orchestrator.results import TIME_SPLIT, ResultsFile, number, time_split  # noqa: E402


def _wall(folder: Path, exp_id: str) -> float | None:
    decision = folder / exp_id / "decision.json"
    try:
        run = json.loads(decision.read_text()).get("run") or {}
    except (OSError, ValueError):
        return None
    return number((run.get("budget") or {}).get("train_wall_s"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "workspace" / "runs")
    parser.add_argument("--tag", help="default: the most recent run")
    parser.add_argument("--last", type=int, default=1000, help="rows (default: every one)")
    args = parser.parse_args(argv)
    tag = args.tag or view.latest_tag(None, args.runs_dir)
    if tag is None:
        print(f"no runs under {args.runs_dir}", file=sys.stderr)
        return 2
    folder = args.runs_dir / tag
    rows = [r for r in ResultsFile(folder / "results.tsv").rows() if r.get("training_s")]
    rows = rows[-args.last :]
    if not rows:
        print(f"run {tag}: no experiment's train phase ran", file=sys.stderr)
        return 2
    head = ["id", "status", *TIME_SPLIT, "total", "steps/wall"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    shares = []
    for row in rows:
        one = time_split([row])
        wall = _wall(folder, row["id"])
        share = one["steps"] / wall if wall and one["steps"] is not None else None
        if share is not None:
            shares.append(share)
        cells = [row["id"], row["status"], *(one[k] for k in TIME_SPLIT), one["total"]]
        cells.append(_cell(share, pct=True))
        print("| " + " | ".join(_cell(c) for c in cells) + " |")
    means = time_split(rows, last=len(rows))
    cells = ["mean", "", *(means[k] for k in TIME_SPLIT), means["total"]]
    wall_share = _cell(sum(shares) / len(shares) if shares else None, pct=True)
    cells.append(wall_share)
    print("| " + " | ".join(_cell(c) for c in cells) + " |")
    print(
        f"\nrun {tag}, {len(rows)} experiments: training steps are {wall_share} of the train "
        f"wall and {_cell(means['steps_share'], pct=True)} of total_s"
    )
    return 0


def _cell(value: object, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.2f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
