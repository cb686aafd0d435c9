"""Is a kept gain real? The final re-measure, the hardware pin and the ablation, on real RQ
workers running the simulated runner (its score: the source's true value plus seeded noise,
so a run can be built whose in-run gain is flattered by a lucky draw)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from orchestrator import noise, report, trust
from orchestrator.research import Limits, Policy
from tests.conftest import clean_env, git
from tests.test_scheduling import SIM_TRAIN, ScriptedEdits, make, pool, sim_repo  # noqa: F401
from worker.simulate import score

REAL = ("SIM_DELTA_A = 0.0", "SIM_DELTA_A = -0.02")  # a true gain of 0.02


def _row(status: str, commit: str, val: float, test: float | None = None) -> dict:
    return {
        "status": status,
        "commit": commit,
        "val_bpb": f"{val:.6f}",
        "test_bpb": "" if test is None else f"{test:.6f}",
    }


def test_final_gain_is_the_difference_of_means_with_a_t_interval():
    rows = [_row("keep", "base000", 1.10), _row("noise", "base000", 1.12)]  # in-run: 1 dof
    rows += [_row("keep", "front00", 1.00)]
    rows += [_row("final", "front00", v, v + 0.1) for v in (1.01, 1.03)]
    rows += [_row("final", "base000", v, v + 0.1) for v in (1.10, 1.12)]
    final = noise.final_gain(rows, "base000", "front00")
    assert final["val"]["gain"] == pytest.approx(0.09)
    # Pooled over three groups of two 0.02 apart: squares 3 x 2 x 0.01^2 over 3 dof.
    sigma = math.sqrt(2 * 0.01**2)
    assert final["val"]["dof"] == 3
    assert final["val"]["ci95"] == pytest.approx(3.182 * sigma * math.sqrt(1 / 2 + 1 / 2))
    assert final["test"]["gain"] == pytest.approx(0.09) and final["test"]["dof"] == 2
    assert noise.final_gain(rows[:3], "base000", "front00") is None  # no final rows


def test_the_ablation_verdicts_follow_the_interval():
    frontier = [1.00, 1.01, 0.99]
    variants = [
        {"id": "0003", "commit": "a", "description": "carries", "values": [1.05, 1.06, 1.04]},
        {"id": "0005", "commit": "b", "description": "no-op", "values": [1.00, 1.01, 0.995]},
        {"id": "0007", "commit": "c", "description": "hurts", "values": [0.95, 0.96, 0.94]},
        {"id": "0009", "commit": "d", "description": "x", "values": [], "why": "conflicts"},
    ]
    table = trust.ablation(frontier, variants, [])
    assert [t["verdict"] for t in table] == [trust.CARRIES, trust.NOISE, trust.HURTS, "conflicts"]
    assert table[0]["loss"] == pytest.approx(0.05)


def _cli(repo, data_dir, *args: str) -> subprocess.CompletedProcess:
    """`autoresearch ARGS` in repo, on data_dir, with no other autoresearch setting."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=repo,
        env=clean_env(AUTORESEARCH_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _lucky_no_op(source: str, best: float, margin: float) -> tuple[str, str]:
    """An edit with no effect on the true score whose seed-0 draw beats `best` by more than
    the margin (the kind of keep that selection over many tries lets through)."""
    for i in range(1, 400):
        new = source.replace("LR = 0.03", f"LR = 0.03{i:03d}")
        if score(new, 0) < best - margin - 0.004:
            return "LR = 0.03", f"LR = 0.03{i:03d}"
    raise AssertionError("no lucky draw in 400 tries")


@pytest.fixture
def noisy_run(make, pool, sim_repo):  # noqa: F811
    """A finished run: a real gain (0.02) kept, then a no-op kept by a lucky draw; the
    final re-measure ran three times each; two workers."""
    base = SIM_TRAIN.replace("SIM_NOISE = 0.0005", "SIM_NOISE = 0.004")
    (sim_repo / "workspace" / "train.py").write_text(base)
    git(sim_repo, "commit", "-qam", "noisier")
    with_a = base.replace(*REAL)
    edits = [REAL, _lucky_no_op(with_a, score(with_a, 0), 0.001)]
    pool(2)
    policy = Policy(noise_runs=2, confirm=False, z=0, min_delta=0.001, final_runs=3)
    policy.sequential = True  # the no-op is proposed on the frontier that holds the gain
    r = make(ScriptedEdits(edits), policy, Limits(max_experiments=2))
    summary = r.run()
    return r, summary


def test_the_final_remeasure_shows_the_in_run_gain_flattered_by_selection(noisy_run):
    r, summary = noisy_run
    rows = r.results.rows()
    assert [row["status"] for row in rows if row["proposer"] == "scripted"] == ["keep", "keep"]
    finals = [row for row in rows if row["status"] == "final"]
    assert len(finals) == 6 and all(row["test_bpb"] for row in finals)
    baseline = next(row for row in rows if row["status"] == "keep")
    assert {row["commit"] for row in finals} == {baseline["commit"], r.frontier[:7]}
    # Every job after the baseline's batch was pinned to the baseline's signature.
    assert all(row["hardware"] == baseline["hardware"] != "" for row in rows)
    final = summary["final"]
    assert summary["gain"] > final["val"]["gain"] + 0.003  # the lucky draw, gone
    assert abs(final["val"]["gain"] - 0.02) < final["val"]["ci95"]  # the true gain, in the CI
    assert final["test"]["gain"] > 0
    md = report.markdown("s", rows, {**_view(r), "final": final}, "")
    assert "## Is the gain real?" in md
    assert f"| {summary['gain']:+.6f} | - | - |" in md
    assert f"| {final['val']['gain']:+.6f} | ±{final['val']['ci95']:.6f} | 3 |" in md
    from orchestrator.cli.run import final_lines

    val, test = final["val"], final["test"]
    assert final_lines(final) == [
        f"re-measured gain:  {val['gain']:.6f} +- {val['ci95']:.6f}  (95% CI, 3 runs each)",
        f"test split gain:   {test['gain']:.6f} +- {test['ci95']:.6f}  (95% CI, 3 runs each)",
    ]


def _view(r) -> dict:
    import time

    from orchestrator.results import summary

    return summary(r.results.rows(), {}, time.time())


def test_ablate_finds_the_kept_no_op(noisy_run, data_dir, tmp_path, sim_repo):  # noqa: F811
    r, _ = noisy_run
    common = ["--runner", "simulate", "--profile", "cpu", "--runs-dir", str(tmp_path / "runs")]
    out = _cli(sim_repo, data_dir, "ablate", "--tag", "s", "--runs", "16", *common)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((tmp_path / "runs" / "s" / "ablation.json").read_text())
    verdicts = {c["description"].split(" ->")[0]: c["verdict"] for c in saved["changes"]}
    assert verdicts == {"SIM_DELTA_A = 0.0": trust.CARRIES, "LR = 0.03": trust.NOISE}
    assert "| carries the gain |" in out.stdout and "| noise (within the 95% CI) |" in out.stdout
    again = _cli(sim_repo, data_dir, "report", "--tag", "s", *common[4:])
    assert again.returncode == 0, again.stderr[-2000:]
    text = (tmp_path / "runs" / "s" / "report.md").read_text()
    assert "## Ablation: which kept changes carry the gain" in text
    assert "## Is the gain real?" in text


def test_ablate_on_a_run_without_a_kept_change_is_one_line(sim_repo, data_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "runs" / "empty"
    folder.mkdir(parents=True)
    (folder / "results.tsv").write_text("commit\tval_bpb\tstatus\tid\nabc1234\t1.0\tkeep\t0000\n")
    out = _cli(sim_repo, data_dir, "ablate", "--tag", "empty", "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "autoresearch: error: run empty kept no change beyond its baseline: nothing to ablate"
    ]


class InterruptAfter(ScriptedEdits):
    """Scripted edits, then Ctrl-C (SIGINT to this process) in place of the next proposal."""

    def propose(self, request):
        if not self.edits:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)
        return super().propose(request)


def test_a_run_stopped_by_a_signal_skips_the_final_remeasure(make, pool):  # noqa: F811
    pool(1)
    policy = Policy(noise_runs=1, confirm=False, final_runs=2, sequential=True)
    r = make(InterruptAfter([REAL]), policy, Limits(max_experiments=5))
    summary = r.run()
    assert summary["stop_reason"] == "interrupted (Ctrl-C)"
    statuses = [row["status"] for row in r.results.rows()]
    assert statuses.count("keep") == 2 and "final" not in statuses
    assert summary["final"] is None and not r.final_launched


def test_the_loop_says_when_no_live_worker_has_the_pinned_hardware(
    pool,  # noqa: F811
    redis_client,
    monkeypatch,
):
    from orchestrator.research.flights import Jobs
    from tests.test_loop import _wait_for
    from tests.test_scheduling import BUDGET
    from worker import keys

    monkeypatch.setenv("AUTORESEARCH_SIM_HARDWARE", "machine B")
    pool(1)
    warned: list[dict] = []

    class Log:
        def info(self, event: str, **fields) -> None:
            pass

        def warning(self, event: str, **fields) -> None:
            warned.append({"event": event, **fields})

    run = {"profile": "cpu", "fingerprint": "f", "budget": BUDGET, "hardware": "machine A"}
    jobs = Jobs(redis_client, "pinned", run, Log())

    def published() -> bool:
        jobs.refresh_workers()
        live = redis_client.mget([keys.worker_hardware_key(w) for w in jobs.workers])
        return b"machine B" in live

    _wait_for(published, what="the worker's signature published")
    warned.clear()  # checked again, now that the signature is surely there
    jobs._unmatched = None
    jobs.refresh_workers()
    assert [w["event"] for w in warned] == ["no_worker_with_hardware"]
    assert warned[0]["pinned"] == "machine A" and "machine B" in warned[0]["live"]
    jobs.refresh_workers()
    assert len(warned) == 1  # said once for these workers
    run["hardware"] = "machine B"
    jobs.refresh_workers()
    assert len(warned) == 1  # a worker has the pinned signature: nothing to say


def test_verify_of_a_damaged_decision_json_is_one_line(sim_repo, data_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "runs" / "bad"
    (folder / "0001").mkdir(parents=True)
    (folder / "results.tsv").write_text("commit\tval_bpb\tstatus\tid\nabc1234\t1.0\tkeep\t0001\n")
    (folder / "0001" / "decision.json").write_text('{"run": ')
    out = _cli(
        sim_repo, data_dir, "verify", "0001", "--tag", "bad", "--runs-dir", str(tmp_path / "runs")
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("autoresearch: error: id: ") and "decision.json" in line
