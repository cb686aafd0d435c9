"""The research loop: many experiments in flight, each ending as exactly one results row.

One thread pumps, every POLL_INTERVAL_S: it collects proposals (made on threads, LLM
calls in flight while the workers train), polls the jobs in flight, decides the finished
ones, dispatches ready candidates while the live workers have room (one job per worker
plus a look-ahead), and starts proposals ahead of demand.

Decisions are noise-aware: the frontier is run several times to estimate the noise floor,
a gain counts above max(min_delta, z x sigma), and a would-be keep is confirmed by a
re-run on another worker before the branch moves. A candidate that won against an older
frontier is re-applied on the new one (three-way merge), or combined by the LLM.

Every keep (branch move) and its row are written with SIGINT deferred, so Ctrl-C never
leaves a half row or a keep without its row.
"""

from __future__ import annotations

import json
import math
import queue as queuelib
import random
import signal
import socket
import threading
import time
from collections import Counter, deque
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
from rq.worker_registration import clean_worker_registry, get_keys

from harness import bars
from harness.manifest import harness_digest
from harness.profiles import Profile
from orchestrator import defaults, logs, noise, view
from orchestrator.gitstore import GitStore
from orchestrator.proposers.base import Proposal, ProposalRequest, Proposer
from orchestrator.results import ResultsFile, best_kept
from orchestrator.validate import CandidateRejected, normalized_hash, validate_candidate
from worker import contract
from worker.settings import STREAM_TTL_S, add_log_entry, log_stream_key


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


def lookahead_for(workers: int, lookahead: int | None) -> int:
    """The look-ahead to use: as set, or one job per LOOKAHEAD_WORKERS live workers."""
    if lookahead is not None:
        return lookahead
    return max(defaults.LOOKAHEAD_MIN, math.ceil(workers / defaults.LOOKAHEAD_WORKERS))


@dataclass
class Limits:
    max_experiments: int | None = None  # candidates proposed this session
    max_hours: float | None = None
    max_cost_usd: float | None = None  # LLM spend of the whole run, resumed sessions included


@dataclass
class Policy:
    """How candidates are scheduled and judged; the README explains each trade-off."""

    lookahead: int | None = None  # jobs queued beyond one per live worker (None: auto)
    max_in_flight: int | None = None  # cap on jobs queued or running (None: no cap)
    llm_concurrency: int = defaults.LLM_CONCURRENCY  # proposals being made at once
    llm_rate_per_min: float | None = None  # proposals started per minute (None: no cap)
    sequential: bool = False  # propose, run, decide, one at a time (the old loop)
    noise_runs: int = defaults.NOISE_RUNS  # runs of the frontier for the noise floor
    noise_every: int = defaults.NOISE_EVERY_KEEPS  # re-measure after this many keeps
    z: float = defaults.NOISE_Z
    min_delta: float = defaults.MIN_DELTA
    confirm: bool = defaults.CONFIRM


@dataclass
class Flight:
    """A job queued or running, and what to do with its result."""

    id: str
    kind: str  # baseline | noise | candidate | confirm
    job: Job
    spec: dict[str, Any]
    proposal: Proposal
    queue: str
    of: str = ""  # a confirmation: the candidate's id
    source_hash: str = ""  # normalised, for the near-duplicate check
    started: float | None = None  # when the loop first saw it running (monotonic)
    flag: str = ""  # why its gain looks suspicious, if it does

    def __post_init__(self) -> None:
        self.source_hash = self.source_hash or normalized_hash(self.spec["source"])


@dataclass
class Ready:
    """A validated proposal waiting for a free worker."""

    proposal: Proposal
    parent: str  # the frontier it was written against
    exp_id: str = ""  # set once committed (ahead of dispatch, off its critical path)
    commit: str = ""
    source_hash: str = ""  # normalised, set once committed


