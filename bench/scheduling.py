"""Scheduling: how busy the loop keeps W workers while an LLM takes its time (a benchmark).

Why: a GPU-hour is the expensive part of a run. The loop proposes on threads ahead of
demand and keeps one job per worker plus a look-ahead queued, so a worker that finishes
should start its next experiment at once, whatever the LLM's latency; the old loop
proposed, ran and decided one experiment at a time. This measures both on the real
machinery with simulated compute: a private Redis, W real `autoresearch worker`
processes with the simulate runner (it holds the worker for the budget's train wall and
makes up a val_bpb, worker/simulate.py), a real git repository holding a stand-in
train.py, and the real Research loop in this process. The LLM is the mutate proposer
behind a sleep of the LLM latency.

Time is scaled: the real budget is 300 s, so the simulated one is 300 x --scale seconds
(6 s at the default 0.02) and the LLM latency is latency x scale. Figures are reported
in real units: experiments per worker-hour against the limit 3600 / 300 = 12, with the
window counted at its real length (window / scale). A worker waiting for a proposal
scales with the latency, so it weighs what it would on a real budget; fixed overheads do
not scale (RQ's job bookkeeping, the loop's 0.1 s poll, git and Redis round trips,
deciding and dispatching a burst of finished jobs one after the other): at a scaled budget
they weigh 1 / scale times more than on a real 300 s one (50 times at 0.02), so the busy
fraction and the throughput here are lower bounds of the real ones. A larger --scale
(0.1: a 30 s budget) shows how much of the idle time is fixed overhead.

Each configuration gets a fresh private Redis, a fresh repository and W freshly started
workers (stopped after it; their start is not timed). It runs for one budget (the
baseline) plus --rounds budgets (Limits.max_hours), then lets what is in flight finish.
Measured from RQ afterwards, over every job of the run (Job.fetch of each id in
results.tsv: enqueued_at, started_at, ended_at, worker_name), in the steady window [the
baseline job's end, the moment the loop stops dispatching]:

- busy: the sum of job intervals (started_at to ended_at) clipped to the window, over
  W x window (RQ's job interval holds a few ms of in-job overhead besides the held
  budget: the worker imports the job function, checks the data fingerprint, opens
  the logs; its mean is printed under the table);
- exp/worker-h: jobs of any kind (baseline, noise, candidate, confirmation: all are GPU
  runs), each counted by the fraction of its interval inside the window, per worker and
  per real hour of window;
- dispatch p50/p99 (ms, as measured, not scaled: fixed overheads, plus any wait for a
  proposal): parallel loop, per worker, the gap from one job's end to the next job's start
  on the same worker; sequential loop, the gap from one job's end to the next job's start
  on any worker, with the LLM latency put back at its real length for a gap before a
  candidate (measured gap - latency x scale + latency);
- queued: the share of those gaps where the next job was already in Redis when the
  worker finished (the rest waited for the loop to decide, propose and enqueue);
- experiments: every job the configuration ran (all of its runs, the drain included);
- stale: late winners (won on an older frontier) not carried over (`stale`), over all
  (`stale` + `reapplied`); `--merge line`: with `git merge-file` alone, as before;
  `--score hash`: wins come from any constant, not only SIM_VAL_BPB (worker/simulate.py).

Policies: the parallel loop is Policy() with the defaults (noise_runs 3, confirmation on,
look-ahead auto: one per 4 workers; --lookahead N changes it) except llm_concurrency = max(8, ceil(2 x W x
latency / budget) + W) (column `llm conc.`), enough proposals in flight for the first
round and for the steady state; the sequential baseline is Policy(sequential=True) on the
same W workers (the baseline's noise runs go out together, then one experiment at a
time), so its busy fraction is at most 1 / W. Target: busy >= 0.97 at W = 64 with 30 s of
LLM latency.

    python bench/scheduling.py [--workers 1,4,16,64] [--latency 0,30] [--loops parallel,sequential]
                               [--scale 0.02] [--rounds 3] [--lookahead auto] [--merge line]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gitrepo import make_repo  # noqa: E402
from rq import Worker  # noqa: E402
from rq.exceptions import NoSuchJobError  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from harness.manifest import load_manifest  # noqa: E402
from harness.profiles import get_profile  # noqa: E402
from orchestrator import defaults, gitstore, logs  # noqa: E402
from orchestrator.gitstore import GitStore  # noqa: E402
from orchestrator.local_workers import LocalWorkers  # noqa: E402
from orchestrator.proposers.base import Proposal, ProposalRequest  # noqa: E402
from orchestrator.proposers.mutate import MutateProposer  # noqa: E402
from orchestrator.redis_server import PrivateRedis, connect  # noqa: E402
from orchestrator.research import Limits, Policy, Research  # noqa: E402
from orchestrator.settings import parse_lookahead  # noqa: E402
from orchestrator.validate import validate_candidate  # noqa: E402
from worker.settings import WorkerSettings, default_data_root  # noqa: E402

REAL_BUDGET_S = 300.0  # the gpu profile's train wall
LIMIT = 3600.0 / REAL_BUDGET_S  # experiments per worker-hour with no overhead at all
TARGET_BUSY = 0.97
TARGET_AT = (64, 30.0)  # (W, LLM latency in s) where the target applies
WORKER_START_TIMEOUT_S = 180.0

# The stand-in train.py: SIM_VAL_BPB is its true score and SIM_NOISE the per-seed spread
# (worker/simulate.py); the mutate proposer changes one or two of the constants, so about
# one candidate in ten moves SIM_VAL_BPB (half of those improve it) and the rest are
# neutral: keeps, confirmations, stale candidates and noise re-runs all happen.
SIM_TRAIN_PY = '''"""A stand-in train.py for the simulate runner (bench/scheduling.py)."""

SIM_VAL_BPB = 1.0
SIM_NOISE = 0.002
LR = 0.03
WIDTH = 64
DEPTH = 4
WARMUP = 0.1
WEIGHT_DECAY = 0.1
DROPOUT = 0.05
BETA1 = 0.9
BETA2 = 0.95
GRAD_CLIP = 1.0
INIT_SCALE = 0.02


def build_model(ctx):
    return None


def train(model, ctx):
    return None
'''


class SimulatedLLM:
    """The mutate proposer behind a fixed latency: an LLM call that takes latency_s."""

    name = "llm-sim"

    def __init__(self, latency_s: float):
        self.latency_s = latency_s
        self.inner = MutateProposer("cpu")

    def propose(self, request: ProposalRequest) -> Proposal:
        time.sleep(self.latency_s)
        return self.inner.propose(request)


@dataclass
class Span:
    kind: str
    worker: str
    enqueued: float
    start: float
    end: float
    held: float  # seconds the simulate runner held the worker (its training_s)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def wait_for_workers(redis, count: int) -> float:
    started = time.monotonic()
    while len(Worker.all(connection=redis)) < count:
        if time.monotonic() - started > WORKER_START_TIMEOUT_S:
            raise RuntimeError(f"only {len(Worker.all(connection=redis))}/{count} workers started")
        time.sleep(0.2)
    return time.monotonic() - started


def scaled_budget(scale: float) -> dict:
    """The real budget's limits, scaled: the train wall is REAL_BUDGET_S x scale."""
    budget_s = REAL_BUDGET_S * scale
    return {
        "train_wall_s": budget_s,
        "save_margin_s": 0.1 * budget_s,
        "return_grace_s": 0.05 * budget_s,
        "eval_wall_s": budget_s,
    }


