"""Parallel search on real RQ workers running the simulated runner (no training).

Everything is real (Redis, worker processes, git, results.tsv) except the score, which the
simulate runner makes up from the candidate's text, deterministically per source and seed,
so these tests can pick candidates whose noisy measurements fall where they need them.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from harness.manifest import load_manifest
from harness.profiles import get_profile
from orchestrator import noise
from orchestrator.gitstore import GitStore
from orchestrator.local_workers import LocalWorkers
from orchestrator.proposers.base import Proposal, ProposalRequest
from orchestrator.redis_server import PrivateRedis, connect
from orchestrator.research import Limits, Policy, Research
from tests.conftest import git
from tests.llm_server import ScriptedLLMServer
from tests.test_loop import _wait_for, scripted_proposer
from worker.settings import WorkerSettings
from worker.simulate import score

SIM_TRAIN = '''\
"""A stand-in train.py: the simulated runner reads its score from these constants."""
SIM_VAL_BPB = 1.0
SIM_NOISE = 0.0005
SIM_DELTA_A = 0.0
LR = 0.03


WIDTH = 64


SIM_DELTA_B = 0.0


def build_model(ctx):
    return None


def train(model, ctx):
    return None
'''
HOLD_S = 0.5
BUDGET = {"train_wall_s": HOLD_S, "save_margin_s": 0.1, "return_grace_s": 0.05, "eval_wall_s": 1}


class ScriptedEdits:
    """A proposer (no LLM) that applies (old, new) text edits to the source it is given."""

    name = "scripted"

    def __init__(self, edits: list[tuple[str, str]]):
        self.edits = deque(edits)

    def propose(self, request: ProposalRequest) -> Proposal:
        try:
            old, new = self.edits.popleft()
        except IndexError:
            return Proposal("", "nothing", self.name, rejected="script exhausted")
        assert old in request.source, (old, request.source)
        return Proposal(request.source.replace(old, new), f"{old} -> {new}", self.name)


def lr_edits(n: int) -> list[tuple[str, str]]:
    """Changes with no effect on the simulated score."""
    return [("LR = 0.03", f"LR = 0.03{i}") for i in range(1, n + 1)]


@pytest.fixture
def sim_repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    (path / "workspace").mkdir(parents=True)
    (path / "workspace" / "train.py").write_text(SIM_TRAIN)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, "commit", "-qm", "initial")
    return path


@pytest.fixture
def pool(redis_server, data_dir, tmp_path):
    """Start simulated workers: pool(n) -> LocalWorkers; all are stopped at the end."""
    started: list[LocalWorkers] = []

    def start(n: int, url: str | None = None) -> LocalWorkers:
        settings = WorkerSettings(data_dir=data_dir, runs_dir=tmp_path / "runs", runner="simulate")
        workers = LocalWorkers(n, url or redis_server.url, settings, tmp_path / f"w{len(started)}")
        started.append(workers.start())
        return workers

    yield start
    for workers in started:
        workers.stop()


@pytest.fixture
def make(sim_repo, data_dir, redis_client, tmp_path):
    def build(proposer, policy: Policy, limits: Limits | None = None, redis=None) -> Research:
        return Research(
            tag="s",
            git=GitStore(sim_repo),
            redis=redis or redis_client,
            proposer=proposer,
            profile=get_profile("cpu"),
            fingerprint=load_manifest(data_dir)["fingerprint"],
            budget=BUDGET,
            runs_dir=tmp_path / "runs",
            policy=policy,
            limits=limits or Limits(),
        )

    return build


def jobs_of(r: Research) -> dict[str, Job]:
    return {
        row["id"]: Job.fetch(
            r.jobs.job_id(row["id"]), connection=r.redis, serializer=JSONSerializer
        )
        for row in r.results.rows()
        if row["status"] != "rejected"
    }


def most_at_once(jobs) -> int:
    events = sorted(
        [(j.started_at, 1) for j in jobs] + [(j.ended_at, -1) for j in jobs],
        key=lambda e: (e[0], e[1]),
    )
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def assert_one_row_per_experiment(r: Research) -> None:
    ids = [row["id"] for row in r.results.rows()]
    assert len(ids) == len(set(ids))
    pinned = set(r.git.candidate_ids(r.tag))
    ran = {row["id"] for row in r.results.rows() if row["status"] != "rejected"}
    assert pinned == ran
    assert r.idle() and not r.flights


def baseline_runs(r: Research) -> None:
    """Start the run by hand (the baseline and its noise runs), as run() does."""
    r.frontier, _ = r.git.start_branch(r.tag)
    r.launch_frontier_runs(baseline=True)
    while not r.idle():
        r.pump(auto=False)


def test_parallel_run_uses_every_worker(make, pool):
    pool(3)
    edits = lr_edits(7) + [("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.1")]
    r = make(ScriptedEdits(edits), Policy(noise_runs=2), Limits(max_experiments=len(edits)))
    summary = r.run()

    assert summary["stop_reason"] == "max experiments (8) reached"
    assert_one_row_per_experiment(r)
    rows = r.results.rows()
    jobs = jobs_of(r)
    assert most_at_once(jobs.values()) == 3  # three workers, three jobs at once
    assert len({j.worker_name for j in jobs.values()}) == 3
    assert [row["status"] for row in rows].count("noise") == 1
    # The real gain was kept after a confirmation run on another worker than its own.
    keep = next(row for row in rows if row["status"] == "keep" and row["id"] != "0000")
    confirm = next(row for row in rows if row["description"].startswith(f"confirm {keep['id']}"))
    assert confirm["status"] == "confirm" and confirm["commit"] == keep["commit"]
    assert confirm["worker"] != keep["worker"]
    assert r.git.resolve(r.git.branch("s")).startswith(keep["commit"])
    assert summary["best_val_bpb"] == pytest.approx(0.9, abs=0.01)
    # Every row says how long its job queued and how long its result took to be recorded.
    for row in rows:
        assert 0 <= float(row["queue_s"]) < 60 and 0 <= float(row["record_s"]) < 60, row
    assert max(float(row["queue_s"]) for row in rows) > HOLD_S  # more jobs than workers


def test_workers_joining_and_leaving_mid_run_are_picked_up(make, pool, tmp_path):
    first = pool(1)
    r = make(
        ScriptedEdits(lr_edits(12)), Policy(noise_runs=1, confirm=False), Limits(max_experiments=12)
    )
    joined: list[LocalWorkers] = []

    def operate() -> None:
        _wait_for(lambda: len(r.results.rows()) >= 2, what="two rows on one worker")
        joined.append(pool(2))
        _wait_for(lambda: len(r.workers) == 3, what="the orchestrator sees three workers")
        first.stop()  # a warm shutdown: it finishes its job, then leaves

    side = threading.Thread(target=operate)
    side.start()
    r.run()
    side.join()

    assert_one_row_per_experiment(r)
    assert len(r.workers) == 2  # the one that left is no longer counted
    jobs = jobs_of(r)
    late = [j for j in jobs.values() if j.worker_name != jobs["0000"].worker_name]
    assert len({j.worker_name for j in late}) == 2  # both newcomers got work
    assert most_at_once(late) == 2
    assert max(j.ended_at for j in late) > max(
        j.ended_at for j in jobs.values() if j.worker_name == jobs["0000"].worker_name
    )


def _baseline_stats(seeds: range) -> tuple[float, float]:
    values = [score(SIM_TRAIN, s) for s in seeds]
    return statistics.mean(values), statistics.stdev(values)


def test_gain_within_the_noise_is_discarded(make, pool):
    pool(1)
    best, sigma = _baseline_stats(range(3))
    # A candidate whose single run beats the baseline, but by less than 2 sigma: plain
    # "lower is better" keeps it.
    source = next(
        SIM_TRAIN.replace("WIDTH = 64", f"WIDTH = {w}")
        for w in range(65, 5000)
        if 0.2 * sigma
        < best - score(SIM_TRAIN.replace("WIDTH = 64", f"WIDTH = {w}"), 0)
        < 1.8 * sigma
    )
    width = source.split("WIDTH = ")[1].split("\n")[0]
    r = make(
        ScriptedEdits([("WIDTH = 64", f"WIDTH = {width}")]),
        Policy(noise_runs=3, z=2.0, min_delta=0.0, confirm=False),
    )
    baseline_runs(r)
    assert r.best == pytest.approx(best, abs=1e-5) and noise.pooled_sigma(r.results.rows())[
        0
    ] == pytest.approx(sigma, abs=1e-5)
    r.step()
    row = r.results.rows()[-1]
    assert float(row["val_bpb"]) < best  # lower than the best...
    assert row["status"] == "discard"  # ...but within the noise
    assert "not above the margin" in row["error"]
    assert r.git.resolve(r.git.branch("s")) == r.frontier


def test_confirmation_rejects_a_lucky_run_and_keeps_a_real_gain(make, pool):
    pool(2)
    best, sigma = _baseline_stats(range(3))

    def lucky(w: int) -> bool:
        src = SIM_TRAIN.replace("WIDTH = 64", f"WIDTH = {w}")
        first, second = score(src, 0), score(src, 1)
        return best - first > 2.2 * sigma and best - (first + second) / 2 < 1.8 * sigma

    width = next(w for w in range(65, 20000) if lucky(w))
    r = make(
        ScriptedEdits(
            [("WIDTH = 64", f"WIDTH = {width}"), ("SIM_DELTA_B = 0.0", "SIM_DELTA_B = -0.05")]
        ),
        Policy(noise_runs=3, z=2.0, min_delta=0.0, confirm=True, noise_every=1),
    )
    baseline_runs(r)
    tip = r.frontier
    r.step()
    candidate, confirm = r.results.rows()[-2:]
    assert candidate["status"] == "discard" and "not confirmed" in candidate["error"]
    assert confirm["status"] == "confirm" and confirm["commit"] == candidate["commit"]
    assert confirm["worker"] != candidate["worker"]
    assert r.git.resolve(r.git.branch("s")) == tip

    r.step()
    candidate, confirm, remeasure = r.results.rows()[-3:]
    assert (candidate["status"], confirm["status"]) == ("keep", "confirm")
    # After the keep (noise_every=1) the new frontier gets a third run, for the noise floor.
    assert remeasure["status"] == "noise" and remeasure["commit"] == candidate["commit"]
    assert confirm["worker"] != candidate["worker"]
    assert r.git.resolve(r.git.branch("s")).startswith(candidate["commit"])
    runs = [float(row["val_bpb"]) for row in (candidate, confirm, remeasure)]
    assert r.best == pytest.approx(sum(runs) / 3)


def test_a_winner_on_an_old_frontier_is_reapplied_on_the_new_one(make, pool):
    pool(2)
    # Two independent gains proposed at once, on the same frontier: one is kept first,
    # the other then won against an old frontier and is merged onto the new one.
    edits = [
        ("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.1"),
        ("SIM_DELTA_B = 0.0", "SIM_DELTA_B = -0.05"),
    ]
    r = make(ScriptedEdits(edits), Policy(noise_runs=1), Limits(max_experiments=2))
    r.run()

    assert_one_row_per_experiment(r)
    rows = r.results.rows()
    (stale,) = [row for row in rows if row["status"] == "reapplied"]
    assert "re-applied on" in stale["error"]
    (again,) = [row for row in rows if row["proposer"] == "reapply"]
    assert again["status"] == "keep" and again["parent"] != stale["parent"]
    tip = r.git.read(r.git.branch("s"))
    assert "SIM_DELTA_A = -0.1" in tip and "SIM_DELTA_B = -0.05" in tip
    assert r.best == pytest.approx(0.85, abs=0.005)


CONFLICTING = [
    ("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.1"),
    ("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.05"),
]


def test_a_conflicting_winner_is_stale_without_an_llm(make, pool):
    pool(2)
    r = make(ScriptedEdits(CONFLICTING), Policy(noise_runs=1), Limits(max_experiments=2))
    r.run()
    rows = r.results.rows()
    (stale,) = [row for row in rows if row["status"] == "stale"]
    assert "conflicts with" in stale["error"] and "no LLM" in stale["error"]
    assert [row["status"] for row in rows].count("keep") == 2  # the baseline and one winner


def _edit(old: str, new: str) -> str:
    return f"DESCRIPTION: {new}\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"


def test_a_conflicting_winner_goes_to_the_llm_to_combine(make, pool):
    pool(2)
    replies = [
        _edit(*CONFLICTING[0]),
        _edit(*CONFLICTING[1]),
        _edit("SIM_DELTA_B = 0.0", "SIM_DELTA_B = -0.05"),
    ]
    with ScriptedLLMServer(replies) as server:
        r = make(scripted_proposer(server), Policy(noise_runs=1), Limits(max_experiments=2))
        r.run()
    rows = r.results.rows()
    (stale,) = [row for row in rows if row["status"] == "reapplied"]
    assert "the LLM combines them" in stale["error"]
    combine = server.requests[2]["messages"][-1]["content"]
    assert "Combine it with the current best" in combine and "SIM_DELTA_A" in combine
    (combined,) = [row for row in rows if row["description"] == "SIM_DELTA_B = -0.05"]
    assert combined["status"] == "keep" and combined["proposer"] == "llm"
    assert "SIM_DELTA_B = -0.05" in r.git.read(r.git.branch("s"))


def test_the_run_survives_a_redis_restart(make, pool, tmp_path):
    store = tmp_path / "redis"
    server = PrivateRedis(data_dir=store).start()
    servers = [server]
    try:
        pool(2, server.url)
        r = make(
            ScriptedEdits(lr_edits(10)),
            Policy(noise_runs=1, confirm=False, final_runs=0),
            Limits(max_experiments=10),
            redis=connect(server.url),
        )

        def restart() -> None:
            _wait_for(lambda: len(r.results.rows()) >= 3, what="three rows")
            servers[0].stop()  # SIGTERM: Redis writes its append-only file and exits
            servers.append(PrivateRedis(port=server.port, data_dir=store).start())

        side = threading.Thread(target=restart)
        side.start()
        summary = r.run()
        side.join()
    finally:
        for s in servers:
            s.stop()
    assert len(servers) == 2
    assert summary["stop_reason"] == "max experiments (10) reached"
    assert_one_row_per_experiment(r)
    assert len(r.results.rows()) == 11
    assert all(row["status"] in ("keep", "discard") for row in r.results.rows())


def test_max_hours_stops_new_work_and_finishes_what_is_in_flight(make, pool):
    pool(2)
    r = make(
        ScriptedEdits(lr_edits(100)),
        Policy(noise_runs=1, confirm=False),
        Limits(max_hours=3 / 3600),
    )
    summary = r.run()
    assert summary["stop_reason"].startswith("max hours")
    assert_one_row_per_experiment(r)
    rows = r.results.rows()
    assert 4 <= len(rows) < 40
    # Proposals made but never run are in the trail too, saying why.
    assert all(
        row["error"].startswith("not run: max hours") for row in rows if row["status"] == "rejected"
    )
    assert r.jobs.queue.count == 0


def test_orchestrator_killed_with_many_jobs_in_flight_loses_nothing(
    sim_repo, pool, redis_server, data_dir, tmp_path
):
    """SIGKILL a parallel run (three workers, confirmations and noise runs in flight); a
    restart with the same tag adopts every job and records each exactly once."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import clean_env

    source = SIM_TRAIN.replace("SIM_NOISE = 0.0005", "SIM_NOISE = 0.0005\nSIM_HOLD_S = 1.0")
    (sim_repo / "workspace" / "train.py").write_text(source)
    git(sim_repo, "commit", "-qam", "hold 1 s")
    pool(3)
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "orchestrator.cli", "run", "--tag", "k", "--runner"]
    args += ["simulate", "--local-workers", "0", "--proposer", "mutate", "--profile", "cpu"]
    args += ["--runs-dir", str(runs), "--train-wall", "5", "--eval-wall", "5"]
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir), REDIS_URL=redis_server.url)
    proc = subprocess.Popen(
        args, cwd=sim_repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results = runs / "k" / "results.tsv"
    store = GitStore(sim_repo)
    try:
        _wait_for(
            lambda: (
                results.exists()
                and len(results.read_text().splitlines()) >= 6
                and len(store.candidate_ids("k")) >= len(results.read_text().splitlines()) + 2
            ),
            what="rows recorded and jobs in flight",
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    in_flight = set(store.candidate_ids("k")) - {
        line.split("\t")[5] for line in results.read_text().splitlines()[1:]
    }
    assert in_flight
    again = subprocess.run(
        [*args, "--max-experiments", "2"],
        cwd=sim_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    # Each is adopted, or (killed between pinning and queueing) run again or, a repeat run
    # of a measured commit, dropped for the loop to schedule what it still needs.
    reconciled = ("reconcile.adopt", "reconcile.rerun", "reconcile.dropped")
    assert sum(again.stderr.count(event) for event in reconciled) >= len(in_flight)
    rows = [line.split("\t") for line in results.read_text().splitlines()[1:]]
    ids = [row[5] for row in rows]
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) >= in_flight  # nothing lost
    assert set(ids) == set(store.candidate_ids("k")) | {r[5] for r in rows if r[3] == "rejected"}


def test_a_result_scored_by_another_harness_or_data_is_refused(make):
    from worker import contract

    r = make(ScriptedEdits([]), Policy())
    spec = {"id": "0007"}
    fine = contract.make_result(
        spec, "ok", val_bpb=0.5, harness_sha256=r.harness_sha256, fingerprint=r.fingerprint
    )
    assert r.judge._refused(spec, fine) is fine
    for harness, data in (("0" * 64, r.fingerprint), (r.harness_sha256, "other-data")):
        forged = {**fine, "harness_sha256": harness, "fingerprint": data}
        refused = r.judge._refused(spec, forged)
        assert refused["status"] == "infra_error" and refused["val_bpb"] is None
        assert refused["error"].startswith("refused: scored by harness")


def test_verify_reruns_a_recorded_experiment_exactly(sim_repo, data_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import clean_env

    source = SIM_TRAIN.replace("SIM_NOISE = 0.0005", "SIM_NOISE = 0.0005\nSIM_HOLD_S = 0.3")
    (sim_repo / "workspace" / "train.py").write_text(source)
    git(sim_repo, "commit", "-qam", "hold 0.3 s")
    env = clean_env(AUTORESEARCH_DATA_DIR=str(data_dir))
    common = ["--runner", "simulate", "--profile", "cpu", "--runs-dir", str(tmp_path / "runs")]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args, *common],
            cwd=sim_repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = cli(
        "run",
        "--tag",
        "v",
        "--max-experiments",
        "2",
        "--proposer",
        "mutate",
        "--noise-runs",
        "1",
        "--no-confirm",
        "--train-wall",
        "5",
        "--eval-wall",
        "5",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    verify = cli("verify", "0001", "--tag", "v", "--json")
    assert verify.returncode == 0, verify.stderr[-2000:]
    import json

    out = json.loads(verify.stdout)
    assert out["status"] == "ok" and out["seed"] == 0
    assert out["difference"] == pytest.approx(0.0, abs=2e-6)  # same source, same seed
    other = json.loads(cli("verify", "0001", "--tag", "v", "--json", "--seed", "5").stdout)
    assert other["difference"] != pytest.approx(0.0, abs=2e-6)  # another seed, other noise
    missing = cli("verify", "0999", "--tag", "v")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        "autoresearch: error: id: no experiment 0999 in run v"
    )


def test_a_suspicious_jump_is_flagged_and_confirmed_even_with_confirmation_off(make, pool):
    pool(2)
    edits = [
        ("SIM_DELTA_B = 0.0", "SIM_DELTA_B = -0.01"),
        ("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.5"),
    ]
    r = make(ScriptedEdits(edits), Policy(noise_runs=1, confirm=False))
    baseline_runs(r)
    r.step()
    assert [row["status"] for row in r.results.rows()] == ["keep", "keep"]  # no re-run
    r.step()
    candidate, confirm = r.results.rows()[-2:]
    assert candidate["status"] == "keep" and candidate["error"].startswith("suspicious: gain")
    assert confirm["status"] == "confirm" and confirm["commit"] == candidate["commit"]
