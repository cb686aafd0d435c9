"""GitStore on real repositories: plumbing only, never the user's working tree or index."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_TRAIN, git

from orchestrator.gitstore import GitError, GitStore

TRAIN = "workspace/train.py"
NEW_SOURCE = TINY_TRAIN.replace("LR = 0.03", "LR = 0.06") + "\n# trailing blank line above\n"


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def index_state(repo: Path) -> str:
    return git(repo, "ls-files", "--stage")


def test_commit_candidate_parent_content_and_ref(repo):
    store = GitStore(repo)
    parent = head(repo)
    commit = store.commit_candidate("t1", "exp-1", parent, NEW_SOURCE, "LR 0.03 -> 0.06")

    assert git(repo, "rev-parse", f"{commit}^").strip() == parent
    assert git(repo, "rev-list", "--count", commit).strip() == "2"
    # Byte for byte, trailing newline included, via git itself and via read().
    blob = git(repo, "cat-file", "blob", f"{commit}:{TRAIN}")
    assert blob == NEW_SOURCE
    assert store.read(commit) == NEW_SOURCE
    assert NEW_SOURCE.endswith("\n") and store.read(commit).endswith("above\n")
    # The only change from the parent is train.py.
    changed = git(repo, "diff", "--name-only", parent, commit).split()
    assert changed == [TRAIN]
    assert git(repo, "log", "-1", "--format=%s", commit).strip() == "exp-1: LR 0.03 -> 0.06"
    # Read back from git alone, for a resumed run that has only the pin.
    found = store.pinned_candidate("t1", "exp-1")
    assert (found["commit"], found["parent"], found["source"]) == (commit, parent, NEW_SOURCE)
    assert (found["description"], found["proposer"], found["usage"]) == ("LR 0.03 -> 0.06", "?", {})
    store.pin("t1", "exp-2", parent)  # a repeat run's pin: not a candidate of its own
    assert store.pinned_candidate("t1", "exp-2") is None
    # Pinned under refs/autoresearch/<tag>/candidates/<id>.
    ref = "refs/autoresearch/t1/candidates/exp-1"
    assert git(repo, "rev-parse", ref).strip() == commit
    assert store.candidate_ref("t1", "exp-1") == ref


def test_source_without_trailing_newline_is_kept_exactly(repo):
    store = GitStore(repo)
    source = "LR = 1  \n\n\nX = 2"  # trailing spaces, blank lines, no final newline
    commit = store.commit_candidate("t", "e", head(repo), source, "m")
    assert store.read(commit) == source


def test_commit_candidate_leaves_worktree_index_and_head_alone(repo):
    # The user has a staged change and an unstaged one in progress.
    (repo / "notes.txt").write_text("staged by the user\n")
    git(repo, "add", "notes.txt")
    (repo / "program.md").write_text("edited, not staged\n")
    status_before = git(repo, "status", "--porcelain")
    index_before = index_state(repo)
    head_before = head(repo)
    symbolic_before = git(repo, "symbolic-ref", "HEAD").strip()
    worktree_train = (repo / TRAIN).read_bytes()
    assert "A  notes.txt" in status_before and " M program.md" in status_before

    store = GitStore(repo)
    store.commit_candidate("t", "e1", head_before, NEW_SOURCE, "m")

    assert git(repo, "status", "--porcelain") == status_before
    assert index_state(repo) == index_before
    assert git(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]
    assert head(repo) == head_before
    assert git(repo, "symbolic-ref", "HEAD").strip() == symbolic_before
    assert (repo / TRAIN).read_bytes() == worktree_train


def test_commit_candidate_clean_tree_stays_clean(repo):
    assert git(repo, "status", "--porcelain") == ""
    GitStore(repo).commit_candidate("t", "e1", head(repo), NEW_SOURCE, "m")
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / TRAIN).read_text() == TINY_TRAIN


def test_start_branch_creates_then_resumes(repo):
    store = GitStore(repo)
    start = head(repo)
    tip, created = store.start_branch("run1")
    assert (tip, created) == (start, True)
    assert git(repo, "rev-parse", "refs/heads/autoresearch/run1").strip() == start
    # HEAD stays on the user's branch.
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"

    # The branch moves on; a second start resumes from its tip, not from HEAD.
    cand = store.commit_candidate("run1", "e1", start, NEW_SOURCE, "m")
    store.advance("run1", cand, start)
    assert store.start_branch("run1") == (cand, False)


def test_start_branch_from_a_commit_without_train_py(repo):
    git(repo, "rm", "-q", TRAIN)
    git(repo, "commit", "-qm", "no train")
    with pytest.raises(GitError, match="has no workspace/train.py"):
        GitStore(repo).start_branch("x")
    assert git(repo, "for-each-ref", "refs/heads/autoresearch/") == ""


def test_advance_is_compare_and_swap(repo):
    store = GitStore(repo)
    base, _ = store.start_branch("t")
    a = store.commit_candidate("t", "a", base, NEW_SOURCE, "a")
    b = store.commit_candidate("t", "b", base, NEW_SOURCE + "# b\n", "b")

    store.advance("t", a, base)
    assert store.resolve(store.branch("t")) == a
    # Someone else moved it to a: a swap that still believes the tip is base must fail.
    with pytest.raises(GitError):
        store.advance("t", b, base)
    assert store.resolve(store.branch("t")) == a
    store.advance("t", b, a)
    assert store.resolve(store.branch("t")) == b


def test_read_of_commit_without_train_py_raises(repo):
    git(repo, "rm", "-q", TRAIN)
    git(repo, "commit", "-qm", "drop train.py")
    store = GitStore(repo)
    with pytest.raises(GitError, match=r"has no workspace/train\.py"):
        store.read(head(repo))
    with pytest.raises(GitError):
        store.read("0123456789abcdef0123456789abcdef01234567")


def test_not_a_git_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="not inside a git repository"):
        GitStore(plain)
    with pytest.raises(GitError, match="not inside a git repository"):
        GitStore(tmp_path / "missing")


def test_subfolder_resolves_to_top(repo):
    store = GitStore(repo / "workspace")
    assert store.repo.resolve() == repo.resolve()
    assert store.read("HEAD") == TINY_TRAIN


def test_candidate_ids_lists_pinned_ids_per_tag(repo):
    store = GitStore(repo)
    parent = head(repo)
    assert store.candidate_ids("t") == []
    for exp in ("0003", "0001", "0002"):
        store.commit_candidate("t", exp, parent, NEW_SOURCE + f"# {exp}\n", exp)
    store.commit_candidate("tt", "other", parent, NEW_SOURCE, "other tag")
    store.pin("t", "baseline", parent)
    assert sorted(store.candidate_ids("t")) == ["0001", "0002", "0003", "baseline"]
    assert store.candidate_ids("tt") == ["other"]
    assert store.resolve(store.candidate_ref("t", "baseline")) == parent


def test_diff_shows_the_change(repo):
    store = GitStore(repo)
    parent = head(repo)
    commit = store.commit_candidate("t", "e", parent, NEW_SOURCE, "m")
    diff = store.diff(parent, commit)
    assert "-LR = 0.03  # learning rate" in diff
    assert "+LR = 0.06  # learning rate" in diff
    assert "+# trailing blank line above" in diff
    assert "workspace/train.py" in diff
    assert store.diff(parent, parent) == ""


def test_merge3_carries_a_change_over_or_reports_a_conflict(repo):
    store = GitStore(repo)
    base = "A = 1\n\n\n\nB = 2\n"
    ours = base.replace("A = 1", "A = 10")
    theirs = base.replace("B = 2", "B = 20")
    assert store.merge3(base, ours, theirs) == "A = 10\n\n\n\nB = 20\n"
    assert store.merge3(base, ours, base.replace("A = 1", "A = 5")) is None
