"""The proposer's prompt as a run grows: the journal's size at 10, 100 and 1,000 rows.

Why: the journal lists every attempt (orchestrator/journal.py), so the prompt grows with
the run until the journal's budget (AUTORESEARCH_JOURNAL_TOKENS) caps it. This prints the
user message the LLM proposer sends (workspace/train.py + journal + instruction) and the
system prompt (program.md), in tokens estimated at 4 characters a token, for synthetic
rows: descriptions like the mutate proposer's and LLM-length ones, each with what its diff
touched, 3% keeps.

    python bench/journal.py [--budget 6000]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import defaults  # noqa: E402
from orchestrator.journal import estimate_tokens, journal  # noqa: E402
from orchestrator.proposers.base import ProposalRequest  # noqa: E402
from orchestrator.proposers.llm import build_user_message  # noqa: E402


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = [{"id": "0000", "status": "keep", "val_bpb": "1.000000", "description": "baseline"}]
    for i in range(1, n + 1):
        status = rng.choices(["discard", "keep", "crash", "rejected"], [85, 3, 8, 4])[0]
        gain = rng.uniform(-0.02, 0.01)
        out.append(
            {
                "id": f"{i:04d}",
                "status": status,
                "val_bpb": f"{1 - gain:.6f}" if status in ("keep", "discard") else "",
                "description": rng.choice(
                    [
                        f"MATRIX_LR {rng.uniform(0.01, 0.08):.3f} -> {rng.uniform(0.01, 0.08):.3f}",
                        "replace ReLU^2 with SwiGLU in the MLP and shrink its width to keep "
                        "the parameter count, since gated units train faster per token",
                    ]
                ),
                "error": f"gain {gain:+.6f} not above the margin 0.002000"
                if status == "discard"
                else "",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=defaults.JOURNAL_TOKENS)
    args = parser.parse_args()
    source = (ROOT / "workspace" / "train.py").read_text()
    system = estimate_tokens((ROOT / "program.md").read_text())
    print(f"journal budget {args.budget} tokens; system prompt (program.md) {system} tokens")
    print(f"{'rows':>6} {'journal':>8} {'listed':>7} {'user msg':>9} {'prompt':>7}")
    for n in (10, 100, 1000):
        rows = synthetic_rows(n)
        touched = {r["id"]: "MATRIX_LR, WARMUP_RATIO; +2 -2 lines" for r in rows}
        text = journal(rows, args.budget, touched)
        user = build_user_message(ProposalRequest(source, text, "", 0))
        listed = sum(1 for line in text.splitlines() if line.startswith("  0"))
        print(
            f"{n:>6} {estimate_tokens(text):>8} {listed:>7} {estimate_tokens(user):>9} "
            f"{system + estimate_tokens(user):>7}"
        )


if __name__ == "__main__":
    main()
