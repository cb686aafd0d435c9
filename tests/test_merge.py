"""Carrying a late winner's change onto a moved frontier (orchestrator/merge.py), through
GitStore.merge3 on a real repository: adjacent edits that git merge-file calls a conflict
are merged; edits of the same constant or line are not."""

from __future__ import annotations

import pytest

from orchestrator.gitstore import GitStore
from orchestrator.merge import finer_merge, merge_constants, merge_hunks
from tests.conftest import git

BASE = """LR = 0.03
WIDTH = 64  # hidden size
DEPTH = 4
WARMUP = 0.1


def train(model, ctx):
    steps = DEPTH * 10
    return steps
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.fixture
def store(tmp_path) -> GitStore:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return GitStore(path)


def test_adjacent_constant_edits_merge_where_git_merge_file_conflicts(store):
    ours = edit(BASE, "WIDTH = 64", "WIDTH = 128")
    theirs = edit(BASE, "DEPTH = 4", "DEPTH = 8")
    merged = store.merge3(BASE, ours, theirs)
    assert merged == edit(ours, "DEPTH = 4", "DEPTH = 8")


def test_the_same_constant_changed_on_both_sides_is_a_collision(store):
    ours = edit(BASE, "LR = 0.03", "LR = 0.06")
    theirs = edit(BASE, "LR = 0.03", "LR = 0.015")
    assert store.merge3(BASE, ours, theirs) is None


def test_a_constant_is_set_by_name_even_when_ours_rewrote_its_line(store):
    """Ours changed WIDTH's comment on the same line and moved DEPTH: theirs' value of
    WIDTH still lands, because ours kept the value theirs started from."""
    ours = edit(BASE, "WIDTH = 64  # hidden size", "WIDTH = 64  # the model's width")
    theirs = edit(BASE, "WIDTH = 64", "WIDTH = 96")
    assert merge_hunks(BASE, ours, theirs) is None  # the line itself collides
    merged = merge_constants(BASE, ours, theirs)
    assert merged == edit(ours, "WIDTH = 64", "WIDTH = 96")
    assert store.merge3(BASE, ours, theirs) == merged


def test_a_code_edit_next_to_a_changed_line_merges_by_hunk():
    ours = edit(BASE, "    steps = DEPTH * 10\n", "    steps = DEPTH * 20\n")
    theirs = edit(BASE, "    return steps\n", "    return steps + 1\n")
    assert merge_constants(BASE, ours, theirs) is None  # not a constant edit
    merged = finer_merge(BASE, ours, theirs)
    assert merged == edit(ours, "    return steps\n", "    return steps + 1\n")


def test_an_insertion_before_an_untouched_line_merges():
    ours = edit(BASE, "WARMUP = 0.1", "WARMUP = 0.2")
    theirs = edit(BASE, "\n\ndef train", "DROPOUT = 0.1\n\n\ndef train")
    merged = finer_merge(BASE, ours, theirs)
    assert merged is not None and "WARMUP = 0.2\nDROPOUT = 0.1\n" in merged


def test_the_same_line_edited_differently_is_a_collision():
    ours = edit(BASE, "    steps = DEPTH * 10\n", "    steps = DEPTH * 20\n")
    theirs = edit(BASE, "    steps = DEPTH * 10\n", "    steps = DEPTH + 10\n")
    assert finer_merge(BASE, ours, theirs) is None


def test_a_merge_that_does_not_parse_is_refused():
    ours = edit(BASE, "    return steps\n", "    return (steps\n")  # ours is broken
    theirs = edit(BASE, "LR = 0.03", "LR = 0.01")
    assert merge_hunks(BASE, ours, theirs) is not None
    assert finer_merge(BASE, ours, theirs) is None