def policy_for(loop: str, workers: int, latency: float, args: argparse.Namespace) -> Policy:
    """Sequential, or parallel with enough proposals in flight for W workers at this latency."""
    if loop == "sequential":
        return Policy(sequential=True)
    concurrency = args.llm_concurrency or max(
        defaults.LLM_CONCURRENCY, math.ceil(2 * workers * latency / REAL_BUDGET_S) + workers
    )
    lookahead = None if args.lookahead == "auto" else args.lookahead
    return Policy(llm_concurrency=concurrency, lookahead=lookahead)


def run_loop(
    *,
    tag: str,
    repo: Path,
    runs: Path,
    redis,
    proposer: SimulatedLLM,
    policy: Policy,
    budget: dict,
    rounds: int,
    fingerprint: str,
) -> tuple[Research, float]:
    """Run the loop for the baseline's budget plus ``rounds`` more.

    Returns it and the wall-clock moment it stopped dispatching (max_hours from its start).
    """
    hours = (1 + rounds) * budget["train_wall_s"] / 3600
    research = Research(
        tag=tag,
        git=GitStore(repo),
        redis=redis,
        proposer=proposer,
        profile=get_profile("cpu"),
        fingerprint=fingerprint,
        budget=budget,
        runs_dir=runs,
        policy=policy,
        limits=Limits(max_hours=hours),
    )
    stop_at = time.time() - (time.monotonic() - research.started) + hours * 3600
    research.run()
    return research, stop_at


