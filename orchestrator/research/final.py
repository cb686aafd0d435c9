"""The final re-measure: once a run stopped, is its gain still there on fresh seeds?

Every keep was the best of many noisy tries, so the frontier's in-run value is flattered
by selection. When the run stops (its limits or the LLM's breaker, not a signal: Ctrl-C
and `docker compose down` want it gone now), the frontier and the baseline are run
policy.final_runs times each, with the same fresh seeds (pairs), scored on validation and
on the held-out test split. Their rows (`final`) move no in-run figure; noise.final_gain
turns them into gains with confidence intervals, which the summary and the report show
beside the in-run gain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.proposers.base import Proposal
from worker.vocab import RowStatus, RunKind

if TYPE_CHECKING:
    from orchestrator.research.loop import Research

SEED_OFFSET = 1000  # past the seeds of the noise runs, confirmations and retries


def launch(r: Research) -> int:
    """Queue the final runs of r's frontier and baseline, once per session; returns how
    many (0: none due: launched already, off, or nothing kept beyond the baseline)."""
    if r.final_launched:
        return 0
    r.final_launched = True
    rows = r.results.rows()
    baseline = next((row for row in rows if row["status"] == RowStatus.KEEP), None)
    runs = r.policy.final_runs
    if not runs or baseline is None or baseline["commit"] == r.frontier[:7]:
        r.log.info("final.skipped", why="no keep beyond the baseline" if runs else "off")
        return 0
    pinned = r.git.resolve(r.git.candidate_ref(r.tag, baseline["id"]))
    base = pinned or r.git.resolve(baseline["commit"]) or ""
    if not base:
        r.log.warning("final.skipped", why=f"baseline commit {baseline['commit']} not found")
        return 0
    # A resumed run's next session starts past its ids, so its seeds are fresh again.
    seeds = [r.seed + SEED_OFFSET + r.recorder.first_id() + k for k in range(runs)]
    r.log.info("final.start", runs=runs, frontier=r.frontier[:12], baseline=base[:12])
    sources = {commit: r.git.read(commit) for commit in (r.frontier, base)}
    # Pairs, queued frontier then baseline seed by seed: whatever drifts while they run
    # (the machine's load, its clocks) drifts for both alike.
    for k, seed in enumerate(seeds):
        for commit, name in ((r.frontier, "frontier"), (base, "baseline")):
            source = sources[commit]
            exp_id = r.recorder.new_id()
            r.git.pin(r.tag, exp_id, commit)
            desc = f"final {k + 1}/{runs} of the {name} {commit[:7]} (seed {seed})"
            proposal = Proposal(source, desc, RunKind.FINAL)
            spec = r.jobs.spec(exp_id, commit, commit, proposal, seed, test_split=True)
            r.jobs.launch(exp_id, RunKind.FINAL, spec, proposal)
    return 2 * runs