DONE = {
    s.value for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
}


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
    policy: Policy = field(default_factory=Policy)
    limits: Limits = field(default_factory=Limits)
    log: Any = field(default_factory=logs.get)

    def __post_init__(self) -> None:
        self.folder = Path(self.runs_dir) / self.tag
        self.results = ResultsFile(self.folder / defaults.RESULTS_FILE)
        self.queue = Queue(contract.QUEUE_NAME, connection=self.redis, serializer=JSONSerializer)
        self.failure_tail = ""
        self.best: float | None = None  # mean val_bpb of the frontier, once scored
        self.frontier = ""
        self.started = time.monotonic()
        self.session_rows: list[dict[str, Any]] = []
        self.stop_reason = ""
        self.flights: dict[str, Flight] = {}
        self.ready: deque[Ready] = deque()
        self.made: queuelib.SimpleQueue = queuelib.SimpleQueue()  # (Proposal, parent, s)
        self.proposing = 0  # proposal threads running
        self.proposed = 0  # proposals started this session (max_experiments counts these)
        self.parked: list[tuple[Flight, dict]] = []  # candidates waiting for the noise floor
        self.confirming: dict[str, tuple[Flight, dict]] = {}  # candidate id -> it, result
        self.workers: list[str] = []
        self.keeps_since_noise = 0
        self.baseline_failures = 0
        self._next_id: int | None = None
        self._first_id: int | None = None
        self._workers_at = 0.0
        self._workers_cleaned = 0.0
        self._swept_at = time.monotonic()
        self._next_proposal_at = 0.0
        self._llm_latency: float | None = None  # moving average, seconds
        self._job_seconds = float(self.budget["train_wall_s"] + self.budget["eval_wall_s"])
        self._warned_no_worker = False
        self._no_worker_since: float | None = None
        self._redis_down_since: float | None = None
        self.harness_sha256 = harness_digest()
        self._published_at = 0.0
        self._resync = False  # Redis missed a row: copy them all again at the next publish
        self.bar: bars.Bar = bars.silent()  # run() makes the real one

    # ----- ids and state -----
    def new_id(self) -> str:
        if self._next_id is None:
            used = [int(r["id"]) for r in self.results.rows() if r.get("id", "").isdigit()]
            used += [int(i) for i in self.git.candidate_ids(self.tag) if i.isdigit()]
            self._next_id = max(used, default=-1) + 1
        self._next_id += 1
        return f"{self._next_id - 1:04d}"

    def _seed_base(self) -> int:
        """Proposal seeds continue across resumed sessions: each session starts at its first
        free id, which is past every proposal an earlier session made."""
        if self._first_id is None:
            self._first_id = int(self.new_id())
            self._next_id = self._first_id  # peeked, not used
        return self._first_id

    def job_id(self, exp_id: str) -> str:
        return f"{self.tag}-{exp_id}"

    @property
    def established(self) -> bool:
        """The baseline scored: candidates can be judged."""
        return self.best is not None

    def sigma(self) -> float:
        return noise.pooled_sigma(self.results.rows())[0]

    def margin(self) -> float:
        return noise.margin(self.sigma(), self.policy.z, self.policy.min_delta)

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
            policy=self.policy.__dict__,
            results=str(self.results.path),
        )
        if created:
            self._forget_published()  # a new run under an old tag: not the old one's trail
        self._sync_published(rows)
        self.publish_state(status="running", stop_reason="", started=f"{time.time():.3f}")
        self.bar = bars.bar(f"run {self.tag}", "exp", total=self.limits.max_experiments)
        try:
            self.reconcile()
            if not self.established and not any(
                f.kind == "baseline" for f in self.flights.values()
            ):
                self.launch_frontier_runs(baseline=True)
            while not self.done():
                self.pump()
                time.sleep(defaults.POLL_INTERVAL_S)
        except KeyboardInterrupt:
            self.stop_reason = "interrupted (Ctrl-C)"
            self.log.warning("run.interrupted", cancelled=sorted(self.flights))
            self.cancel_all()
        finally:
            self.bar.close()
        return self.summary()

    def idle(self) -> bool:
        """Nothing in flight, being made, waiting to run or waiting for a decision."""
        return not (self.flights or self.proposing or self.ready or self.parked or self.confirming)

    def step(self) -> None:
        """One proposal through the whole machinery to its row (the sequential path)."""
        self.propose()
        while not self.idle():
            self.pump(auto=False)
            time.sleep(defaults.POLL_INTERVAL_S)

    def pump(self, auto: bool = True) -> None:
        """One turn of the loop; a Redis outage is waited out (the client retries too)."""
        try:
            self._pump(auto)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                self.log.warning("redis.unreachable", error=str(exc), waiting=True)
            down = time.monotonic() - self._redis_down_since
            time.sleep(min(defaults.REDIS_BACKOFF_MAX_S, 0.5 + down / 4))
            return
        if self._redis_down_since is not None:
            down = time.monotonic() - self._redis_down_since
            self.log.info("redis.back", down_s=round(down, 1))
            self._redis_down_since = None

    def _pump(self, auto: bool) -> None:
        now = time.monotonic()
        if now - self._workers_at > defaults.WORKER_REFRESH_S:
            self._refresh_workers()
            self._workers_at = now
        if now - self._published_at > defaults.STATE_EVERY_S:
            self.publish_state()
        if now - self._swept_at > defaults.ABANDONED_SWEEP_S:
            # A worker that died mid-job stops heartbeating; RQ's registry cleanup then
            # fails the job as abandoned and, with a retry left, requeues it for another.
            StartedJobRegistry(queue=self.queue).cleanup()
            self._swept_at = now
        self._collect_proposals()
        finished = self._poll()
        if finished and not self._stopping():
            self._dispatch()  # the freed workers first, then the bookkeeping
        for flight, result in finished:
            self._handle(flight, result)
        if self.established and not self._noise_pending():
            parked, self.parked = self.parked, []
            for flight, result in parked:
                self._decide_candidate(flight, result)
        if self._stopping():
            while self.ready:
                self._record_not_run(self.ready.popleft())
            return
        self._dispatch()
        if auto:
            self._propose_ahead()

    def _stopping(self) -> bool:
        """A limit that ends the run early: no new work starts, what is in flight finishes."""
        if self.stop_reason:
            return True
        lim = self.limits
        if lim.max_hours is not None and time.monotonic() - self.started >= lim.max_hours * 3600:
            self.stop_reason = f"max hours ({lim.max_hours}) reached"
        elif lim.max_cost_usd is not None and self.spent_usd() >= lim.max_cost_usd:
            self.stop_reason = f"max LLM spend (${lim.max_cost_usd:.2f}) reached"
        if self.stop_reason:
            self.log.info("run.stopping", reason=self.stop_reason, in_flight=sorted(self.flights))
        return bool(self.stop_reason)

    def done(self) -> bool:
        """Stopping and idle, or every allowed proposal made and all it led to (confirmation
        runs, re-applied changes) decided."""
        if self._stopping():
            return self.idle()
        limit = self.limits.max_experiments
        if limit is not None and self.proposed >= limit and self.idle():
            self.stop_reason = f"max experiments ({limit}) reached"
            return True
        return False

    def spent_usd(self) -> float:
        """LLM spend: recorded rows plus proposals made but not recorded yet."""
        recorded = sum(float(r.get("cost_usd") or 0) for r in self.results.rows())
        pending = [f.proposal for f in self.flights.values()] + [r.proposal for r in self.ready]
        pending += [f.proposal for f, _ in self.parked + list(self.confirming.values())]
        return recorded + sum(float(p.usage.get("cost_usd") or 0) for p in pending)

    # ----- workers and capacity -----
    def _refresh_workers(self) -> None:
        # One SMEMBERS a second; a dead worker's stale key is swept every ten.
        if time.monotonic() - self._workers_cleaned > 10 * defaults.WORKER_REFRESH_S:
            clean_worker_registry(self.queue)
            self._workers_cleaned = time.monotonic()
        prefix = Worker.redis_worker_namespace_prefix
        names = sorted(k.removeprefix(prefix) for k in get_keys(self.queue))
        if names != self.workers:
            self.log.info(
                "workers",
                count=len(names),
                joined=sorted(set(names) - set(self.workers)),
                left=sorted(set(self.workers) - set(names)),
            )
        self.workers = names
        if names or not self.flights:
            self._no_worker_since = None
        elif self._no_worker_since is None:
            self._no_worker_since = time.monotonic()
        elif time.monotonic() - self._no_worker_since > 10 and not self._warned_no_worker:
            self._warned_no_worker = True
            self.log.warning("no_worker", hint="start one: autoresearch worker --redis-url ...")
        # A confirmation waiting in the queue of a worker that left goes to the shared queue.
        for flight in list(self.flights.values()):
            if (
                flight.queue != contract.QUEUE_NAME
                and flight.queue.split(".worker.", 1)[-1] not in names
                and flight.job.get_status(refresh=True) == JobStatus.QUEUED
            ):
                self.log.warning("requeue", id=flight.id, why=f"{flight.queue} has no worker")
                flight.job.cancel()
                flight.job.delete()
                self.flights[flight.id] = self._enqueue(
                    flight.id,
                    flight.kind,
                    flight.spec,
                    flight.proposal,
                    of=flight.of,
                    at_front=True,
                )

    def capacity(self) -> int:
        """Jobs to keep queued or running: one per live worker plus the look-ahead."""
        if self.policy.sequential:
            return 1
        workers = max(1, len(self.workers))
        cap = workers + lookahead_for(workers, self.policy.lookahead)
        return min(cap, self.policy.max_in_flight or cap)

    # ----- proposals -----
    def _request(self, combine: str = "") -> ProposalRequest:
        return ProposalRequest(
            source=self.git.read(self.frontier),
            results_tail=self.results.tail_text(defaults.RESULTS_TAIL_ROWS),
            failure_tail=self.failure_tail,
            seed=self.seed * 1_000_003 + self._seed_base() + self.proposed,
            combine=combine,
        )

    def propose(self, combine: str = "") -> None:
        """Start one proposal on a thread; the loop collects it when it is made."""
        request, parent = self._request(combine), self.frontier
        self.proposed += 1
        self.proposing += 1
        self._next_proposal_at = time.monotonic() + (
            60.0 / self.policy.llm_rate_per_min if self.policy.llm_rate_per_min else 0.0
        )

        def make() -> None:
            started = time.monotonic()
            try:
                proposal = self.proposer.propose(request)
            except Exception as exc:  # noqa: BLE001 - a proposer bug is a rejected row
                proposal = Proposal(
                    "",
                    "proposer failed",
                    self.proposer.name,
                    rejected=f"proposer raised {type(exc).__name__}: {exc}",
                )
            self.made.put((proposal, parent, time.monotonic() - started))

        threading.Thread(target=make, name="propose", daemon=True).start()

    def _propose_ahead(self) -> None:
        """Keep enough proposals coming that no worker waits for one: fill the free slots,
        plus what the running jobs will free during one proposal's latency."""
        if self.policy.sequential:
            want = 0 if self.flights or self.ready or self.parked or self.confirming else 1
        else:
            free = self.capacity() - len(self.flights) - len(self.ready)
            ahead = 0
            if self._llm_latency is not None:
                # Jobs that will end before a proposal started now is made: they finish
                # together when they started together, so count them, not an average rate.
                lead = self._llm_latency + max(2.0, 0.1 * self._job_seconds)
                now, horizon = time.monotonic(), self._job_seconds - lead
                ahead = sum(
                    1 for f in self.flights.values() if f.started and now - f.started >= horizon
                )
            want = free + ahead
        limit = self.limits.max_experiments
        while (
            self.proposing < min(want, self.policy.llm_concurrency)
            and (limit is None or self.proposed < limit)
            and time.monotonic() >= self._next_proposal_at
        ):
            self.propose()

    def _collect_proposals(self) -> None:
        # Time-boxed: validating and committing a burst of proposals must not hold up
        # polling and dispatching for the workers that are free now.
        until = time.monotonic() + defaults.COLLECT_SLICE_S
        while time.monotonic() < until:
            try:
                proposal, parent, seconds = self.made.get_nowait()
            except queuelib.Empty:
                return
            self.proposing -= 1
            a = 0.3
            self._llm_latency = (
                seconds if self._llm_latency is None else a * seconds + (1 - a) * self._llm_latency
            )
            self.log.info(
                "proposal",
                proposer=proposal.proposer,
                description=proposal.description,
                rejected=proposal.rejected,
                usage=proposal.usage,
                seconds=round(seconds, 3),
            )
            if proposal.rejected is None:
                try:
                    validate_candidate(proposal.source)
                except CandidateRejected as exc:
                    proposal.rejected = str(exc)
            if proposal.rejected is not None:
                self._record_rejected(proposal, parent)
            elif (item := self._commit(Ready(proposal, parent))) is not None:
                self.ready.append(item)

    def _record_rejected(self, proposal: Proposal, parent: str, exp_id: str = "") -> None:
        exp_id = exp_id or self.new_id()
        result = contract.make_result({"id": exp_id}, "crash", error=proposal.rejected)
        self.record(exp_id, "", parent, proposal.description, result, "rejected", proposal)

    def _record_not_run(self, item: Ready) -> None:
        if item.exp_id:
            self.git.unpin(self.tag, item.exp_id)
        item.proposal.rejected = f"not run: {self.stop_reason or 'the run stopped'}"
        self._record_rejected(item.proposal, item.parent, item.exp_id)

    def duplicate_of(self, parent: str, source_hash: str, exp_id: str = "") -> str | None:
        """The id of an experiment that already ran the same normalised source on parent,
        runs it now, or waits to (exp_id: the asking one's own, not a twin)."""
        for row in self.results.rows():
            if row.get("source_hash") == source_hash and row["parent"] == parent[:7]:
                if row["status"] != "rejected":
                    return row["id"]
        for flight in self.flights.values():
            if flight.spec["parent"] == parent and flight.kind == "candidate":
                if flight.source_hash == source_hash:
                    return flight.id
        for item in self.ready:
            if item.exp_id and item.exp_id != exp_id and item.parent == parent:
                if item.source_hash == source_hash:
                    return item.exp_id
        return None

    # ----- dispatch -----
    def _commit(self, item: Ready) -> Ready | None:
        """Commit (and pin) a ready proposal on its parent, unless the same normalised
        source already ran or runs there: then its row says so and None is returned."""
        proposal = item.proposal
        source_hash = normalized_hash(proposal.source)
        twin = self.duplicate_of(item.parent, source_hash, item.exp_id)
        if twin is not None:
            if item.exp_id:
                self.git.unpin(self.tag, item.exp_id)
            proposal.rejected = (
                f"duplicate of {twin}: the same normalised source on the same parent"
            )
            self._record_rejected(proposal, item.parent, item.exp_id)
            return None
        item.exp_id = item.exp_id or self.new_id()
        item.source_hash = source_hash
        item.commit = self.git.commit_candidate(
            self.tag,
            item.exp_id,
            item.parent,
            proposal.source,
            f"{item.exp_id}: {proposal.description}",
        )
        return item

    def _dispatch(self) -> None:
        while self.ready and len(self.flights) < self.capacity():
            item = self.ready.popleft()
            if item.parent != self.frontier:
                # Written against an older frontier: carry its change over if it applies.
                merged = self.git.merge3(
                    self.git.read(item.parent), self.git.read(self.frontier), item.proposal.source
                )
                if merged is not None:
                    item.proposal.source, item.parent = merged, self.frontier
                    if self._commit(item) is None:
                        continue
            if not item.commit and self._commit(item) is None:
                continue
            spec = self._spec(item.exp_id, item.commit, item.parent, item.proposal, self.seed)
            self.flights[item.exp_id] = self._enqueue(item.exp_id, "candidate", spec, item.proposal)

    def _spec(self, exp_id: str, commit: str, parent: str, proposal: Proposal, seed: int) -> dict:
        return contract.make_spec(
            id=exp_id,
            tag=self.tag,
            parent=parent,
            commit=commit,
            source=proposal.source,
            profile=self.profile.name,
            fingerprint=self.fingerprint,
            budget=self.budget,
            seed=seed,
            description=proposal.description,
        )

    def _enqueue(
        self,
        exp_id: str,
        kind: str,
        spec: dict,
        proposal: Proposal,
        *,
        of: str = "",
        queue: str = contract.QUEUE_NAME,
        at_front: bool = False,
    ) -> Flight:
        timeout = (
            int(self.budget["train_wall_s"] + self.budget["eval_wall_s"])
            + defaults.JOB_TIMEOUT_MARGIN_S
        )
        q = (
            self.queue
            if queue == contract.QUEUE_NAME
            else Queue(queue, connection=self.redis, serializer=JSONSerializer)
        )
        job = q.enqueue_call(
            contract.JOB_FUNC,
            args=(spec,),
            job_id=self.job_id(exp_id),
            timeout=timeout,
            result_ttl=defaults.RESULT_TTL_S,
            failure_ttl=defaults.RESULT_TTL_S,
            retry=Retry(max=defaults.INFRA_RETRIES),
            description=f"{self.tag}/{exp_id} {spec['description']}",
            at_front=at_front,
            # What a restarted orchestrator needs to record the result without us.
            meta={"proposer": proposal.proposer, "usage": proposal.usage, "kind": kind, "of": of},
        )
        self.log.info(
            "enqueued",
            id=exp_id,
            kind=kind,
            commit=spec["commit"][:12],
            queue=queue,
            description=spec["description"],
        )
        return Flight(exp_id, kind, job, spec, proposal, queue, of)

    def launch_frontier_runs(self, baseline: bool = False) -> None:
        """Runs of the frontier: the baseline and its noise runs at the start, or more noise
        runs later, up to noise_runs measurements of the frontier in all."""
        source = self.git.read(self.frontier)
        have = 0 if baseline else len(noise.measurements(self.results.rows(), self.frontier))
        runs = max(self.policy.noise_runs, 1) - have
        for k in range(runs):
            kind = "baseline" if baseline and k == 0 else "noise"
            exp_id = self.new_id()
            seed = self.seed + have + k
            desc = (
                "baseline"
                if kind == "baseline"
                else (
                    f"noise {have + k + 1}/{self.policy.noise_runs} of {self.frontier[:7]} (seed {seed})"
                )
            )
            self.git.pin(self.tag, exp_id, self.frontier)
            proposal = Proposal(source, desc, kind)
            spec = self._spec(exp_id, self.frontier, self.frontier, proposal, seed)
            self.flights[exp_id] = self._enqueue(exp_id, kind, spec, proposal)

    # ----- results -----
    def _poll(self) -> list[tuple[Flight, dict]]:
        """Take the finished jobs out of flight (one round trip for every job's status;
        full results only for the finished ones)."""
        flights = list(self.flights.values())
        with self.redis.pipeline(transaction=False) as pipe:
            for flight in flights:
                pipe.hget(flight.job.key, "status")
            statuses = pipe.execute()
        now = time.monotonic()
        done = []
        for flight, raw in zip(flights, statuses, strict=True):
            status = view.as_str(raw)
            if status == JobStatus.STARTED.value and flight.started is None:
                flight.started = now
            if status not in DONE:
                continue
            result = self._finished(flight, JobStatus(status))
            if result is None:
                continue
            del self.flights[flight.id]
            if result.get("total_s"):
                self._job_seconds = 0.7 * self._job_seconds + 0.3 * float(result["total_s"])
            done.append((flight, result))
        return done

    def _finished(self, flight: Flight, status: JobStatus | None = None) -> dict | None:
        """The result of a job that ended (an infra_error result for a failed one), else None.
        status: already read (the batched poll), so not asked again."""
        job = flight.job
        status = status or job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            return job.return_value(refresh=True)
        if status.value in DONE:
            job.refresh()
            error = (job.exc_info or f"job {status.value}").strip().splitlines()[-1]
            return contract.make_result(flight.spec, "infra_error", error=error[:500])
        return None

    def _refused(self, spec: dict, result: dict) -> dict:
        """A scored result is taken only when it was scored by this harness on this data."""
        if result["status"] != "ok":
            return result
        theirs = (result.get("harness_sha256"), result.get("fingerprint"))
        if theirs == (self.harness_sha256, self.fingerprint):
            return result
        why = (
            f"refused: scored by harness {str(theirs[0])[:12]} on data {theirs[1]}, "
            f"expected harness {self.harness_sha256[:12]} on data {self.fingerprint}"
        )
        self.log.warning("result.refused", id=spec["id"], why=why, worker=result.get("worker"))
        return contract.make_result(spec, "infra_error", error=why, worker=result.get("worker"))

    def _handle(self, flight: Flight, result: dict) -> None:
        spec = flight.spec
        result = self._refused(spec, result)
        if flight.kind == "baseline":
            if result["status"] == "ok":
                self._record_flight(flight, result, "keep")
                self.best = noise.commit_value(self.results.rows(), self.frontier)
            else:
                self._record_flight(flight, result, result["status"])
                self.baseline_failures += 1
                if self.baseline_failures >= defaults.BASELINE_ATTEMPTS:
                    self.cancel_all()
                    raise BaselineFailed(f"baseline {result['status']}: {result['error']}")
                # A second try absorbs a one-off hiccup of the host.
                exp_id = self.new_id()
                self.git.pin(self.tag, exp_id, self.frontier)
                retry_spec = {**spec, "id": exp_id}
                self.flights[exp_id] = self._enqueue(
                    exp_id, "baseline", retry_spec, flight.proposal
                )
        elif flight.kind == "noise":
            status = "noise" if result["status"] == "ok" else result["status"]
            self._record_flight(flight, result, status)
            if self.established and spec["commit"] == self.frontier:
                self.best = noise.commit_value(self.results.rows(), self.frontier)
        elif flight.kind == "confirm":
            self._decide_confirmed(flight, result)
        elif not self.established or self._noise_pending():
            self.parked.append((flight, result))  # judged once the noise floor is known
        else:
            self._decide_candidate(flight, result)

    def _noise_pending(self) -> bool:
        return any(f.kind in ("baseline", "noise") for f in self.flights.values())

    def _decide_candidate(self, flight: Flight, result: dict) -> None:
        if result["status"] != "ok":
            self.failure_tail = result["log_tail"][-4000:]
            self._record_flight(flight, result, result["status"])
            return
        parent, value = flight.spec["parent"], float(result["val_bpb"])
        if parent != self.frontier:
            self._stale(flight, result, value)
            return
        assert self.best is not None
        gain, margin = self.best - value, self.margin()
        if gain <= margin:
            note = f"gain {gain:+.6f} not above the margin {margin:.6f}"
            self._record_flight(flight, result, "discard", note)
            return
        flight.flag = self._suspicious(result, gain, margin)
        if flight.flag:
            self.log.warning("suspicious", id=flight.id, why=flight.flag)
        if self.policy.confirm or flight.flag:  # a suspicious jump is re-run in any case
            self._launch_confirm(flight, result)
        else:
            self._keep(flight, result)

    def _suspicious(self, result: dict, gain: float, margin: float) -> str:
        """Why a gain looks too good to be true, or "": far above every earlier keep's
        gain, or made with far fewer training tokens than the frontier."""
        rows = self.results.rows()
        kept = [float(r["val_bpb"]) for r in rows if r["status"] == "keep"]
        biggest = max((a - b for a, b in zip(kept, kept[1:], strict=False)), default=0.0)
        if len(kept) > 1 and gain > defaults.SUSPICIOUS_GAIN_FACTOR * max(biggest, margin):
            return f"suspicious: gain {gain:.4f} is over {defaults.SUSPICIOUS_GAIN_FACTOR}x any before ({biggest:.4f})"
        frontier = [r for r in rows if r["commit"] == self.frontier[:7] and r["status"] == "keep"]
        theirs, ours = result.get("tokens"), frontier[-1].get("tokens") if frontier else None
        if theirs and ours and float(theirs) < defaults.SUSPICIOUS_TOKEN_FRACTION * float(ours):
            return (
                f"suspicious: trained on {int(theirs)} tokens, the frontier on {int(float(ours))}"
            )
        return ""

    def _launch_confirm(self, flight: Flight, result: dict) -> None:
        """Re-run a would-be keep with another seed, on another worker when there is one."""
        self.confirming[flight.id] = (flight, result)
        if any(f.kind == "confirm" and f.of == flight.id for f in self.flights.values()):
            return  # a restarted orchestrator found its confirmation already in flight
        others = [w for w in self.workers if w != result.get("worker")]
        queue, at_front = contract.QUEUE_NAME, True
        if others:
            # The other worker with the fewest confirmations waiting for it (ties: random),
            # served in order from its own queue, ahead of the shared one.
            waiting = Counter(f.queue for f in self.flights.values() if f.kind == "confirm")
            pick = min(others, key=lambda w: (waiting[contract.worker_queue(w)], random.random()))
            queue, at_front = contract.worker_queue(pick), False
        exp_id = self.new_id()
        self.git.pin(self.tag, exp_id, flight.spec["commit"])
        proposal = Proposal(
            flight.spec["source"], f"confirm {flight.id}: {flight.spec['description']}", "confirm"
        )
        spec = self._spec(
            exp_id, flight.spec["commit"], flight.spec["parent"], proposal, self.seed + 1
        )
        self.flights[exp_id] = self._enqueue(
            exp_id, "confirm", spec, proposal, of=flight.id, queue=queue, at_front=at_front
        )

    def _decide_confirmed(self, confirm: Flight, result: dict) -> None:
        held = self.confirming.pop(confirm.of, None)
        if held is None:  # its candidate was recorded already (should not happen): keep the row
            self._record_flight(
                confirm, result, "confirm" if result["status"] == "ok" else result["status"]
            )
            return
        flight, first = held
        if result["status"] != "ok":
            self._record_flight(
                flight, first, "discard", f"confirmation {confirm.id} {result['status']}"
            )
            self._record_flight(confirm, result, result["status"])
            return
        values = [float(first["val_bpb"]), float(result["val_bpb"])]
        mean = sum(values) / 2
        if flight.spec["parent"] != self.frontier:
            # Another candidate was kept while this one was confirmed.
            self._stale(flight, first, mean)
            self._record_flight(confirm, result, "confirm")
            return
        assert self.best is not None
        gain, margin = self.best - mean, self.margin()
        if gain > margin:
            self._keep(flight, first, confirm=(confirm, result), note=flight.flag or None)
        else:
            note = f"not confirmed: re-run {values[1]:.6f}, mean gain {gain:+.6f} <= {margin:.6f}"
            note = f"{flight.flag}; {note}" if flight.flag else note
            self._record_flight(flight, first, "discard", note)
            self._record_flight(confirm, result, "confirm")

    def _keep(
        self,
        flight: Flight,
        result: dict,
        confirm: tuple[Flight, dict] | None = None,
        note: str | None = None,
    ) -> None:
        self._record_flight(flight, result, "keep", note)
        if confirm is not None:
            self._record_flight(*confirm, "confirm")
        self.best = noise.commit_value(self.results.rows(), self.frontier)
        self.keeps_since_noise += 1
        if self.keeps_since_noise >= self.policy.noise_every:
            self.keeps_since_noise = 0
            self.launch_frontier_runs()

    def _stale(self, flight: Flight, result: dict, value: float) -> None:
        """A candidate built on an older frontier: re-applied on the new one when it beat
        its own parent, else discarded."""
        parent = flight.spec["parent"]
        parent_value = noise.commit_value(self.results.rows(), parent)
        margin = self.margin()
        gain = (parent_value - value) if parent_value is not None else 0.0
        if gain <= margin:
            note = f"built on {parent[:7]}, gain {gain:+.6f} over it not above {margin:.6f}"
            self._record_flight(flight, result, "discard", note)
            return
        base, ours = self.git.read(parent), self.git.read(self.frontier)
        merged = self.git.merge3(base, ours, flight.spec["source"])
        won = f"gain {gain:+.6f} over its parent {parent[:7]}"
        if self._stopping():
            self._record_flight(flight, result, "stale", f"{won}; not re-applied: the run stops")
        elif merged is not None:
            desc = f"{flight.spec['description']} (re-applied {flight.id} on {self.frontier[:7]})"
            self.ready.appendleft(Ready(Proposal(merged, desc, "reapply"), self.frontier))
            self._record_flight(
                flight, result, "reapplied", f"{won}; re-applied on {self.frontier[:7]}"
            )
        elif self.proposer.name == "llm":
            diff = self.git.diff(parent, flight.spec["commit"])
            self.propose(combine=f"{flight.spec['description']}\n{diff}")
            self._record_flight(
                flight,
                result,
                "reapplied",
                f"{won}; conflicts with {self.frontier[:7]}: the LLM combines them",
            )
        else:
            self._record_flight(
                flight,
                result,
                "stale",
                f"{won}; conflicts with {self.frontier[:7]} (no LLM to combine)",
            )

    def reconcile(self) -> None:
        """Adopt what a killed orchestrator left in flight: every pinned experiment without a
        row whose job RQ still knows is awaited (or taken as finished) and recorded once.
        One whose job is gone (a private Redis died with the run) is logged, not recorded."""
        rows = self.results.rows()
        kept = best_kept(rows)
        self.best = noise.commit_value(rows, kept["commit"]) if kept else None
        recorded = {r["id"] for r in rows}
        for exp_id in sorted(set(self.git.candidate_ids(self.tag)) - recorded):
            try:
                job = Job.fetch(
                    self.job_id(exp_id), connection=self.redis, serializer=JSONSerializer
                )
            except NoSuchJobError:
                # Never queued (killed in between), or queued in a private Redis that died
                # with the run: it did not run here; its row says so.
                self.log.warning("reconcile.lost", id=exp_id, why="its job is not in Redis")
                commit = self.git.resolve(self.git.candidate_ref(self.tag, exp_id)) or ""
                parent = self.git.resolve(f"{commit}^") if commit else None
                source = self.git.read(commit) if commit else ""
                lost = contract.make_result(
                    {"id": exp_id}, "infra_error", error="lost: its job is not in Redis"
                )
                self.record(
                    exp_id,
                    commit,
                    parent or commit,
                    "lost with the orchestrator",
                    lost,
                    "infra_error",
                    Proposal(source, "lost", "?"),
                )
                continue
            spec, meta = job.args[0], job.meta or {}
            kind = meta.get("kind") or (
                "baseline" if spec["commit"] == spec["parent"] else "candidate"
            )
            proposal = Proposal(
                spec["source"],
                spec["description"],
                meta.get("proposer", "?"),
                meta.get("usage") or {},
            )
            self.flights[exp_id] = Flight(
                exp_id, kind, job, spec, proposal, job.origin, meta.get("of", "")
            )
            self.log.info(
                "reconcile.adopt", id=exp_id, kind=kind, status=job.get_status(refresh=True).value
            )
        # Candidates first, so a confirmation finds the candidate it confirms held.
        order = {"candidate": 0, "baseline": 1, "noise": 1, "confirm": 2}
        for flight in sorted(self.flights.values(), key=lambda f: (order[f.kind], f.id)):
            result = self._finished(flight)
            if result is not None:
                del self.flights[flight.id]
                if flight.kind == "candidate" and any(
                    f.kind == "confirm" and f.of == flight.id for f in self.flights.values()
                ):
                    self.confirming[flight.id] = (flight, result)
                else:
                    self._handle(flight, result)

    def cancel_all(self) -> None:
        for flight in list(self.flights.values()):
            self.cancel(flight.job)
        self.flights.clear()

    def cancel(self, job: Job) -> None:
        try:
            if job.get_status(refresh=True) == JobStatus.STARTED:
                send_stop_job_command(self.redis, job.id, serializer=JSONSerializer)
            else:
                job.cancel()
        except (InvalidJobOperation, NoSuchJobError, redis.RedisError) as exc:
            self.log.warning("cancel_failed", id=job.id, error=str(exc))

    # ----- record -----
    def _record_flight(
        self, flight: Flight, result: dict, decision: str, note: str | None = None
    ) -> None:
        spec = flight.spec
        self.record(
            flight.id,
            spec["commit"],
            spec["parent"],
            spec["description"],
            result,
            decision,
            flight.proposal,
            note,
            run={k: spec[k] for k in ("seed", "budget", "profile", "fingerprint", "commit")},
        )

    def record(
        self,
        exp_id: str,
        commit: str,
        parent: str,
        description: str,
        result: dict,
        decision: str,
        proposal: Proposal,
        note: str | None = None,
        run: dict | None = None,
    ) -> None:
        """run: what re-runs it exactly (seed, budget, profile, fingerprint, commit)."""
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
            "error": result.get("error") or note,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # What ran, for near-duplicate checks (a rejected candidate did not run).
            "source_hash": normalized_hash(proposal.source) if decision != "rejected" else "",
            "seed": run["seed"] if run else None,
            "cage": result.get("cage"),
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
            (folder / "decision.json").write_text(
                json.dumps(
                    {
                        "decision": decision,
                        "note": note,
                        "run": run,
                        "harness_sha256": self.harness_sha256,
                        "result": result,
                        "usage": usage,
                    },
                    indent=2,
                    default=str,
                )
            )
            written = self.results.append(row)
        self.session_rows.append({**row, "total_s": result.get("total_s")})
        self._publish_row(written)
        if decision not in ("noise", "confirm") and proposal.proposer not in (
            "baseline",
            "reapply",
        ):
            self.bar.update(1)  # the bar counts candidates, as --max-experiments does
        self.log.info(
            "decided",
            id=exp_id,
            status=decision,
            val_bpb=result.get("val_bpb"),
            best=self.best,
            error=result.get("error"),
            note=note,
            description=description,
        )

    def summary(self) -> dict[str, Any]:
        # The same figures as `status` and the report (view.summary), plus this session's.
        seen = view.summary(self.results.rows(), {}, time.time())
        spent = sum(float(r["total_s"] or 0) for r in self.session_rows)
        out = {
            "tag": self.tag,
            "branch": self.git.branch(self.tag).removeprefix("refs/heads/"),
            "best_val_bpb": seen["best"]["val_bpb"] if seen["best"] else None,
            "baseline_val_bpb": seen["baseline"]["val_bpb"] if seen["baseline"] else None,
            "gain": seen["gain"],
            "noise_sigma": seen["noise"]["sigma"],
            "margin": self.margin(),
            "counts": seen["counts"],
            "experiments_this_session": len(self.session_rows),
            "compute_seconds": round(spent, 1),
            "compute_kind": "GPU" if self.profile.name == "gpu" else "CPU",
            "wall_seconds": round(time.monotonic() - self.started, 1),
            "stop_reason": self.stop_reason,
            "results": str(self.results.path),
        }
        self.log.info("run.end", **out)
        self.publish_state(status="stopped", stop_reason=self.stop_reason or "done")
        return out

    # ----- what other hosts see: status, logs -f, the dashboard (orchestrator/view.py) -----
    def publish_state(self, **fields: str) -> None:
        """The run's state hash (also written to state.json in the run folder, for when
        Redis is gone) and its place in the index of runs. Best effort: what other hosts
        see must never stop the loop; a failed publish is redone in full next time."""
        try:
            if self._resync:
                self._sync_published(self.results.rows())
                self._resync = False
            self._publish_state(**fields)
        except redis.RedisError as exc:
            self._resync = True
            self.log.warning("state.unpublished", error=str(exc))

    def _publish_state(self, **fields: str) -> None:
        now = time.time()
        sigma, dof = noise.pooled_sigma(self.results.rows())
        state = {
            "updated": f"{now:.3f}",
            "frontier": self.frontier[:7],
            "best": "" if self.best is None else f"{self.best:.6f}",
            "sigma": f"{sigma:.6f}" if dof else "",
            "margin": f"{noise.margin(sigma, self.policy.z, self.policy.min_delta):.6f}",
            "z": str(self.policy.z),
            "min_delta": str(self.policy.min_delta),
            "workers": str(len(self.workers)),
            "in_flight": str(len(self.flights)),
            "proposing": str(self.proposing),
            "ready": str(len(self.ready)),
            "proposer": self.proposer.name,
            "model": str(getattr(self.proposer, "model", "") or ""),
            "host": socket.gethostname(),
            **fields,
        }
        key = contract.run_state_key(self.tag)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(key, "started", f"{now:.3f}")  # run() sets it for each session
        pipe.hset(key, mapping=state)
        pipe.zadd(contract.RUNS_KEY, {self.tag: now})
        pipe.hgetall(key)
        saved = pipe.execute()[-1]
        self._published_at = time.monotonic()
        self._describe_bar()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (defaults.STATE_FILE + ".tmp")
        tmp.write_text(
            json.dumps({view.as_str(k): view.as_str(v) for k, v in saved.items()}, indent=1)
        )
        tmp.replace(self.folder / defaults.STATE_FILE)

    def _describe_bar(self) -> None:
        """The run's bar (a terminal only): best and gain, counts, jobs running and queued."""
        if self.bar.disable:
            return  # no terminal: nothing to draw, nothing to compute
        seen = view.summary(self.results.rows(), {}, time.time())
        best = "" if self.best is None else f"best {self.best:.4f}"
        if best and seen["gain"] is not None:
            best += f" ({seen['gain']:+.4f})"
        tally = seen["counts"]
        shown = " ".join(f"{k} {tally[k]}" for k in ("keep", "discard", "crash") if k in tally)
        self.bar.set_postfix_str(
            " | ".join(p for p in (best, shown, f"{len(self.flights)} in flight") if p)
        )

    def _forget_published(self) -> None:
        """Drop what Redis holds under this tag (state, rows, log streams): left by an
        earlier run whose branch is gone, it would be shown as this run's."""
        keys = [contract.run_state_key(self.tag), contract.results_key(self.tag)]
        keys += [contract.run_log_key(self.tag)]
        keys += list(self.redis.scan_iter(match=log_stream_key(self.tag, "*"), count=1000))
        self.redis.delete(*keys)

    def _sync_published(self, rows: list[dict[str, str]]) -> None:
        """Redis's copy of the rows matches results.tsv (a Redis that lost its data, or a
        run from before the copy existed, gets them again)."""
        key = contract.results_key(self.tag)
        if self.redis.llen(key) == len(rows):
            return
        pipe = self.redis.pipeline()
        pipe.delete(key)
        if rows:
            pipe.rpush(key, *(json.dumps(r) for r in rows))
        pipe.execute()

    def _publish_row(self, row: dict[str, str]) -> None:
        """The row for readers on other hosts, and the decision in the run's log stream and
        the experiment's (where `logs ID -f` ends). Best effort, like publish_state."""
        try:
            self._publish_row_now(row)
        except redis.RedisError as exc:
            self._resync = True
            self.log.warning("row.unpublished", id=row["id"], error=str(exc))
            return
        self.publish_state()

    def _publish_row_now(self, row: dict[str, str]) -> None:
        event = {
            "event": "decided",
            "status": row["status"],
            "val_bpb": row["val_bpb"],
            "description": row["description"],
            "error": row["error"],
        }
        fields = {
            "kind": "event",
            "phase": "decide",
            "text": json.dumps(event),
            "t": f"{time.time():.3f}",
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(contract.results_key(self.tag), json.dumps(row))
        add_log_entry(pipe, self.tag, row["id"], fields)
        pipe.expire(log_stream_key(self.tag, row["id"]), STREAM_TTL_S)
        pipe.execute()
