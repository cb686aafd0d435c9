"""`autoresearch pause` / `resume` on a live run (simulated workers): paused, what runs
finishes and nothing new is queued; resumed, the run goes on to its limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.results import ResultsFile
from tests.conftest import clean_env
from tests.test_loop import _wait_for, start


def _events(folder: Path) -> list[dict]:
    path = folder / "orchestrator.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _cli(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pause_holds_new_work_and_resume_goes_on(repo, data_dir):
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir))
    folder = repo / "workspace/runs/steer"
    args = ["run", "--tag", "steer", "--runner", "simulate", "--local-workers", "2"]
    args += ["--train-wall", "5", "--eval-wall", "5", "--noise-runs", "1", "--no-confirm"]
    proc = start(repo, env, *args, "--max-experiments", "6")
    try:
        results = ResultsFile(folder / "results.tsv")
        _wait_for(lambda: len(results.rows()) >= 2, what="the baseline and a first row")
        paused = _cli(repo, env, "pause", "--tag", "steer")
        assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr

        def settled() -> bool:
            names = [e["event"] for e in _events(folder)]
            if "run.paused" not in names:
                return False
            snap = json.loads(_cli(repo, env, "status", "--tag", "steer", "--json").stdout)
            return snap["state"].get("paused") == "1" and snap["state"].get("in_flight") == "0"

        _wait_for(settled, what="the pause to take effect and the running jobs to end")
        events = [e["event"] for e in _events(folder)]
        after = events[events.index("run.paused") :]
        assert "enqueued" not in after, after  # nothing new queued while paused
        held = len(results.rows())
        status = _cli(repo, env, "status", "--tag", "steer")
        assert "paused (what runs finishes" in status.stdout
        assert proc.poll() is None  # paused, not stopped

        resumed = _cli(repo, env, "resume", "--tag", "steer")
        assert resumed.returncode == 0 and "resumed" in resumed.stdout
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = results.rows()
    assert len(rows) > held
    events = [e["event"] for e in _events(folder)]
    assert "enqueued" in events[events.index("run.resumed") :]
    ran = [r for r in rows if r["proposer"] not in ("baseline", "noise")]
    assert len(ran) == 6
    # No live run any more: one line, exit 1.
    late = _cli(repo, env, "pause", "--tag", "steer")
    assert late.returncode == 1 and late.stderr.strip().endswith("pass --redis-url or REDIS_URL)")
