"""A throwaway git repository for a benchmark's run: workspace/train.py in one commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def make_repo(folder: Path, train_py: str) -> Path:
    (folder / "workspace").mkdir(parents=True)
    (folder / "workspace" / "train.py").write_text(train_py)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b"}
    env |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *cmd], cwd=folder, check=True, env=env)
    return folder