def job_spans(research: Research, rows: list[dict], redis) -> list[Span]:
    """The RQ job interval of every row that ran (rejected or unrun rows have none)."""
    spans = []
    for row in rows:
        try:
            job = Job.fetch(
                research.jobs.job_id(row["id"]), connection=redis, serializer=JSONSerializer
            )
        except NoSuchJobError:
            continue  # rejected or not run: no job
        if job.started_at is None or job.ended_at is None:
            continue
        result = job.return_value() or {}
        spans.append(
            Span(
                (job.meta or {}).get("kind", "?"),
                job.worker_name or "?",
                job.enqueued_at.timestamp(),
                job.started_at.timestamp(),
                job.ended_at.timestamp(),
                float(result.get("training_s") or 0.0),
            )
        )
    return spans


def run_config(
    loop: str,
    workers: int,
    latency: float,
    args: argparse.Namespace,
    fingerprint: str,
    tmp: Path,
) -> dict:
    """One configuration on a fresh Redis, repository and workers; its measures."""
    budget = scaled_budget(args.scale)
    tag = f"{loop[:3]}-w{workers}-l{latency:g}"
    folder = tmp / tag
    drop = "SIM_VAL_BPB = 1.0\n" if args.score == "hash" else ""  # hash: scored by the text
    repo = make_repo(folder / "repo", SIM_TRAIN_PY.replace(drop, ""))
    runs = folder / "runs"
    policy = policy_for(loop, workers, latency, args)
    with PrivateRedis() as server:
        redis = connect(server.url)
        pool = LocalWorkers(
            workers,
            server.url,
            WorkerSettings(data_dir=args.data_dir, runs_dir=runs, runner="simulate"),
            folder / "logs",
        ).start()
        try:
            start_s = wait_for_workers(redis, workers)
            research, stop_at = run_loop(
                tag=tag,
                repo=repo,
                runs=runs,
                redis=redis,
                proposer=SimulatedLLM(latency * args.scale),
                policy=policy,
                budget=budget,
                rounds=args.rounds,
                fingerprint=fingerprint,
            )
        finally:
            pool.stop()
        rows = research.results.rows()
        spans = job_spans(research, rows, redis)
    return measure(loop, workers, latency, args.scale, spans, stop_at, policy) | {
        "start_s": start_s,
        "kinds": dict(Counter(s.kind for s in spans)),
        "rows": len(rows),
        "stop_reason": research.stop_reason,
        # Winners on an older frontier: re-applied on the new one, or stale (conflicting).
        "late": Counter(r["status"] for r in rows if r["status"] in ("reapplied", "stale")),
    }


def measure(
    loop: str,
    workers: int,
    latency: float,
    scale: float,
    spans: list[Span],
    stop_at: float,
    policy: Policy,
) -> dict:
    baseline_end = min((s.end for s in spans if s.kind == "baseline"), default=None)
    if baseline_end is None or baseline_end >= stop_at:
        raise RuntimeError(f"{loop} W={workers}: no baseline ended before the stop")
    lo, hi = baseline_end, stop_at
    window = hi - lo
    busy = count = 0.0
    for s in spans:
        inside = max(0.0, min(s.end, hi) - max(s.start, lo))
        busy += inside
        if s.end > s.start:
            count += inside / (s.end - s.start)
    gaps, queued = [], 0
    if loop == "parallel":
        by_worker: dict[str, list[Span]] = {}
        for s in spans:
            by_worker.setdefault(s.worker, []).append(s)
        for mine in by_worker.values():
            mine.sort(key=lambda s: s.start)
            for a, b in zip(mine, mine[1:], strict=False):
                if lo <= a.end < hi:
                    gaps.append(b.start - a.end)
                    queued += b.enqueued <= a.end
    else:
        ordered = sorted(spans, key=lambda s: s.start)
        last_end = -math.inf
        for s in ordered:
            gap = s.start - last_end
            if lo <= last_end < hi and gap >= 0:
                queued += s.enqueued <= last_end
                if s.kind == "candidate":  # its proposal was made in the gap: real latency
                    gap += latency * (1 - scale)
                gaps.append(gap)
            last_end = max(last_end, s.end)
    in_job = [s.end - s.start - s.held for s in spans if s.held]
    return {
        "loop": loop,
        "workers": workers,
        "latency": latency,
        "exp_per_worker_h": count / (workers * window / scale / 3600),
        "busy": busy / (workers * window),
        "p50_ms": 1000 * percentile(gaps, 0.5),
        "p99_ms": 1000 * percentile(gaps, 0.99),
        "queued": queued / len(gaps) if gaps else math.nan,
        "experiments": len(spans),
        "window_s": window,
        "in_job_ms": 1000 * sum(in_job) / len(in_job) if in_job else math.nan,
        "llm_concurrency": policy.llm_concurrency,
    }


