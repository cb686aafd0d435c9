"""The research loop end to end: real Redis, real worker processes, real git, real training."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from harness.manifest import load_manifest
from harness.profiles import get_profile
from orchestrator.gitstore import GitStore
from orchestrator.local_workers import LocalWorkers
from orchestrator.proposers.llm import LLMProposer
from orchestrator.research import Policy, Research, budget_for
from orchestrator.results import ResultsFile
from tests.conftest import SHORT_BUDGET, clean_env, git, processes_under, processes_with
from tests.llm_server import ScriptedLLMServer
from worker import keys
from worker.settings import WorkerSettings

FAST = ["--train-wall", f"{SHORT_BUDGET['train_wall_s']:g}", "--eval-wall", "20"]
# One experiment at a time, one baseline run, no confirmation re-runs: these tests are
# about the loop's trail, not the schedule or the noise rule (tests/test_scheduling.py
# covers those, on simulated workers).
RUN_FAST = [*FAST, "--noise-runs", "1", "--no-confirm", "--sequential"]


def cli(
    repo: Path, data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_end_to_end_then_resume(repo, data_dir):
    proc = cli(
        repo, data_dir, "run", "--tag", "e2e", "--max-experiments", "2", "--seed", "1", *RUN_FAST
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best val_bpb:" in proc.stdout and "this session:      experiments " in proc.stdout
    # Each embedded default is announced.
    for event in ("default.profile", "default.redis", "default.proposer", "default.workers"):
        assert event in proc.stderr

    results = ResultsFile(repo / "workspace/runs/e2e/results.tsv")

    def ran_rows() -> list[dict[str, str]]:
        """The rows but for confirmation re-runs: a loaded machine trains fewer tokens, and
        a keep made on under half the frontier's tokens is confirmed even with --no-confirm
        (the suspicious-jump rule), which adds a row with the next id."""
        every = results.rows()
        for r in every:
            if r["status"] == "confirm":
                assert r["description"].startswith("confirm 0"), r
        return [r for r in every if r["status"] != "confirm"]

    rows = ran_rows()
    every = [(r["id"], r["status"], r["description"], r["error"]) for r in results.rows()]
    assert len(rows) == 3 and rows[0]["id"] == "0000", every
    assert sorted(r[0] for r in every) == [f"{i:04d}" for i in range(len(every))], every
    assert rows[0]["status"] == "keep" and rows[0]["description"] == "baseline"
    assert all(r["status"] in ("keep", "discard", "crash", "oom", "nan", "timeout") for r in rows)
    assert float(rows[0]["val_bpb"]) > 0

    # The branch holds the initial commit plus exactly the kept candidates, in order.
    kept = [r["commit"] for r in rows[1:] if r["status"] == "keep"]
    on_branch = git(repo, "rev-list", "--reverse", "autoresearch/e2e").split()
    assert [c[:7] for c in on_branch[1:]] == kept
    # Every candidate, kept or not, is pinned; the user's branch and tree are untouched.
    for r in rows[1:]:
        ref = f"refs/autoresearch/e2e/candidates/{r['id']}"
        assert git(repo, "rev-parse", ref).startswith(r["commit"])
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"

    for r in rows:
        folder = repo / "workspace/runs/e2e" / r["id"]
        output = (folder / "output.log").read_text()
        assert "@metrics" in output
        assert ("val_bpb:" in output) == (r["status"] in ("keep", "discard")), r
        events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert {e["event"] for e in events} >= {"experiment.start", "metrics", "experiment.end"}
        assert json.loads((folder / "decision.json").read_text())["decision"] == r["status"]
    assert "+" in (repo / "workspace/runs/e2e/0001/candidate.diff").read_text()
    log = (repo / "workspace/runs/e2e/orchestrator.jsonl").read_text().splitlines()
    assert any(json.loads(line)["event"] == "run.end" for line in log)
    # The worker's own log (its stderr: what `docker compose logs worker` shows) has each
    # experiment's start, progress (step and loss) and end (status, val_bpb), with its id.
    worker_log = [
        json.loads(line)
        for line in (repo / "workspace/runs/e2e/worker-0.log").read_text().splitlines()
        if line.startswith("{")
    ]
    for r in rows:
        mine = [e for e in worker_log if e.get("id") == r["id"] and e.get("tag") == "e2e"]
        kinds = [e["event"] for e in mine]
        assert kinds[0] == "experiment.start" and kinds[-1] == "experiment.end", kinds
        end = mine[-1]
        assert end["status"] and "val_bpb" in end, end
        if r["val_bpb"]:
            assert end["val_bpb"] == pytest.approx(float(r["val_bpb"]), abs=1e-5)
        assert any(
            e["event"] == "experiment.progress" and {"step", "loss"} <= e.keys() for e in mine
        ), kinds

    # A second run on the same tag resumes: no second baseline, ids continue.
    proc = cli(repo, data_dir, "run", "--tag", "e2e", "--max-experiments", "1", *RUN_FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = ran_rows()
    assert len(rows) == 4 and rows[3]["id"] == max(r["id"] for r in results.rows())
    assert [r["description"] for r in rows].count("baseline") == 1

    status = cli(repo, data_dir, "status", "--tag", "e2e")
    assert status.returncode == 0
    ran = len([r for r in results.rows() if r["status"] != "rejected"])
    assert f"{ran} experiments" in status.stdout and "best val_bpb" in status.stdout


GOOD = "DESCRIPTION: raise the learning rate\n<<<<<<< SEARCH\nLR = 0.03  # learning rate\n=======\nLR = 0.05  # learning rate\n>>>>>>> REPLACE\n"
BAD_REPLIES = {
    "no edit": ("DESCRIPTION: nothing\nI would change the learning rate.", "no SEARCH/REPLACE"),
    "does not apply": (GOOD.replace("LR = 0.03", "LR = 0.99"), "does not match"),
    "another file": (
        "DESCRIPTION: x\nharness/evaluate.py\n" + GOOD.split("\n", 1)[1],
        "another file",
    ),
    "syntax error": (GOOD.replace("LR = 0.05", "LR = = 0.05"), "syntax error"),
    "missing build_model": (
        "DESCRIPTION: rename\n<<<<<<< SEARCH\ndef build_model(ctx):\n=======\ndef make(ctx):\n>>>>>>> REPLACE\n",
        "build_model",
    ),
    "over the size limit": (
        GOOD.replace("LR = 0.05  # learning rate", "LR = 0.05\n" + "#" * 70_000),
        "over the",
    ),
}


def scripted_proposer(server: ScriptedLLMServer, **options) -> LLMProposer:
    return LLMProposer(
        base_url=server.base_url,
        api_key="k",
        model="m",
        temperature=0,
        system_prompt="p",
        format_retries=0,
        **options,
    )


@pytest.fixture
def research(repo, data_dir, redis_client, tmp_path):
    def make(proposer):
        profile = get_profile("cpu")
        r = Research(
            tag="t",
            git=GitStore(repo),
            redis=redis_client,
            proposer=proposer,
            profile=profile,
            fingerprint=load_manifest(data_dir)["fingerprint"],
            budget=budget_for(profile, 6.0, 20.0),
            runs_dir=tmp_path / "runs",
            policy=Policy(noise_runs=1, confirm=False),
        )
        r.frontier, _ = r.git.start_branch("t")
        return r

    return make


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_bad_llm_reply_is_rejected_and_never_queued(research, redis_client, case):
    reply, reason = BAD_REPLIES[case]
    with ScriptedLLMServer([reply]) as server:
        proposer = scripted_proposer(server)
        r = research(proposer)
        r.judge.best = 3.0
        tip = r.frontier
        r.step()
    row = r.results.rows()[-1]
    assert row["status"] == "rejected"
    assert reason in row["error"]
    assert Queue(keys.QUEUE_NAME, connection=redis_client, serializer=JSONSerializer).count == 0
    assert r.git.candidate_ids("t") == []
    assert r.git.resolve(r.git.branch("t")) == tip


def test_crash_keeps_branch_and_loop_goes_on(
    research, redis_server, redis_client, data_dir, tmp_path
):
    crash = GOOD.replace(
        "LR = 0.05  # learning rate",
        "LR = 0.05  # learning rate\nraise SystemError('candidate broke')",
    )
    settings = WorkerSettings(data_dir=data_dir, runs_dir=tmp_path / "runs")
    workers = LocalWorkers(1, redis_server.url, settings, tmp_path / "logs").start()
    try:
        with ScriptedLLMServer([crash, GOOD]) as server:
            proposer = scripted_proposer(server)
            r = research(proposer)
            r.judge.best = 100.0  # any score keeps
            tip = r.frontier
            r.step()
            assert r.results.rows()[-1]["status"] == "crash"
            assert "candidate broke" in r.results.rows()[-1]["error"]
            assert r.git.resolve(r.git.branch("t")) == tip
            r.step()
            # The proposer saw the failure's log tail in its next request.
            assert "candidate broke" in json.dumps(server.requests[-1]["messages"])
    finally:
        workers.stop()
    last = r.results.rows()[-1]
    assert last["status"] == "keep", last
    assert r.git.resolve(r.git.branch("t")).startswith(last["commit"])


def start(repo: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`autoresearch ARGS` in the background, its output dropped, Ctrl-C reaching it (a
    shell's background job would inherit SIGINT ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(predicate, timeout_s: float = 120.0, what: str = "condition") -> None:
    """Poll a condition of the real system (not a fixed sleep); fail after timeout_s."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "signum, code, why",
    [
        (signal.SIGINT, 130, "Ctrl-C"),
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGHUP, 129, "SIGHUP"),
    ],
)
def test_a_stop_signal_leaves_branch_and_results_consistent(repo, data_dir, signum, code, why):
    """Ctrl-C, kill and a closed terminal take the same clean path: what runs is cancelled,
    the summary printed, the state says stopped and why, the embedded Redis and the local
    worker stop, nothing of the candidate is left, and the exit code is 128 + the signal."""
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "orchestrator.cli", "run", "--tag", "intr"),
            *("--train-wall", "30", "--noise-runs", "1", "--no-confirm"),
        ],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored; Ctrl-C is what is tested here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    runs = repo / "workspace/runs/intr"
    try:
        # Interrupt while the first candidate (after the baseline) is training.
        _wait_for(lambda: "@metrics" in _read(runs / "0001" / "output.log"), what="0001 training")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert f"interrupted ({why})" in out
    state = json.loads((runs / "state.json").read_text())
    assert (state["status"], state["stop_reason"]) == ("stopped", f"interrupted ({why})")
    assert not (runs / "redis.url").exists()  # the embedded Redis stopped with the run
    rows = ResultsFile(runs / "results.tsv").rows()
    assert [r["id"] for r in rows] == ["0000"]  # the interrupted experiment has no row
    assert rows[0]["status"] == "keep"
    assert (
        git(repo, "rev-parse", "autoresearch/intr").strip()
        == git(repo, "rev-parse", "main").strip()
    )
    # Killed with their worker (PDEATHSIG); a loaded machine takes a few seconds to reap them.
    _wait_for(lambda: not processes_under(runs), timeout_s=30, what="candidate processes to end")


