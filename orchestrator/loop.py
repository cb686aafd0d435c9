"""The research loop: baseline, then propose, validate, record, enqueue, await, decide.

Every attempt ends as exactly one results.tsv row. The keep (branch move) and its row are
written with SIGINT deferred, so Ctrl-C never leaves a half row or a keep without its row.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from harness.profiles import Profile
from orchestrator import defaults, logs
from orchestrator.gitstore import GitStore
from orchestrator.proposers.base import Proposal, ProposalRequest, Proposer
from orchestrator.results import ResultsFile, best_kept, counts
from orchestrator.validate import CandidateRejected, normalized_hash, validate_candidate
from worker import contract


class BaselineFailed(RuntimeError):
    """The unmodified train.py did not score: nothing can be compared against it."""


def budget_for(profile: Profile, train_wall_s: float | None, eval_wall_s: float | None) -> dict:
    """The profile's time limits, with the walls optionally overridden (margins scale down)."""
    wall = train_wall_s or profile.train_wall_s
    margin = min(profile.save_margin_s, 0.2 * wall)
    return {
        "train_wall_s": wall,
        "save_margin_s": margin,
        "return_grace_s": min(profile.return_grace_s, margin / 2),
        "eval_wall_s": eval_wall_s or profile.eval_wall_s,
    }


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then deliver it."""
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@dataclass
class Limits:
    max_experiments: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None  # LLM spend of the whole run, resumed sessions included


@dataclass
class Research:
    tag: str
    git: GitStore
    redis: redis.Redis
    proposer: Proposer
    profile: Profile
    fingerprint: str
    budget: dict
    runs_dir: Path
    seed: int = 0
    min_delta: float = defaults.MIN_DELTA
    limits: Limits = field(default_factory=Limits)
    log: Any = field(default_factory=logs.get)

    def __post_init__(self) -> None:
        self.folder = Path(self.runs_dir) / self.tag
        self.results = ResultsFile(self.folder / defaults.RESULTS_FILE)
        self.queue = Queue(contract.QUEUE_NAME, connection=self.redis, serializer=JSONSerializer)
        self.failure_tail = ""
        self.best: float | None = None  # val_bpb of the frontier, once scored
        self.started = time.monotonic()
        self.session_rows: list[dict[str, Any]] = []
        self.stop_reason = ""
        self._warned_no_worker = False

    # ----- ids and state -----
    def next_id(self) -> str:
        used = [int(r["id"]) for r in self.results.rows() if r.get("id", "").isdigit()]
        used += [int(i) for i in self.git.candidate_ids(self.tag) if i.isdigit()]
        return f"{max(used, default=-1) + 1:04d}"

    def job_id(self, exp_id: str) -> str:
        return f"{self.tag}-{exp_id}"

    # ----- the loop -----
    def run(self) -> dict[str, Any]:
        self.frontier, created = self.git.start_branch(self.tag)
        rows = self.results.rows()
        self.log.info(
            "run.start",
            tag=self.tag,
            branch=self.git.branch(self.tag),
            resumed=not created,
            frontier=self.frontier[:12],
            rows=len(rows),
            fingerprint=self.fingerprint,
            budget=self.budget,
            results=str(self.results.path),
        )
        try:
            self.reconcile()
            best = best_kept(self.results.rows())
            if best is None:
                self.best = self.run_baseline()
            else:
                self.best = float(best["val_bpb"])
            done = 0
            while not self._should_stop(done):
                self.step()
                done += 1
        except KeyboardInterrupt:
            self.stop_reason = "interrupted (Ctrl-C)"
            self.log.warning("run.interrupted")
        return self.summary()

    def _should_stop(self, done: int) -> bool:
        lim = self.limits
        if lim.max_experiments is not None and done >= lim.max_experiments:
            self.stop_reason = f"max experiments ({lim.max_experiments}) reached"
        elif lim.max_hours is not None and time.monotonic() - self.started >= lim.max_hours * 3600:
            self.stop_reason = f"max hours ({lim.max_hours}) reached"
        elif lim.max_cost_usd is not None and self.spent_usd() >= lim.max_cost_usd:
            self.stop_reason = f"max LLM spend (${lim.max_cost_usd:.2f}) reached"
        return bool(self.stop_reason)

    def spent_usd(self) -> float:
        return sum(float(r.get("cost_usd") or 0) for r in self.results.rows())

    def duplicate_of(self, parent: str, source_hash: str) -> str | None:
        """The id of an experiment that already ran the same normalised source on parent."""
        for row in self.results.rows():
            if row.get("source_hash") == source_hash and row["parent"] == parent[:7]:
                if row["status"] != "rejected":
                    return row["id"]
        return None

    def run_baseline(self) -> float:
        """Score the unmodified train.py; a second try absorbs a one-off hiccup of the host."""
        source = self.git.read(self.frontier)
        for _ in range(defaults.BASELINE_ATTEMPTS):
            exp_id = self.next_id()
            self.log.info("baseline.start", id=exp_id, commit=self.frontier[:12])
            self.git.pin(self.tag, exp_id, self.frontier)
            proposal = Proposal(source, "baseline", "baseline")
            result = self.execute(exp_id, self.frontier, self.frontier, proposal)
            decision = self.decide(result, self.frontier, self.frontier)
            self.record(
                exp_id, self.frontier, self.frontier, "baseline", result, decision, proposal
            )
            if decision == "keep":
                return float(result["val_bpb"])
        raise BaselineFailed(f"baseline {result['status']}: {result['error']}")

    def step(self) -> None:
        exp_id = self.next_id()
        source = self.git.read(self.frontier)
        request = ProposalRequest(
            source=source,
            results_tail=self.results.tail_text(defaults.RESULTS_TAIL_ROWS),
            failure_tail=self.failure_tail,
            seed=self.seed * 1_000_003 + int(exp_id),
        )
        proposal = self.proposer.propose(request)
        self.log.info(
            "proposal",
            id=exp_id,
            proposer=proposal.proposer,
            description=proposal.description,
            rejected=proposal.rejected,
            usage=proposal.usage,
        )
        source_hash = ""
        if proposal.rejected is None:
            try:
                validate_candidate(proposal.source)
                source_hash = normalized_hash(proposal.source)
            except CandidateRejected as exc:
                proposal.rejected = str(exc)
        if proposal.rejected is None and (twin := self.duplicate_of(self.frontier, source_hash)):
            proposal.rejected = (
                f"duplicate of {twin}: the same normalised source on the same parent"
            )
        if proposal.rejected is not None:
            result = contract.make_result({"id": exp_id}, "crash", error=proposal.rejected)
            self.record(
                exp_id, "", self.frontier, proposal.description, result, "rejected", proposal
            )
            return
        commit = self.git.commit_candidate(
            self.tag, exp_id, self.frontier, proposal.source, f"{exp_id}: {proposal.description}"
        )
        result = self.execute(exp_id, commit, self.frontier, proposal)
        decision = self.decide(result, commit, self.frontier)
        self.record(exp_id, commit, self.frontier, proposal.description, result, decision, proposal)

    def decide(self, result: dict, commit: str, parent: str) -> str:
        """A baseline (commit == parent) is kept when it scores; a candidate when it was built
        on the frontier and beats the best by more than the margin."""
        if commit == parent:
            return "keep" if result["status"] == "ok" else result["status"]
        if result["status"] != "ok":
            self.failure_tail = result["log_tail"][-4000:]
            return result["status"]
        if self.best is None:
            return "discard"
        improved = result["val_bpb"] < self.best - self.min_delta
        return "keep" if improved and parent == self.frontier else "discard"

    def reconcile(self) -> None:
        """Record what a killed orchestrator left in flight: every pinned candidate without a
        row whose job RQ still knows is awaited and recorded once. One whose job is gone
        (a private Redis died with the run) never finished: it is logged, not recorded."""
        rows = self.results.rows()
        kept = best_kept(rows)
        self.best = float(kept["val_bpb"]) if kept else None
        recorded = {r["id"] for r in rows}
        for exp_id in sorted(set(self.git.candidate_ids(self.tag)) - recorded):
            try:
                job = Job.fetch(
                    self.job_id(exp_id), connection=self.redis, serializer=JSONSerializer
                )
            except NoSuchJobError:
                self.log.warning("reconcile.lost", id=exp_id, why="its job is not in Redis")
                continue
            spec = job.args[0]
            meta = job.meta or {}
            self.log.info("reconcile.await", id=exp_id, status=job.get_status(refresh=True).value)
            result = self.await_job(job, spec)
            proposal = Proposal(
                spec["source"],
                spec["description"],
                meta.get("proposer", "?"),
                meta.get("usage") or {},
            )
            decision = self.decide(result, spec["commit"], spec["parent"])
            self.record(
                exp_id,
                spec["commit"],
                spec["parent"],
                spec["description"],
                result,
                decision,
                proposal,
            )

    # ----- one experiment on a worker -----
    def execute(self, exp_id: str, commit: str, parent: str, proposal: Proposal) -> dict:
        source, description = proposal.source, proposal.description
        spec = contract.make_spec(
            id=exp_id,
            tag=self.tag,
            parent=parent,
            commit=commit,
            source=source,
            profile=self.profile.name,
            fingerprint=self.fingerprint,
            budget=self.budget,
            seed=self.seed,
            description=description,
        )
        timeout = (
            int(self.budget["train_wall_s"] + self.budget["eval_wall_s"])
            + defaults.JOB_TIMEOUT_MARGIN_S
        )
        job = self.queue.enqueue_call(
            contract.JOB_FUNC,
            args=(spec,),
            job_id=self.job_id(exp_id),
            timeout=timeout,
            result_ttl=defaults.RESULT_TTL_S,
            failure_ttl=defaults.RESULT_TTL_S,
            retry=Retry(max=defaults.INFRA_RETRIES),
            description=f"{self.tag}/{exp_id} {description}",
            # What a restarted orchestrator needs to record the result without us.
            meta={"proposer": proposal.proposer, "usage": proposal.usage},
        )
        self.log.info("enqueued", id=exp_id, commit=commit[:12], description=description)
        try:
            return self.await_job(job, spec)
        except KeyboardInterrupt:
            self.cancel(job)
            raise

    def await_job(self, job: Job, spec: dict) -> dict:
        started = time.monotonic()
        swept = started
        while True:
            if time.monotonic() - swept > defaults.ABANDONED_SWEEP_S:
                # A worker that died mid-job stops heartbeating; RQ's registry cleanup then
                # fails the job as abandoned and, with a retry left, requeues it for another.
                StartedJobRegistry(queue=self.queue).cleanup()
                swept = time.monotonic()
            status = job.get_status(refresh=True)
            if status == JobStatus.FINISHED:
                return job.return_value(refresh=True)
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                job.refresh()
                error = (job.exc_info or f"job {status.value}").strip().splitlines()[-1]
                return contract.make_result(spec, "infra_error", error=error[:500])
            waited = time.monotonic() - started
            if status == JobStatus.QUEUED and not self._warned_no_worker and waited > 10:
                if not Worker.all(connection=self.redis):
                    self._warned_no_worker = True
                    self.log.warning(
                        "no_worker", hint="start one: autoresearch worker --redis-url ..."
                    )
            time.sleep(defaults.POLL_INTERVAL_S)

    def cancel(self, job: Job) -> None:
        try:
            if job.get_status(refresh=True) == JobStatus.STARTED:
                send_stop_job_command(self.redis, job.id, serializer=JSONSerializer)
            else:
                job.cancel()
        except (InvalidJobOperation, NoSuchJobError, redis.RedisError) as exc:
            self.log.warning("cancel_failed", id=job.id, error=str(exc))

    # ----- decide and record -----
    def record(
        self,
        exp_id: str,
        commit: str,
        parent: str,
        description: str,
        result: dict,
        decision: str,
        proposal: Proposal,
    ) -> None:
        usage = proposal.usage or {}
        mem = result.get("peak_memory_mb")
        row = {
            "commit": commit[:7] if commit else "-",
            "val_bpb": result.get("val_bpb") or 0.0,
            "memory_gb": round(mem / 1024, 1) if mem else 0.0,
            "status": decision,
            "description": description,
            "id": exp_id,
            "parent": parent[:7],
            "proposer": proposal.proposer,
            "worker": result.get("worker"),
            "training_s": result.get("training_s"),
            "total_s": result.get("total_s"),
            "tokens": result.get("tokens"),
            "params": result.get("params"),
            "mfu": result.get("mfu"),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cost_usd": usage.get("cost_usd"),
            "error": result.get("error"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # What ran, for near-duplicate checks (a rejected candidate did not run).
            "source_hash": normalized_hash(proposal.source) if decision != "rejected" else "",
        }
        folder = self.folder / exp_id
        folder.mkdir(parents=True, exist_ok=True)
        if commit and commit != parent:
            (folder / "candidate.diff").write_text(self.git.diff(parent, commit))
        elif proposal.source:
            (folder / "train.py").write_text(proposal.source)
        with deferred_sigint():
            if decision == "keep" and commit != parent:
                self.git.advance(self.tag, commit, self.frontier)
                self.frontier = commit
            if decision == "keep":
                self.best = result["val_bpb"]
            (folder / "decision.json").write_text(
                json.dumps(
                    {"decision": decision, "result": result, "usage": usage}, indent=2, default=str
                )
            )
            self.results.append(row)
        self.session_rows.append({**row, "total_s": result.get("total_s")})
        self.log.info(
            "decided",
            id=exp_id,
            status=decision,
            val_bpb=result.get("val_bpb"),
            best=self.best,
            error=result.get("error"),
            description=description,
        )

    def summary(self) -> dict[str, Any]:
        rows = self.results.rows()
        kept = [r for r in rows if r["status"] == "keep"]
        baseline = float(kept[0]["val_bpb"]) if kept else None
        best = float(kept[-1]["val_bpb"]) if kept else None
        spent = sum(float(r["total_s"] or 0) for r in self.session_rows)
        out = {
            "tag": self.tag,
            "branch": self.git.branch(self.tag).removeprefix("refs/heads/"),
            "best_val_bpb": best,
            "baseline_val_bpb": baseline,
            "gain": None if best is None or baseline is None else baseline - best,
            "counts": counts(rows),
            "experiments_this_session": len(self.session_rows),
            "compute_seconds": round(spent, 1),
            "compute_kind": "GPU" if self.profile.name == "gpu" else "CPU",
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "stop_reason": self.stop_reason,
            "results": str(self.results.path),
        }
        self.log.info("run.end", **out)
        return out