def _list(text: str, cast) -> list:
    return [cast(x) for x in text.split(",") if x.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,4,16,64", help="worker counts (default 1,4,16,64)")
    parser.add_argument("--latency", default="0,30", help="LLM latencies, real seconds")
    parser.add_argument("--loops", default="parallel,sequential")
    parser.add_argument("--scale", type=float, default=0.02, help="simulated s per real s")
    parser.add_argument("--rounds", type=int, default=3, help="budgets after the baseline's")
    parser.add_argument(
        "--llm-concurrency", type=int, default=None, help="default: max(8, ceil(2WL/B) + W)"
    )
    parser.add_argument(
        "--lookahead", type=parse_lookahead, default="auto", help="N, or auto (the default)"
    )
    parser.add_argument("--data-dir", type=Path, default=default_data_root() / "cpu")
    parser.add_argument(
        "--merge", choices=("finer", "line"), default="finer", help="line: git merge-file alone"
    )
    parser.add_argument("--score", choices=("constant", "hash"), default="constant")
    return parser.parse_args()


def run_all(args: argparse.Namespace, fingerprint: str) -> list[dict]:
    """Every configuration (workers x latency x loop), each reported to stderr as it ends."""
    results = []
    with tempfile.TemporaryDirectory(prefix="autoresearch-bench-") as tmp:
        for workers in _list(args.workers, int):
            for latency in _list(args.latency, float):
                for loop in _list(args.loops, str):
                    t0 = time.monotonic()
                    r = run_config(loop, workers, latency, args, fingerprint, Path(tmp))
                    results.append(r)
                    print(
                        f"{loop} W={workers} llm={latency:g}s: busy {r['busy']:.3f}, "
                        f"{r['experiments']} runs {r['kinds']}, workers up in "
                        f"{r['start_s']:.1f} s, {time.monotonic() - t0:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    return results


def print_table(results: list[dict]) -> None:
    cols = (
        "loop",
        "W",
        "llm_s",
        "exp/worker-h",
        "limit",
        "busy",
        "dispatch p50 ms",
        "p99 ms",
        "queued",
        "experiments",
        "llm conc.",
        "stale",
    )
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in results:
        cells = (
            r["loop"],
            str(r["workers"]),
            f"{r['latency']:g}",
            f"{r['exp_per_worker_h']:.2f}",
            f"{LIMIT:g}",
            f"{r['busy']:.3f}",
            f"{r['p50_ms']:.0f}",
            f"{r['p99_ms']:.0f}",
            f"{r['queued']:.0%}",
            str(r["experiments"]),
            str(r["llm_concurrency"]) if r["loop"] == "parallel" else "-",
            _stale(r["late"]),
        )
        print("| " + " | ".join(cells) + " |")


def _stale(late: Counter) -> str:
    """Stale winners over all winners on an older frontier (stale + re-applied)."""
    total = late["stale"] + late["reapplied"]
    return f"{late['stale']}/{total}" if total else "-"


def print_summary(results: list[dict]) -> None:
    """The mean in-job overhead and, where it was run, whether the target is met."""
    in_job = [r["in_job_ms"] for r in results if not math.isnan(r["in_job_ms"])]
    if in_job:
        print(
            f"\nin-job overhead (RQ's job interval minus the held time), mean over "
            f"configurations: {sum(in_job) / len(in_job):.0f} ms"
        )
    target = [
        r for r in results if r["loop"] == "parallel" and (r["workers"], r["latency"]) == TARGET_AT
    ]
    for r in target:
        met = "met" if r["busy"] >= TARGET_BUSY else "NOT met"
        print(
            f"target: busy >= {TARGET_BUSY} at W = {TARGET_AT[0]}, {TARGET_AT[1]:g} s LLM "
            f"latency: {r['busy']:.3f}, {met}"
        )


def main() -> int:
    args = parse_args()
    if args.merge == "line":
        gitstore.finer_merge = lambda base, ours, theirs: None
    try:
        fingerprint = load_manifest(args.data_dir)["fingerprint"]
    except FileNotFoundError:
        print(
            f"no prepared data in {args.data_dir}: run `make demo` or "
            "`autoresearch prepare --profile cpu` first (or pass --data-dir)",
            file=sys.stderr,
        )
        return 2
    validate_candidate(SIM_TRAIN_PY)
    logs.configure(stream=open("/dev/null", "w"), json_console=True)  # noqa: SIM115
    began = time.monotonic()
    results = run_all(args, fingerprint)
    wall = time.monotonic() - began
    print(
        f"simulated budget {REAL_BUDGET_S * args.scale:g} s (scale {args.scale:g} of "
        f"{REAL_BUDGET_S:g} s), {args.rounds} budgets of steady window after the baseline; "
        f"look-ahead {args.lookahead}"
    )
    print_table(results)
    print_summary(results)
    print(f"wall time: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
