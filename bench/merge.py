"""Late winners carried over: how often a winner's change can be re-applied (a benchmark).

Why: with W workers, a candidate that won on an older frontier is re-applied on the new
one when the two changes merge, else it is `stale` (or the LLM must combine them). The
mutate proposer edits train.py's block of constants, one line per constant, so two edits
often touch adjacent lines, which `git merge-file` calls a conflict.

What: pairs of independent proposals (the mutate proposer, seeds 0..N) on the same
train.py: one plays the new frontier, the other the late winner. For each pair, whether
the winner's change merges onto the frontier: by `git merge-file` alone (the loop before
orchestrator/merge.py), and by GitStore.merge3 (line merge, then by constant, then by
hunk). Pairs that edit the same constant collide under both, as they should.

    python bench/merge.py [--pairs 500] [--profile cpu] [--train workspace/train.py]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gitrepo import make_repo  # noqa: E402

from orchestrator import gitstore  # noqa: E402
from orchestrator.proposers.base import ProposalRequest  # noqa: E402
from orchestrator.proposers.mutate import MutateProposer, find_constants  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--train", type=Path, default=ROOT / "workspace" / "train.py")
    args = parser.parse_args()
    base = args.train.read_text()
    proposer = MutateProposer(args.profile)

    def propose(seed: int) -> str:
        return proposer.propose(ProposalRequest(base, "", "", seed)).source

    with tempfile.TemporaryDirectory(prefix="autoresearch-merge-bench-") as tmp:
        store = gitstore.GitStore(make_repo(Path(tmp) / "repo", base))
        finer = gitstore.finer_merge
        counts = {"line": 0, "finer": 0, "same constant": 0}
        for k in range(args.pairs):
            ours, theirs = propose(2 * k), propose(2 * k + 1)
            gitstore.finer_merge = lambda b, o, t: None
            counts["line"] += store.merge3(base, ours, theirs) is not None
            gitstore.finer_merge = finer
            counts["finer"] += store.merge3(base, ours, theirs) is not None
            counts["same constant"] += bool(_changed(base, ours) & _changed(base, theirs))
    n = args.pairs
    print(f"{n} pairs of mutate proposals on {args.train.name} ({args.profile} profile)\n")
    print("| merge | re-applied | stale |")
    print("|---|---|---|")
    for name in ("line", "finer"):
        print(f"| {name} | {counts[name] / n:.0%} | {1 - counts[name] / n:.0%} |")
    print(
        f"\npairs editing the same constant (a real collision): {counts['same constant'] / n:.0%}"
    )
    return 0


def _changed(base: str, source: str) -> set[str]:
    before = {c.name: c.value for c in find_constants(base)}
    return {c.name for c in find_constants(source) if before.get(c.name) != c.value}


if __name__ == "__main__":
    sys.exit(main())
