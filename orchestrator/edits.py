"""The edit format an LLM uses to change train.py, and the code that applies it.

An LLM is asked for an edit, not for the whole file: a full rewrite costs output tokens,
silently drops lines the model did not mean to touch, and hides the change in a wall of
text. SEARCH/REPLACE blocks (the format aider made familiar) say exactly what changes,
and a block that does not match the file is caught instead of guessed at.

The reply format
----------------
The reply contains:

1. a line ``DESCRIPTION: <one line saying what changes and why>`` (required), and
2. one or more SEARCH/REPLACE blocks::

       <<<<<<< SEARCH
       exact existing lines of train.py
       =======
       replacement lines
       >>>>>>> REPLACE

Rules:

- Blocks may sit inside ``` fences; fence lines outside a block are ignored.
- A block may be preceded by a line naming the file: ``train.py``, ``workspace/train.py``
  or ``FILE: train.py``. Naming any other file is an error: only train.py may change.
- SEARCH lines are whole lines copied exactly from the current train.py (indentation
  included); a difference in trailing whitespace only is tolerated, nothing fuzzier.
- Each SEARCH text must occur exactly once in the file. Blocks apply in order, each to the
  result of the previous ones. Add surrounding lines to a SEARCH text that is not unique.
- An empty REPLACE section deletes the SEARCH lines.
- Everything else in the reply (reasoning, prose) is ignored.
"""

from __future__ import annotations

import re

__all__ = ["EditError", "apply_reply", "extract_description"]

MAX_DESCRIPTION_CHARS = 200

_SEARCH = re.compile(r"^<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^={5,9}\s*$")
_REPLACE = re.compile(r"^>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# Tolerates markdown decoration models like to add: "**DESCRIPTION:** ...", "# Description: ...".
_DESCRIPTION = re.compile(r"^[\s>*_#`-]*DESCRIPTION[\s*_`]*:(.*)$", re.IGNORECASE)
_WHY = re.compile(r"^[\s>*_#`-]*WHY[\s*_`]*:(.*)$", re.IGNORECASE)
# A line that is nothing but a file name, e.g. "train.py", "`workspace/train.py`:", "FILE: x.py".
_FILE_NAME = re.compile(
    r"^[\s>*_#`-]*(?:file\s*:\s*)?[*_`]*([\w./\\-]*\w\.[A-Za-z]\w*)[*_`:]*\s*$", re.IGNORECASE
)
_ALLOWED_FILES = {"train.py", "workspace/train.py"}

Block = tuple[list[str], list[str]]


class EditError(ValueError):
    """A reply that cannot be applied; the message is sent back to the model verbatim."""


def apply_reply(source: str, reply: str) -> tuple[str, str]:
    """Apply an LLM reply to ``source``; return ``(new_source, description)``.

    All-or-nothing: any bad block raises EditError and nothing is applied, so a retry
    always starts from the unchanged file the model was shown.
    """
    description, blocks = _parse(reply)
    if not blocks:
        raise EditError("reply has no SEARCH/REPLACE edit")
    if not description:
        raise EditError("reply has no DESCRIPTION line")
    lines = source.split("\n")
    for number, (search, replace) in enumerate(blocks, start=1):
        lines = _apply_block(lines, search, replace, number)
    new_source = "\n".join(lines)
    if new_source == source:
        raise EditError("edit changes nothing")
    return new_source, description


def extract_description(reply: str) -> str:
    """The reply's DESCRIPTION, or "" when there is none or the reply does not parse.

    Lets a rejected proposal still be recorded with what the model meant to try.
    """
    try:
        return _parse(reply)[0]
    except EditError:
        return ""


def extract_why(reply: str) -> str:
    """The reply's one-line hypothesis (`WHY: ...`, program.md), or "" when it has none."""
    for line in reply.replace("\r\n", "\n").split("\n"):
        if _SEARCH.match(line):
            break
        match = _WHY.match(line)
        if match:
            return _clean_description(match.group(1))
    return ""


def _parse(reply: str) -> tuple[str, list[Block]]:
    lines = reply.replace("\r\n", "\n").split("\n")
    description = ""
    blocks: list[Block] = []
    last_text: str | None = None  # the last prose line since the previous block
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SEARCH.match(line):
            number = len(blocks) + 1
            _check_file_name(last_text)
            search, i = _collect(lines, i + 1, _DIVIDER, number, "=======")
            replace, i = _collect(lines, i + 1, _REPLACE, number, ">>>>>>> REPLACE")
            blocks.append((search, replace))
            last_text = None
        else:
            match = _DESCRIPTION.match(line)
            if match and not description:
                description = _clean_description(match.group(1))
            if line.strip() and not _FENCE.match(line):
                last_text = line
        i += 1
    return description, blocks


def _collect(
    lines: list[str], start: int, end: re.Pattern[str], number: int, marker: str
) -> tuple[list[str], int]:
    """Lines from ``start`` up to the ``end`` marker; returns them and the marker's index."""
    for i in range(start, len(lines)):
        if end.match(lines[i]):
            return lines[start:i], i
        if _SEARCH.match(lines[i]):
            break
    raise EditError(f"SEARCH block {number} is not closed: missing a {marker} line")


def _check_file_name(line: str | None) -> None:
    if line is None:
        return
    match = _FILE_NAME.match(line)
    if not match:
        return
    name = match.group(1).replace("\\", "/").removeprefix("./")
    if name not in _ALLOWED_FILES:
        raise EditError(f"edit touches another file: {name}")


def _apply_block(lines: list[str], search: list[str], replace: list[str], number: int) -> list[str]:
    if not any(s.strip() for s in search):
        raise EditError(f"SEARCH block {number} is empty")
    hits = _find(lines, search)
    if not hits:
        # Models often drop or add trailing spaces; that is the only slack allowed.
        hits = _find([s.rstrip() for s in lines], [s.rstrip() for s in search])
    if not hits:
        raise EditError(f"SEARCH block {number} does not match train.py")
    if len(hits) > 1:
        raise EditError(f"SEARCH block {number} matches {len(hits)} places; add context")
    at = hits[0]
    return lines[:at] + replace + lines[at + len(search) :]


def _find(lines: list[str], search: list[str]) -> list[int]:
    k = len(search)
    return [i for i in range(len(lines) - k + 1) if lines[i : i + k] == search]


def _clean_description(text: str) -> str:
    """One line, no tabs, bounded: the description becomes a results.tsv field."""
    text = " ".join(text.split()).strip("*_` ")
    return text[:MAX_DESCRIPTION_CHARS].rstrip()
