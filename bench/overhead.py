"""Per-experiment overhead of the loop on the cpu profile (a benchmark, not a test).

Runs the real loop (private Redis, one local worker, the process runner, the mutate
proposer) for N experiments and splits each experiment's wall time, from enqueue to the
decision, into: queue wait, prestart (the train process's start before the candidate is
handed over: interpreter, imports, device; outside its wall), startup (from the handover:
import of train.py, build_model), training, save, train-phase teardown, eval phase, and
record (result back to the orchestrator, decision, row). Overhead = wall - training.
Prints a table and the means.

    python bench/overhead.py [--experiments 10] [--train-wall 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gitrepo import make_repo  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from harness.manifest import load_manifest  # noqa: E402
from harness.profiles import Profile, get_profile  # noqa: E402
from orchestrator import logs  # noqa: E402
from orchestrator.gitstore import GitStore  # noqa: E402
from orchestrator.local_workers import LocalWorkers  # noqa: E402
from orchestrator.proposers.mutate import MutateProposer  # noqa: E402
from orchestrator.redis_server import PrivateRedis, connect  # noqa: E402
from orchestrator.research import Limits, Policy, Research, budget_for  # noqa: E402
from worker.settings import WorkerSettings, default_data_root  # noqa: E402

COLUMNS = (
    "wall",
    "queue",
    "prestart",
    "startup",
    "training",
    "save",
    "train_teardown",
    "eval",
    "record",
    "overhead",
)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", type=int, default=10)
    parser.add_argument("--train-wall", type=float, default=None, help="default: the cpu profile's")
    parser.add_argument("--data-dir", type=Path, default=default_data_root() / "cpu")
    return parser.parse_args()


def make_research(
    args: argparse.Namespace,
    profile: Profile,
    fingerprint: str,
    budget: dict,
    repo: Path,
    runs: Path,
    redis,
) -> Research:
    """The research loop on the mutate proposer, one experiment at a time."""
    return Research(
        tag="bench",
        git=GitStore(repo),
        redis=redis,
        proposer=MutateProposer("cpu"),
        profile=profile,
        fingerprint=fingerprint,
        budget=budget,
        runs_dir=runs,
        limits=Limits(max_experiments=args.experiments - 1),
        # One experiment at a time: the overhead of each, not of the schedule.
        policy=Policy(sequential=True, noise_runs=1, confirm=False),
    )


def run_experiments(
    args: argparse.Namespace, profile: Profile, fingerprint: str, budget: dict, tmp: Path
) -> list[dict]:
    """Run the loop (a private Redis, one local worker) in ``tmp``; its scored experiments."""
    repo = make_repo(tmp / "repo", (ROOT / "workspace" / "train.py").read_text())
    runs = tmp / "runs"
    log_file = runs / "bench" / "orchestrator.jsonl"
    logs.tee.open(log_file)
    with PrivateRedis() as server:
        redis = connect(server.url)
        workers = LocalWorkers(1, server.url, WorkerSettings(args.data_dir, runs), tmp).start()
        try:
            make_research(args, profile, fingerprint, budget, repo, runs, redis).run()
        finally:
            workers.stop()
            logs.tee.close()
        return experiment_rows(log_file, redis)


def split_time(exp_id: str, wall: float, queue: float, r: dict) -> dict:
    """One experiment's wall time, from enqueue to decision, split into its parts."""
    return {
        "id": exp_id,
        "wall": wall,
        "queue": queue,
        "prestart": r.get("prestart_s") or 0.0,
        "startup": r["startup_s"],
        "training": r["training_s"],
        "save": r["save_s"],
        "train_teardown": r["train_phase_s"] - r["startup_s"] - r["training_s"] - r["save_s"],
        "eval": r["eval_phase_s"],
        "record": wall - queue - r["total_s"],
        "overhead": wall - r["training_s"],
    }


def experiment_rows(log_file: Path, redis) -> list[dict]:
    """A row per scored experiment, from the orchestrator's log and the RQ jobs."""
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    enqueued = {e["id"]: _ts(e["timestamp"]) for e in events if e["event"] == "enqueued"}
    decided = {e["id"]: _ts(e["timestamp"]) for e in events if e["event"] == "decided"}
    rows = []
    for exp_id in sorted(enqueued):
        job = Job.fetch(f"bench-{exp_id}", connection=redis, serializer=JSONSerializer)
        r = job.return_value()
        if not r or r["status"] != "ok":
            continue
        wall = decided[exp_id] - enqueued[exp_id]
        queue = job.started_at.timestamp() - job.enqueued_at.timestamp()
        rows.append(split_time(exp_id, wall, queue, r))
    return rows


def report(rows: list[dict], budget: dict) -> None:
    print(f"cpu profile, {len(rows)} scored experiments, budget {budget}")
    print("| id | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for row in rows:
        print(f"| {row['id']} | " + " | ".join(f"{row[c]:.2f}" for c in COLUMNS) + " |")
    if not rows:
        return
    mean = {c: statistics.mean(r[c] for r in rows) for c in COLUMNS}
    print("| mean | " + " | ".join(f"{mean[c]:.2f}" for c in COLUMNS) + " |")
    rest = mean["overhead"] - mean["eval"]
    wall_s = budget["train_wall_s"]
    print(
        f"\noverhead without eval: {rest:.2f} s (target < 3 s); "
        f"eval: {mean['eval']:.2f} s = {100 * mean['eval'] / wall_s:.1f}% of the {wall_s:.0f} s budget (target < 5%)"
    )


def main() -> int:
    args = parse_args()
    profile = get_profile("cpu")
    budget = budget_for(profile, args.train_wall, None)
    fingerprint = load_manifest(args.data_dir)["fingerprint"]
    logs.configure(stream=open("/dev/null", "w"), json_console=True)  # noqa: SIM115

    with tempfile.TemporaryDirectory(prefix="autoresearch-bench-") as tmp:
        rows = run_experiments(args, profile, fingerprint, budget, Path(tmp))
    report(rows, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
