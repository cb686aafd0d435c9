"""`autoresearch ablate`: which kept changes carry a run's gain, and which are noise.

Each kept change is reverted from the final frontier in turn (a three-way merge of the
change's inverse, so the later changes stay), and the frontier and every variant are run
`--runs` times with the same fresh seeds through this machine's runner, as `verify` runs.
The table (orchestrator/trust.py) goes to stdout and to ablation.json in the run folder,
where `autoresearch report` finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator import defaults, logs, trust
from orchestrator.cli.evaluate import run_once
from orchestrator.cli.helpers import (
    CommandError,
    add_common,
    add_runner,
    data_fingerprint,
    latest_tag,
    load_settings,
    recorded_run,
    resolve_profile,
    runs_folder,
)

SEED = 2000  # past every seed a run uses for its noise runs and confirmations


def add_ablate(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="revert each kept change from the final frontier in turn, re-run, and say "
        "which carry the gain",
    )
    add_common(p)
    p.add_argument("--tag", help="run name (default: the most recent run)")
    p.add_argument("--runs", type=int, default=2, help="runs of each variant (default 2)")
    p.add_argument("--gpu", type=int)
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    add_runner(p)


def cmd_ablate(args: argparse.Namespace) -> int:
    from orchestrator.gitstore import GitStore
    from orchestrator.report import row_commit
    from worker import contract
    from worker.vocab import Outcome, RowStatus

    if args.runs < 1:
        raise CommandError(f"runs={args.runs}: must be 1 or more", 2)
    s = load_settings(args)
    git = GitStore(s.repo, s.train_path)
    runs_dir = runs_folder(s, git.repo)
    tag = latest_tag(runs_dir, args.tag)
    kept = [r for r in _recorded_rows(runs_dir, tag) if r["status"] == RowStatus.KEEP]
    if len(kept) < 2:
        raise CommandError(f"run {tag} kept no change beyond its baseline: nothing to ablate", 2)
    rows, _, run = recorded_run(runs_dir, tag, kept[0]["id"])
    commits = [row_commit(git, tag, row) for row in kept]
    if None in commits:
        missing = kept[commits.index(None)]
        raise CommandError(f"commit {missing['commit']} of {missing['id']} is not in {s.repo}", 1)
    s.profile = run["profile"]
    profile, data_dir = resolve_profile(s, logs.get())
    fingerprint = data_fingerprint(data_dir)
    if fingerprint != run["fingerprint"]:
        raise CommandError(f"data {fingerprint} differs from the run's {run['fingerprint']}", 1)
    frontier = git.read(commits[-1])

    def measure(name: str, source: str, k: int) -> float | None:
        spec = contract.make_spec(
            id=f"ablate-{name}-{k}",
            tag=tag,
            parent="",
            commit=commits[-1],
            source=source,
            profile=profile.name,
            fingerprint=fingerprint,
            budget=run["budget"],
            seed=SEED + k,
            description=f"ablate {name}",
        )
        result = run_once(s, spec, data_dir, runs_dir, "autoresearch-ablate-")
        print(f"ablate {name} run {k + 1}/{args.runs}: {result['status']} "
              f"{result['val_bpb']}", file=sys.stderr)  # fmt: skip
        return result["val_bpb"] if result["status"] == Outcome.OK else None

    variants = _variants(git, kept, commits, frontier)
    # Seed by seed, the frontier and then each variant: whatever drifts while they run
    # (the machine's load) drifts for all alike.
    values: list[float] = []
    for k in range(args.runs):
        for name, source, into in [("frontier", frontier, values)] + [
            (v["id"], v["source"], v["values"]) for v in variants if "source" in v
        ]:
            if (value := measure(name, source, k)) is not None:
                into.append(value)
    for v in variants:
        v.pop("source", None)
    if not values:
        raise CommandError("the final frontier did not score: no ablation", 1)
    out = {
        "tag": tag,
        "runs": args.runs,
        "frontier": {
            "commit": kept[-1]["commit"],
            "values": values,
            "mean": sum(values) / len(values),
        },
        "changes": trust.ablation(values, variants, rows),
    }
    (runs_dir / tag / defaults.ABLATION_FILE).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2) if args.json else "\n".join(trust.ablation_markdown(out)))
    return 0


def _variants(git: Any, kept: list[dict], commits: list[str], frontier: str) -> list[dict]:
    """The final frontier without each kept change in turn (its "source"), or why not."""
    variants = []
    for i in range(1, len(kept)):
        # The change i is its keep's diff against the keep before it: merging the inverse
        # (theirs: the source before it) into the frontier removes it and keeps the rest.
        reverted = git.merge3(git.read(commits[i]), frontier, git.read(commits[i - 1]))
        row = kept[i]
        variant = {"id": row["id"], "commit": row["commit"], "description": row["description"]}
        if reverted is None:
            variants.append({**variant, "values": [], "why": "its revert conflicts: not run"})
        else:
            variants.append({**variant, "values": [], "source": reverted})
    return variants


def _recorded_rows(runs_dir: Any, tag: str) -> list[dict[str, str]]:
    from orchestrator.results import ResultsFile

    return ResultsFile(runs_dir / tag / defaults.RESULTS_FILE).rows()
