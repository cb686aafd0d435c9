"""`autoresearch pause` / `resume` on a live run (simulated workers): paused, what runs
finishes and nothing new is queued; resumed, the run goes on to its limit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from orchestrator.results import ResultsFile
from tests.conftest import clean_env
from tests.test_loop import _wait_for, cli, start


def _events(folder: Path) -> list[dict]:
    path = folder / "orchestrator.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _cli(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    extra = {k: v for k, v in env.items() if k != "AUTORESEARCH_DATA_DIR"}
    return cli(repo, Path(env["AUTORESEARCH_DATA_DIR"]), *args, env=extra, timeout=60)


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


def test_submit_a_file_an_idea_and_a_new_program_on_a_live_run(repo, data_dir, tmp_path):
    """A human's train.py runs as a candidate (proposer `human`); an idea reaches the next
    LLM request; program.md edited mid-run is the next request's system prompt, logged,
    and the rows say which one each proposal was made under. Bad input is one line, exit
    2, and nothing is queued."""
    from tests.llm_server import ScriptedLLMServer
    from tests.test_loop import GOOD

    mine = tmp_path / "mine.py"
    mine.write_text((repo / "workspace/train.py").read_text().replace("LR = 0.03", "LR = 0.02"))
    broken = tmp_path / "broken.py"
    broken.write_text("def build_model(ctx):\n    return (\n")
    folder = repo / "workspace/runs/human"
    with ScriptedLLMServer(["OK", *[GOOD] * 40]) as server:
        env = clean_env(
            AUTORESEARCH_DATA_DIR=str(data_dir),
            AUTORESEARCH_LLM_BASE_URL=server.base_url,
            AUTORESEARCH_PROPOSER="llm",
        )
        args = ["run", "--tag", "human", "--runner", "simulate", "--sequential"]
        args += ["--train-wall", "5", "--eval-wall", "5", "--noise-runs", "1", "--no-confirm"]
        proc = start(repo, env, *args, "--max-experiments", "3")
        try:
            results = ResultsFile(folder / "results.tsv")
            _wait_for(lambda: len(results.rows()) >= 1, what="the baseline's row")
            bad = _cli(repo, env, "submit", str(broken), "--tag", "human")
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
            assert "broken.py: " in bad.stderr
            sent = _cli(
                repo, env, "submit", str(mine), "--tag", "human", "--description", "LR 0.02 by hand"
            )
            assert sent.returncode == 0, sent.stderr
            idea = "try a cosine schedule with no warmup"
            sent = _cli(repo, env, "submit", "--idea", idea, "--tag", "human")
            assert sent.returncode == 0, sent.stderr
            # After the first proposal's request (the preflight's was the first request):
            _wait_for(lambda: len(server.requests) >= 2, what="the first LLM proposal")
            program = repo / "program.md"
            program.write_text(program.read_text() + "\nPrefer changes to the schedule.\n")
            assert proc.wait(timeout=300) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        asked = [r["messages"][1]["content"] for r in server.requests[1:]]
        systems = [r["messages"][0]["content"] for r in server.requests[1:]]
    rows = ResultsFile(folder / "results.tsv").rows()
    human = [r for r in rows if r["proposer"] == "human"]
    assert [r["description"] for r in human] == ["LR 0.02 by hand"]
    assert human[0]["status"] in ("keep", "discard")  # it ran and was judged
    assert any(idea in text for text in asked)  # the next LLM request carried the idea
    # program.md: the old one, then the edited one (never back), each row saying which.
    edited = [s.endswith("Prefer changes to the schedule.\n") for s in systems]
    assert edited[0] is False and edited[-1] is True and edited == sorted(edited)
    programs = [r["program"] for r in rows if r["proposer"] == "llm"]
    assert len(set(programs)) == 2 and programs == sorted(programs, key=programs.index)
    assert any(e["event"] == "program.changed" for e in _events(folder))
