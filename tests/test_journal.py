"""The journal (orchestrator/journal.py): every attempt, compact, within its token budget."""

from __future__ import annotations

import random

from orchestrator.journal import diff_summary, estimate_tokens, journal, plateau
from orchestrator.proposers.base import ProposalRequest
from orchestrator.proposers.llm import build_user_message


def rows(n: int, seed: int = 0, keeps: int = 1) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = [{"id": "0000", "status": "keep", "val_bpb": "2.400000", "description": "baseline"}]
    out += [{"id": "0001", "status": "noise", "val_bpb": "2.41", "description": "noise 2/3"}]
    for i in range(2, n + 2):
        status = rng.choice(["discard"] * 30 + ["keep"] * keeps + ["crash", "rejected", "timeout"])
        gain = rng.uniform(-0.01, 0.01)
        out.append(
            {
                "id": f"{i:04d}",
                "status": status,
                "val_bpb": f"{2.4 - gain:.6f}" if status in ("keep", "discard") else "",
                "description": f"idea number {i}: scale LR by {rng.uniform(0.5, 2):.2f} "
                "and change the warmup to match",
                "error": f"gain {gain:+.6f} not above the margin 0.001000"
                if status == "discard"
                else "",
            }
        )
    return out


def test_a_thousand_rows_stay_under_the_budget():
    for n in (10, 100, 1000):
        text = journal(rows(n), budget_tokens=2000)
        assert estimate_tokens(text) <= 2000, n
    text = journal(rows(1000), budget_tokens=2000)
    assert "older ones not listed (" in text and "1000 experiments so far" in text


def test_every_attempt_is_listed_while_it_fits_and_repeats_are_not():
    text = journal(rows(10), budget_tokens=6000)
    for i in range(2, 12):
        assert f"idea number {i}:" in text
    assert "noise 2/3" not in text and "baseline scored val_bpb 2.400000" in text


def test_keeps_are_listed_first_whatever_their_age():
    many = rows(1000)  # about 30 keeps
    text = journal(many, budget_tokens=2000)
    first_keep = next(r for r in many[2:] if r["status"] == "keep")
    newest_discard = next(r for r in reversed(many) if r["status"] == "discard")
    assert f"{first_keep['id']} keep" in text  # old, but part of the frontier's history
    assert newest_discard["description"] in text
    assert "(gain " in text
    # Keeps beyond two thirds of the budget: the newest are listed, the rest counted.
    text = journal(rows(1000, keeps=10), budget_tokens=2000)
    assert "earlier keeps not listed" in text and estimate_tokens(text) <= 2000


def test_a_discarded_description_reaches_the_prompt():
    history = rows(3)
    history[-1] |= {"status": "discard", "description": "swap the optimizer for Lion"}
    request = ProposalRequest("x = 1\n", journal(history, 6000), "", 0)
    message = build_user_message(request)
    assert "swap the optimizer for Lion" in message and "do not repeat" in message


def test_no_rows_no_journal():
    assert journal([], 6000) == ""


def test_the_plateau_counts_attempts_since_the_last_keep():
    history = rows(3, keeps=0)  # baseline, noise, 3 attempts with no keep among them
    for r in history[2:]:
        r["status"] = "discard"
    history.append({"id": "0009", "status": "confirm", "description": "confirm 0004"})
    assert plateau(history, 3) == 3 and plateau(history, 4) == 0 and plateau(history, 0) == 0
    history.append({"id": "0010", "status": "keep", "description": "x"})
    assert plateau(history, 1) == 0


def test_a_hypothesis_is_shown_with_its_attempt():
    history = rows(2)
    history[-1] |= {"status": "discard", "why": "gated units train faster per token"}
    assert "| why: gated units train faster per token" in journal(history, 6000)


def test_a_diff_is_summed_up_by_the_names_it_touches():
    diff = (
        "--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,4 @@\n"
        "-MATRIX_LR = 0.04  # lr\n+MATRIX_LR = 0.05  # lr\n"
        "+def norm(x):\n+    return x\n context\n"
    )
    assert diff_summary(diff) == "MATRIX_LR, norm; +3 -1 lines"
    history = rows(2)
    text = journal(history, 6000, {history[-1]["id"]: diff_summary(diff)})
    assert "[MATRIX_LR, norm; +3 -1 lines]" in text