def test_a_killed_orchestrator_takes_its_redis_and_workers_along(repo, data_dir):
    """SIGKILL runs no cleanup: the kernel's parent-death signal ends the embedded
    redis-server, the local worker, its horse and the candidate; `status` reads the run as
    stopped (orchestrator gone), not running."""
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir))
    proc = start(repo, env, "run", "--tag", "kill9", "--train-wall", "30")
    runs = repo / "workspace/runs/kill9"
    try:
        _wait_for(lambda: "@metrics" in _read(runs / "0000" / "output.log"), what="baseline")
        url = (runs / "redis.url").read_text().strip()
        assert processes_with(url) and _answers(url)  # the worker (and its horse), the server
        proc.kill()
        proc.wait()
        _wait_for(lambda: not processes_with(url), timeout_s=30, what="the worker to end")
        _wait_for(lambda: not _answers(url), timeout_s=30, what="redis-server to end")
        _wait_for(lambda: not processes_under(runs), timeout_s=30, what="the candidate to end")
    finally:
        proc.kill()
    status = cli(repo, data_dir, "status", "--tag", "kill9")
    assert status.returncode == 0, status.stderr[-2000:]
    assert "run kill9: stopped (orchestrator gone)" in status.stdout


def test_a_run_resumed_after_ctrl_c_runs_what_was_cancelled(repo, data_dir):
    """Ctrl-C during the noise runs, then `run` again: the stopped noise run and the
    cancelled one run again (no infra_error rows), sigma is known, the summary counts this
    session's experiments, and the original notebook's reading of results.tsv is sane."""
    args = ["run", "--tag", "res", *FAST]
    args += ["--noise-runs", "3", "--no-confirm", "--sequential"]
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir))
    proc = start(repo, env, *args)
    runs = repo / "workspace/runs/res"
    try:
        _wait_for(lambda: "@metrics" in _read(runs / "0001" / "output.log"), what="noise 0001")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert [r["id"] for r in ResultsFile(runs / "results.tsv").rows()] == ["0000"]
    again = cli(repo, data_dir, *args, "--max-experiments", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    reruns = [json.loads(line) for line in again.stderr.splitlines() if "reconcile.rerun" in line]
    # 0001 was running (stopped); 0002, if the look-ahead had queued it yet, was cancelled.
    was = sorted((e["id"], e["was"]) for e in reruns)
    assert was in ([("0001", "stopped")], [("0001", "stopped"), ("0002", "canceled")]), was
    rows = ResultsFile(runs / "results.tsv").rows()
    every = [(r["id"], r["status"], r["error"]) for r in rows]
    assert [r["status"] for r in rows[:3]] == ["keep", "noise", "noise"], every
    assert len(rows) == 4 and rows[3]["proposer"] == "mutate", every
    assert json.loads((runs / "state.json").read_text())["sigma"] != ""
    assert "this session:      experiments 1, repeat runs" in again.stdout
    assert all(re.fullmatch(r"\d+\.\d", r["memory_gb"]) for r in rows), every
    baseline, best, improvement = _original_notebook(runs / "results.tsv")
    assert baseline == float(rows[0]["val_bpb"]) > 0 and 0 < best <= baseline
    assert 0 <= improvement < 100


def _original_notebook(path: Path) -> tuple[float, float, float]:
    """The original autoresearch analysis notebook's reading of results.tsv, re-implemented
    from its description: row 0 is the baseline; keep and discard rows are the experiments;
    the best is the running minimum over the kept ones; improvement in percent."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    baseline = float(rows[0]["val_bpb"])
    done = [r for r in rows if r["status"].strip().upper() in ("KEEP", "DISCARD")]
    best = baseline
    for r in done:
        if r["status"].strip().upper() == "KEEP":
            best = min(best, float(r["val_bpb"]))
    return baseline, best, (baseline - best) / baseline * 100


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_run_with_the_llm_proposer(repo, data_dir):
    reply = GOOD.replace("\n", "\nWHY: the loss still falls fast at the deadline\n", 1)
    with ScriptedLLMServer(["OK", reply]) as server:  # the preflight's reply, then the edit
        proc = cli(
            repo,
            data_dir,
            "run",
            "--tag",
            "llm",
            "--max-experiments",
            "1",
            *RUN_FAST,
            env={
                "AUTORESEARCH_LLM_BASE_URL": server.base_url,
                "AUTORESEARCH_LLM_PRICE_IN": "2",
                "AUTORESEARCH_LLM_PRICE_OUT": "8",
            },
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "default.proposer" in proc.stderr and '"proposer": "llm"' in proc.stderr
        assert server.requests[0]["messages"][-1]["content"] == "Reply with the single word OK."
        system = server.requests[1]["messages"][0]
        assert system["role"] == "system" and system["content"] == (repo / "program.md").read_text()
    rows = ResultsFile(repo / "workspace/runs/llm/results.tsv").rows()
    assert rows[1]["proposer"] == "llm"
    assert rows[1]["description"] == "raise the learning rate"
    assert rows[1]["why"] == "the loss still falls fast at the deadline"
    program_sha = hashlib.sha256((repo / "program.md").read_bytes()).hexdigest()
    assert rows[1]["program"] == program_sha[:12]
    assert int(rows[1]["prompt_tokens"]) > 0 and float(rows[1]["cost_usd"]) > 0
    assert "LR = 0.05" in (repo / "workspace/runs/llm/0001/candidate.diff").read_text()
    # The transcript: what the LLM was sent and answered; the system prompt once, by hash.
    transcript = (repo / "workspace/runs/llm/0001/transcript.md").read_text()
    program = (repo / "program.md").read_text()
    assert "## user" in transcript and "## assistant" in transcript and reply.strip() in transcript
    assert program not in transcript
    prompts = list((repo / "workspace/runs/llm/prompts").iterdir())
    assert [p.read_text() for p in prompts] == [program] and prompts[0].name in transcript


def test_evaluate_prints_a_result(repo, data_dir):
    proc = cli(repo, data_dir, "evaluate", "workspace/train.py", "--json", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and result["val_bpb"] > 0 and result["tokens"] > 0
    broken = repo / "broken.py"
    broken.write_text("def build_model(ctx):\n    return None\n")
    proc = cli(repo, data_dir, "evaluate", str(broken))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("autoresearch: error:") and "def train(model, ctx)" in last


def test_near_duplicate_is_not_run_twice(research, redis_server, data_dir, tmp_path):
    # The same change again, differing only in a comment: the same normalised source.
    twin = GOOD.replace("LR = 0.05  # learning rate", "LR = 0.05  # a faster learning rate")
    settings = WorkerSettings(data_dir=data_dir, runs_dir=tmp_path / "runs")
    workers = LocalWorkers(1, redis_server.url, settings, tmp_path / "logs").start()
    try:
        with ScriptedLLMServer([GOOD, twin]) as server:
            r = research(scripted_proposer(server))
            r.judge.best = 0.0  # nothing is kept: the parent stays the same
            r.step()
            r.step()
    finally:
        workers.stop()
    first, second = r.results.rows()
    assert first["status"] == "discard" and first["source_hash"]
    assert second["status"] == "rejected"
    assert second["error"] == "duplicate of 0000: the same normalised source on the same parent"
    assert r.git.candidate_ids("t") == ["0000"]  # never committed, never queued


def test_llm_spend_limit_stops_the_run(research):
    from orchestrator.research import Limits

    with ScriptedLLMServer([BAD_REPLIES["no edit"][0]]) as server:
        r = research(scripted_proposer(server, price_in_per_mtok=5000.0))
        r.judge.best = 3.0
        r.limits = Limits(max_cost_usd=0.25)
        assert not r._stopping()
        r.step()
    assert r.spent_usd() >= 0.25
    assert r._stopping() and r.done()
    assert r.stop_reason == "max LLM spend ($0.25) reached"


def test_orchestrator_killed_mid_experiment_resumes_without_loss(
    repo, data_dir, redis_server, redis_client, tmp_path
):
    """SIGKILL the orchestrator while a candidate trains; the worker finishes it; a restart
    records it exactly once and goes on."""
    import signal

    settings = WorkerSettings(data_dir=data_dir, runs_dir=repo / "workspace/runs")
    workers = LocalWorkers(1, redis_server.url, settings, tmp_path / "logs").start()
    runs = repo / "workspace/runs/kill"
    args = [
        "run",
        "--tag",
        "kill",
        "--local-workers",
        "0",
        "--train-wall",
        "10",
        "--eval-wall",
        "20",
        "--noise-runs",
        "1",
        "--no-confirm",
    ]
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), REDIS_URL=redis_server.url)
    try:
        proc = start(repo, env, *args)
        try:
            _wait_for(lambda: "@metrics" in _read(runs / "0001" / "output.log"), what="0001 runs")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert [r["id"] for r in ResultsFile(runs / "results.tsv").rows()] == ["0000"]
        pinned = GitStore(repo).candidate_ids("kill")  # what the killed run had committed
        again = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args, "--max-experiments", "1"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        workers.stop()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reconcile.adopt" in again.stderr
    rows = ResultsFile(runs / "results.tsv").rows()
    ids = [r["id"] for r in rows]
    # Each candidate the killed run committed (0001 running, the look-ahead's queued or
    # not-yet-queued proposals, as timing had it) is recorded exactly once, then one new
    # one: nothing lost, nothing twice.
    assert "0001" in pinned and len(pinned) >= 2
    assert sorted(ids) == sorted(set(ids)) == sorted(GitStore(repo).candidate_ids("kill"))
    assert not [r for r in rows if r["status"] == "infra_error"]
    # A keep made on under half the frontier's tokens (a loaded machine) is confirmed even
    # with --no-confirm (the suspicious-jump rule): its confirmation adds a row.
    again_runs = [r for r in rows if r["status"] == "confirm"]
    assert all(r["description"].startswith("confirm 0") for r in again_runs)
    # A late winner re-applied on the moved frontier runs again under a new id, too.
    again_runs += [r for r in rows if "(re-applied " in r["description"]]
    every = [(r["id"], r["status"], r["error"]) for r in rows]
    assert ids[0] == "0000" and "0001" in ids, every
    assert len(ids) - len(again_runs) == len(pinned) + 1, (pinned, every)
    first = next(r for r in rows if r["id"] == "0001")
    assert first["proposer"] == "mutate" and first["status"] in ("keep", "discard")
    kept = [r["commit"] for r in rows[1:] if r["status"] == "keep"]
    on_branch = git(repo, "rev-list", "--reverse", "autoresearch/kill").split()[1:]
    assert [c[:7] for c in on_branch] == kept


def _session_members(sid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # the session id, after state, ppid and pgrp
                members.append(int(proc.name))
    return members


def test_worker_killed_mid_experiment_is_retried_on_another(repo, data_dir, redis_server, tmp_path):
    """Kill a worker (daemon and work-horse) while it trains a candidate: its processes go,
    RQ finds the job abandoned, another worker reruns it, and the row is a real result."""
    import signal

    settings = WorkerSettings(data_dir=data_dir, runs_dir=repo / "workspace/runs")
    doomed = LocalWorkers(1, redis_server.url, settings, tmp_path / "a").start()
    runs = repo / "workspace/runs/wk"
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), REDIS_URL=redis_server.url)
    args = [
        "run",
        "--tag",
        "wk",
        "--local-workers",
        "0",
        "--max-experiments",
        "1",
        "--train-wall",
        "10",
        "--eval-wall",
        "20",
        "--noise-runs",
        "1",
        "--no-confirm",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rescuer = None
    try:
        _wait_for(lambda: "@metrics" in _read(runs / "0001" / "output.log"), what="0001 runs")
        for pid in _session_members(doomed.procs[0].pid):
            os.kill(pid, signal.SIGKILL)
        doomed.procs[0].wait()
        # Its candidate processes die with their parent (PDEATHSIG), nothing is left.
        _wait_for(lambda: not processes_under(runs / "0001"), timeout_s=10, what="reaping")
        rescuer = LocalWorkers(1, redis_server.url, settings, tmp_path / "b").start()
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
        if rescuer:
            rescuer.stop()
    assert proc.returncode == 0, err[-3000:]
    rows = ResultsFile(runs / "results.tsv").rows()
    assert [r["id"] for r in rows] == ["0000", "0001"]
    assert rows[1]["status"] in ("keep", "discard"), rows[1]
    assert rows[1]["worker"] != rows[0]["worker"]  # the rerun ran on the other worker
