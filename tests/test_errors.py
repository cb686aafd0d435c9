"""Bad input or a broken host ends in one line and a non-zero exit, never a traceback:
each path a user can reach, walked with the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_env, git

TRAIN = Path(__file__).resolve().parents[1] / "workspace" / "train.py"


def autoresearch(cwd: Path, data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The error line: the last of stderr (log lines before it are JSON), no traceback."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("autoresearch: error: ")
    return last


def test_a_runs_folder_that_cannot_be_written(repo, data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = autoresearch(repo, data_dir, "run", "--runs-dir", str(blocker / "runs"))
    assert f"Not a directory: {blocker}/runs" in one_line(proc)


def test_a_full_disk_during_a_run(repo, data_dir):
    """The run's log is the first thing it writes: on /dev/full each write is ENOSPC."""
    folder = repo / "workspace/runs/full"
    folder.mkdir(parents=True)
    os.symlink("/dev/full", folder / "orchestrator.jsonl")
    proc = autoresearch(repo, data_dir, "run", "--tag", "full", "--max-experiments", "1")
    assert "No space left on device" in one_line(proc)
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""  # nothing lost


@pytest.mark.parametrize(
    "env, says",
    [
        ({"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, "Docker engine unreachable"),
        (
            {"AUTORESEARCH_RUNNER_IMAGE": "autoresearch-missing:0"},
            "runner image autoresearch-missing:0 not found: build it",
        ),
    ],
    ids=["docker-not-running", "runner-image-missing"],
)
def test_docker_runner_without_docker_or_its_image(repo, data_dir, env, says):
    proc = autoresearch(repo, data_dir, "evaluate", str(TRAIN), "--runner", "docker", **env)
    assert says in one_line(proc)
