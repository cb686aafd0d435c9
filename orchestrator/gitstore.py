"""Git plumbing for candidates: never touches the user's working tree or index.

A candidate is a commit whose tree is its parent's with train.py replaced, made with
hash-object, a private index file, write-tree and commit-tree, and pinned by a ref under
refs/autoresearch/<tag>/candidates/, so no diff is lost, a failed one included. Keeping a
candidate moves refs/heads/autoresearch/<tag> with a compare-and-swap update-ref.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from orchestrator import defaults
from orchestrator.merge import finer_merge


class GitError(RuntimeError):
    """A git command failed; the message carries git's own words."""


class GitStore:
    def __init__(self, repo: Path, train_path: str = defaults.TRAIN_PATH):
        self.repo = Path(repo)
        self.train_path = train_path
        try:
            top = self._git("rev-parse", "--show-toplevel")
        except (GitError, FileNotFoundError):
            raise GitError(f"{self.repo} is not inside a git repository") from None
        self.repo = Path(top)

    def _git(
        self, *args: str, input: str | None = None, env: dict | None = None, strip: bool = True
    ) -> str:
        proc = subprocess.run(
            ["git", *args],
            cwd=self.repo,
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )
        if proc.returncode != 0:
            raise GitError(
                f"git {' '.join(args[:2])}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout.strip() if strip else proc.stdout

    @staticmethod
    def branch(tag: str) -> str:
        return f"refs/heads/{defaults.BRANCH_PREFIX}{tag}"

    def resolve(self, ref: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except GitError:
            return None

    def start_branch(self, tag: str, start: str = "HEAD") -> tuple[str, bool]:
        """(tip, created): create autoresearch/<tag> at start unless it exists (resume)."""
        tip = self.resolve(self.branch(tag))
        if tip:
            return tip, False
        base = self.resolve(start)
        if base is None:
            raise GitError(f"cannot start branch: {start} names no commit")
        self.read(base)  # the start commit must hold train.py
        self._git("update-ref", self.branch(tag), base, "0" * 40)
        return base, True

    def read(self, commit: str) -> str:
        try:
            return self._git("show", f"{commit}:{self.train_path}", strip=False)
        except GitError:
            raise GitError(f"commit {commit[:12]} has no {self.train_path}") from None

    def commit_candidate(
        self,
        tag: str,
        exp_id: str,
        parent: str,
        source: str,
        description: str,
        proposer: str = "?",
        usage: dict | None = None,
    ) -> str:
        """Commit a candidate's train.py on its parent and pin it. Its message holds what
        runs it again from git alone (pinned_candidate): `ID: description` and trailers."""
        message = (
            f"{exp_id}: {description}\n\nProposer: {proposer}\nUsage: {json.dumps(usage or {})}"
        )
        blob = self._git("hash-object", "-w", "--stdin", input=source)
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", parent, env=env)
            self._git(
                "update-index", "--add", "--cacheinfo", f"100644,{blob},{self.train_path}", env=env
            )
            tree = self._git("write-tree", env=env)
        commit = self._git("commit-tree", tree, "-p", parent, "-m", message, env=_identity())
        self._git("update-ref", self.candidate_ref(tag, exp_id), commit)
        return commit

    def pinned_candidate(self, tag: str, exp_id: str) -> dict[str, Any] | None:
        """A pinned candidate's own commit, read back (commit, parent, source, description,
        proposer, usage from its message: `ID: description` and trailers); None when the
        pin holds another run's commit (a baseline, noise or confirmation run) or nothing."""
        commit = self.resolve(self.candidate_ref(tag, exp_id))
        if commit is None:
            return None
        subject, _, body = self._git("log", "-1", "--format=%B", commit).partition("\n")
        if not subject.startswith(f"{exp_id}: "):
            return None
        trailers = dict(
            line.split(": ", 1) for line in body.splitlines() if ": " in line and line[0] != " "
        )
        return {
            "commit": commit,
            "parent": self._git("rev-parse", f"{commit}^"),
            "source": self.read(commit),
            "description": subject.removeprefix(f"{exp_id}: "),
            "proposer": trailers.get("Proposer", "?"),
            "usage": json.loads(trailers.get("Usage", "{}")),
        }

    def pin(self, tag: str, exp_id: str, commit: str) -> None:
        """Point an experiment's candidate ref at an existing commit (the baseline's)."""
        self._git("update-ref", self.candidate_ref(tag, exp_id), commit)

    def unpin(self, tag: str, exp_id: str) -> None:
        """Drop a candidate's ref: it was committed ahead but will never run."""
        self._git("update-ref", "-d", self.candidate_ref(tag, exp_id))

    @staticmethod
    def candidate_ref(tag: str, exp_id: str) -> str:
        return defaults.CANDIDATE_REF.format(tag=tag, id=exp_id)

    def candidate_ids(self, tag: str) -> list[str]:
        prefix = defaults.CANDIDATE_REF.format(tag=tag, id="")
        out = self._git("for-each-ref", "--format=%(refname)", prefix)
        return [line[len(prefix) :] for line in out.splitlines() if line]

    def advance(self, tag: str, new: str, old: str) -> None:
        """Move the branch from old to new, refusing if someone else moved it meanwhile."""
        self._git("update-ref", self.branch(tag), new, old)

    def log_oneline(self, ref: str, count: int) -> str:
        return self._git("log", "--oneline", "-n", str(count), ref)

    def diff(self, old: str, new: str) -> str:
        return self._git("diff", old, new, "--", self.train_path, strip=False)

    def merge3(self, base: str, ours: str, theirs: str) -> str | None:
        """Three-way merge of train.py texts: theirs' change from base re-applied on ours
        (`git merge-file`, then orchestrator/merge.py where lines touch but changes do not
        collide). None when the two changes collide."""
        with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
            paths = []
            for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
                path = Path(tmp) / name
                path.write_text(text)
                paths.append(str(path))
            proc = subprocess.run(
                ["git", "merge-file", "-p", "--quiet", *paths],
                cwd=self.repo,
                capture_output=True,
                text=True,
            )
        if proc.returncode < 0 or proc.returncode > 127:
            raise GitError(f"git merge-file: {proc.stderr.strip()}")
        if proc.returncode == 0:
            return proc.stdout
        return finer_merge(base, ours, theirs)  # the lines touch: by constant, by hunk


def _identity() -> dict[str, str]:
    """A committer identity for repositories (and CI machines) that have none configured."""
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", os.environ.get(f"GIT_{role}_NAME", "autoresearch"))
        env.setdefault(
            f"GIT_{role}_EMAIL", os.environ.get(f"GIT_{role}_EMAIL", "autoresearch@localhost")
        )
    return env
