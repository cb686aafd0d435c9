"""Carry a winner's change onto a frontier that moved: merges finer than a line's neighbours.

A candidate written against an older frontier (base) that beat it is re-applied on the new
frontier (ours) when its change (base -> theirs) does not collide with ours. `git
merge-file` (gitstore.merge3) tries first; it calls two changes a conflict as soon as their
lines touch, which for train.py's block of constants is most pairs of edits. Then, here:

1. **Constants.** When theirs differs from base only in the values of top-level
   `UPPER_CASE = <number>` assignments, each value is set by name on ours, provided ours
   still holds base's value there (ours changing the same constant is a real collision).
2. **Hunks without context.** Each of theirs' hunks (difflib, against base) is applied to
   ours when every base line it replaces is a line ours left untouched and they are still
   consecutive in ours; an insertion needs the base line it precedes untouched. A hunk on a
   line ours changed is a collision.

The result must parse; otherwise (or on any collision) there is no merge and the loop falls
back to the LLM's combine or a `stale` row. Pure functions: texts in, text or None out.
"""

from __future__ import annotations

import ast
import difflib

from orchestrator.proposers.mutate import Constant, find_constants


def finer_merge(base: str, ours: str, theirs: str) -> str | None:
    """theirs' change from base on ours, by constants, then by context-free hunks."""
    for merge in (merge_constants, merge_hunks):
        merged = merge(base, ours, theirs)
        if merged is not None and _parses(merged):
            return merged
    return None


def merge_constants(base: str, ours: str, theirs: str) -> str | None:
    """theirs' constant values set on ours by name, when that is all theirs changed."""
    try:
        b, o, t = ({c.name: c for c in find_constants(text)} for text in (base, ours, theirs))
    except SyntaxError:
        return None
    changed = {n: c for n, c in t.items() if n in b and c.value != b[n].value}
    if not changed or set(t) != set(b):
        return None
    # Nothing but those values differs: theirs with base's values put back is base.
    if _set_values(theirs, [(c, repr(b[c.name].value)) for c in changed.values()]) != base:
        return None
    edits = []
    for name, c in changed.items():
        if name not in o or o[name].value != b[name].value:
            return None  # ours moved it too (or dropped it): a real collision
        edits.append((o[name], _text(theirs, c)))
    return _set_values(ours, edits)


def merge_hunks(base: str, ours: str, theirs: str) -> str | None:
    """theirs' hunks applied to ours where ours left the base lines they touch alone."""
    b, o, t = (text.splitlines(keepends=True) for text in (base, ours, theirs))
    # Base line index -> ours line index, for the lines ours kept as they were.
    kept: dict[int, int] = {}
    for i, j, n in difflib.SequenceMatcher(None, b, o, autojunk=False).get_matching_blocks():
        kept.update({i + k: j + k for k in range(n)})
    kept[len(b)] = len(o)  # the end of the file, as an anchor for appends
    out = list(o)
    hunks = difflib.SequenceMatcher(None, b, t, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(hunks):  # from the end: earlier indices hold
        if tag == "equal":
            continue
        # The lines it replaces (an insertion: the line it goes before), as ours has them.
        span = [kept.get(i) for i in (range(i1, i2) if i2 > i1 else (i1,))]
        if None in span or span != list(range(span[0], span[0] + len(span))):
            return None
        out[span[0] : span[0] + (i2 - i1)] = t[j1:j2]
    merged = "".join(out)
    return None if merged == ours else merged


def _text(source: str, c: Constant) -> str:
    return source.splitlines()[c.line - 1][c.col : c.end_col]


def _set_values(source: str, edits: list[tuple[Constant, str]]) -> str:
    """source with each constant's number replaced by the given text (same line, columns)."""
    lines = source.splitlines(keepends=True)
    for c, text in sorted(edits, key=lambda e: (e[0].line, -e[0].col)):
        line = lines[c.line - 1]
        lines[c.line - 1] = line[: c.col] + text + line[c.end_col :]
    return "".join(lines)


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True
