"""The journal: every attempt of a run, compact, for the proposer's prompt."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from worker.vocab import REPEATS  # not attempts: the runs of a commit already measured

_GAIN = re.compile(r"gain ([+-]\d+\.\d+)")
CHARS_PER_TOKEN = 4  # English prose and Python code, as tokenizers of the GPT family cut them


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


_NAME = re.compile(r"^[+-]\s*(?:def |class )?([A-Za-z_]\w*)\s*[(:=]")


def diff_summary(diff: str) -> str:
    """What a unified diff touched, in a few words: the names it assigns or defines on
    changed lines (the knobs), and its size, e.g. "MATRIX_LR, WARMUP; +2 -2 lines"."""
    changed = [
        line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    names = list(dict.fromkeys(m.group(1) for line in changed if (m := _NAME.match(line))))
    added = sum(line.startswith("+") for line in changed)
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{shown + '; ' if shown else ''}+{added} -{len(changed) - added} lines"


def journal(
    rows: list[dict[str, Any]],
    budget_tokens: int,
    summaries: dict[str, str] | None = None,
    line_chars: int = 160,
) -> str:
    """All a run has tried, in at most `budget_tokens` (estimated), for the next proposal.

    An LLM shown only the last rows cannot know, a few hundred experiments in, what was
    tried: it proposes discarded ideas again. So every attempt gets one line (id, outcome,
    gain where the decision measured one, description, what its diff touched (`summaries`,
    from diff_summary), hypothesis), in two groups:

    - **kept**: the current train.py's history, oldest first, in up to two thirds of the
      budget (the newest, when they do not all fit): the frontier is what the next change
      builds on.
    - **tried, not kept**: newest first, as many as the budget holds; what does not fit is
      summarised by outcome, so the model still knows how much was tried and how it went.

    Repeat runs (noise, confirmations) are not attempts and are left out; their effect is
    already in the keep decisions. The budget is estimated at CHARS_PER_TOKEN characters a
    token rather than counted: the proposer must not depend on one tokenizer, and a bound
    that is off by 10-20% serves the purpose (the prompt stays far from the context limit).
    """
    summaries = summaries or {}
    attempts = [r for r in rows if r.get("status") not in REPEATS]
    if not attempts:
        return ""
    baseline = next((r for r in attempts if r.get("description") == "baseline"), None)
    attempts = [r for r in attempts if r is not baseline]
    kept = [r for r in attempts if r.get("status") == "keep"]
    tried = [r for r in attempts if r.get("status") != "keep"]

    def line(r: dict[str, Any]) -> str:
        gain = _GAIN.search(r.get("error") or "")
        bpb = r.get("val_bpb") or "-"
        why = f" | why: {r['why']}" if r.get("why") else ""
        text = f"{r.get('id', '?')} {r.get('status', '?'):<9} val_bpb {bpb}"
        text += f" (gain {gain.group(1)})" if gain else ""
        touched = f" [{summaries[r['id']]}]" if r.get("id") in summaries else ""
        text += f": {r.get('description', '')}{touched}{why}"
        return text if len(text) <= line_chars else text[: line_chars - 3] + "..."

    head = f"{len(attempts)} experiments so far"
    if baseline is not None:
        head += f"; the baseline scored val_bpb {baseline.get('val_bpb') or '-'}"
    kept_lines = [line(r) for r in kept]
    tried_lines = [line(r) for r in reversed(tried)]

    def text(n_kept: int, n_tried: int) -> str:
        out = [head]
        if kept:
            out.append(f"Kept, oldest first (the current train.py's history): {len(kept)}")
            if n_kept < len(kept):
                out.append(f"  ({len(kept) - n_kept} earlier keeps not listed)")
            out += [f"  {t}" for t in kept_lines[len(kept) - n_kept :]]
        if tried:
            out.append(f"Tried and not kept, newest first (do not repeat these): {len(tried)}")
            out += [f"  {t}" for t in tried_lines[:n_tried]]
            rest = list(reversed(tried))[n_tried:]
            if rest:
                counts = Counter(r.get("status", "?") for r in rest)
                by = ", ".join(f"{k} {v}" for k, v in counts.most_common())
                out.append(f"  ... and {len(rest)} older ones not listed ({by})")
        return "\n".join(out)

    # Keeps take up to two thirds of the budget, newest first; the tried ones fill the rest.
    n_kept = len(kept)
    while n_kept > 1 and estimate_tokens(text(n_kept, 0)) > budget_tokens * 2 // 3:
        n_kept -= 1
    lo, hi = 0, len(tried)  # the most tried lines that fit: a binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if estimate_tokens(text(n_kept, mid)) <= budget_tokens else (lo, mid - 1)
    return text(n_kept, lo)


def plateau(rows: list[dict[str, Any]], after: int) -> int:
    """Experiments since the last keep (repeat runs and the baseline not counted), when
    that is `after` or more, else 0 (and 0 when `after` is 0: the nudge is off)."""
    since = 0
    for r in reversed(rows):
        if r.get("status") == "keep":
            break
        if r.get("status") not in REPEATS:
            since += 1
    return since if after and since >= after else 0
