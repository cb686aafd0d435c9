"""The research loop: many experiments in flight, each ending as exactly one results row.

One thread pumps, every POLL_INTERVAL_S, through named steps (Research.turn): refresh the
live workers, publish the state, sweep abandoned jobs, collect the made proposals, poll
the jobs in flight, dispatch to the freed workers, decide the finished ones, decide the
candidates parked until the noise floor was known, dispatch, propose ahead. A Redis
outage is waited out at the loop level (pump).

Decisions are noise-aware (research/decide.py): the frontier is run several times to
estimate the noise floor, a gain counts above max(min_delta, z x sigma), and a would-be
keep is confirmed by a re-run on another worker before the branch moves. A candidate that
won against an older frontier is re-applied on the new one (three-way merge), or combined
by the LLM. Rooms: flights.py talks to RQ, record.py writes rows and moves the branch,
publish.py tells other hosts, proposing.py makes proposals on threads.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from harness import bars
from harness.manifest import harness_digest
from harness.profiles import Profile
from orchestrator import defaults, journal, logs, noise
from orchestrator.gitstore import GitStore
from orchestrator.proposers.base import Proposal, ProposalRequest, Proposer
from orchestrator.research import final, stopping
from orchestrator.research.decide import Then
from orchestrator.research.flights import Flight, Jobs
from orchestrator.research.judge import FollowUp, Judge
from orchestrator.research.policy import Limits, Policy, lookahead_for
from orchestrator.research.proposing import Proposals
from orchestrator.research.publish import Publisher, describe_bar
from orchestrator.research.record import Recorder
from orchestrator.validate import normalized_hash
from worker.contract import Result
from worker.vocab import RowStatus, RunKind


class BaselineFailed(RuntimeError):
    """The unmodified train.py did not score: nothing can be compared against it."""


@dataclass
class Ready:
    """A validated proposal waiting for a free worker."""

    proposal: Proposal
    parent: str  # the frontier it was written against
    exp_id: str = ""  # set once committed (ahead of dispatch, off its critical path)
    commit: str = ""
    source_hash: str = ""  # normalised, set once committed


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
        # What every spec shares; hardware: the baseline's signature once it scored (Judge).
        run = {"profile": self.profile.name, "fingerprint": self.fingerprint, "budget": self.budget}
        run["hardware"] = ""
        self.jobs = Jobs(self.redis, self.tag, run, self.log)
        self.publisher = Publisher(self.redis, self.tag, self.folder, self.policy, self.log)
        self.recorder = Recorder(self.git, self.folder, harness_digest(), self.publisher, self.log)
        self.recorder.published = self.publish_state
        llm = self.proposer.name == "llm"
        self.judge = Judge(self.recorder, self.policy, self.jobs.run, llm, self.log)
        inbox = lambda: self.jobs.take_inbox(self.frontier)  # noqa: E731
        self.proposals = Proposals(self.proposer, self.policy, self.log, inbox)
        self.results = self.recorder.results
        self.harness_sha256 = self.recorder.harness_sha256
        self.started = time.monotonic()
        self.stop_reason = ""
        self.stopped_by: stopping.Stopped | None = None  # the signal that stopped the run
        self.final_launched = False  # the final re-measure (research/final.py)
        self.flights = self.jobs.flights  # id -> Flight, queued or running
        self.ready: deque[Ready] = deque()
        self._workers_at = 0.0
        self._swept_at = time.monotonic()
        self._redis_down_since: float | None = None

    # ----- ids and state -----
    @property
    def frontier(self) -> str:
        """The branch's commit: the last keep (the recorder moves it)."""
        return self.recorder.frontier

    @frontier.setter
    def frontier(self, commit: str) -> None:
        self.recorder.frontier = commit

    @property
    def workers(self) -> list[str]:
        return self.jobs.workers

    @property
    def best(self) -> float | None:
        """The frontier's val_bpb (the mean of its runs), once the baseline scored."""
        return self.judge.best

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
            self.publisher.forget()  # a new run under an old tag: not the old one's trail
        self.publisher.sync(rows)
        self.publish_state(status="running", stop_reason="", started=f"{time.time():.3f}")
        self.recorder.bar = bars.bar(f"run {self.tag}", "exp", total=self.limits.max_experiments)
        try:
            self.reconcile()
            if not self.judge.established and not self.jobs.in_flight(RunKind.BASELINE):
                self.launch_frontier_runs(baseline=True)
            while not self.done():
                self.pump()
                time.sleep(defaults.POLL_INTERVAL_S)
        except KeyboardInterrupt as exc:
            self.stopped_by = stopping.stopped(exc)
            self.stop_reason = f"interrupted ({self.stopped_by.why})"
            self.log.warning("run.interrupted", cancelled=sorted(self.flights))
            self.jobs.cancel_all()  # a resumed run runs them again (reconcile)
            for item in self.ready:  # pinned, so that they run when the run resumes
                item.commit or self._commit(item)
        finally:
            self.recorder.bar.close()
        return self.summary()

    def idle(self) -> bool:
        """Nothing in flight, being made, waiting to run or waiting for a decision."""
        waiting = self.flights or self.ready or self.judge.parked or self.judge.confirming
        return not (waiting or self.proposals.running)

    def step(self) -> None:
        """One proposal through the whole machinery to its row (the sequential path)."""
        self.propose()
        while not self.idle():
            self.pump(auto=False)
            time.sleep(defaults.POLL_INTERVAL_S)

    def pump(self, auto: bool = True) -> None:
        """One turn of the loop; a Redis outage is waited out (the client retries too)."""
        try:
            self.turn(auto)
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

    def turn(self, auto: bool = True) -> None:
        """The loop's body, as named steps."""
        self._housekeeping()
        self._collect_proposals()
        finished = self.jobs.take_ended()
        if finished and not self._stopping() and not self.jobs.paused:
            self._dispatch()  # the freed workers first, then the bookkeeping
        for flight, result in finished:
            self._judge(flight, result)
        for flight, result in self.judge.unpark(noise_pending=self._noise_pending()):
            self._follow(self.judge.candidate(flight, result, self._stopping()))
        if self._stopping():
            self._drop_ready()
            return
        if not self.jobs.paused:  # paused: what runs finishes, nothing new is queued
            self._dispatch()
            auto and self._propose_ahead()

    def _housekeeping(self) -> None:
        """Live workers every WORKER_REFRESH_S, the state every STATE_EVERY_S, abandoned
        jobs every ABANDONED_SWEEP_S."""
        now = time.monotonic()
        if now - self._workers_at > defaults.WORKER_REFRESH_S:
            self.jobs.refresh_workers()
            self._workers_at = now
        if now - self.publisher.published_at > defaults.STATE_EVERY_S:
            self.publish_state()
        if now - self._swept_at > defaults.ABANDONED_SWEEP_S:
            self.jobs.sweep_abandoned()
            self._swept_at = now

    def _drop_ready(self) -> None:
        while self.ready:
            item = self.ready.popleft()
            if item.exp_id:
                self.git.unpin(self.tag, item.exp_id)
            item.proposal.rejected = f"not run: {self.stop_reason or 'the run stopped'}"
            self.recorder.reject(item.proposal, item.parent, item.exp_id, self.best)

    def _stopping(self) -> bool:
        """A limit that ends the run early: no new work starts, what is in flight finishes."""
        if self.stop_reason:
            return True
        lim = self.limits
        if lim.max_hours is not None and time.monotonic() - self.started >= lim.max_hours * 3600:
            self.stop_reason = f"max hours ({lim.max_hours}) reached"
        elif lim.max_cost_usd is not None and self.spent_usd() >= lim.max_cost_usd:
            self.stop_reason = f"max LLM spend (${lim.max_cost_usd:.2f}) reached"
        elif self.proposals.broken:
            self.stop_reason = self.proposals.broken
        if self.stop_reason:
            self.log.info("run.stopping", reason=self.stop_reason, in_flight=sorted(self.flights))
        return bool(self.stop_reason)

    def done(self) -> bool:
        """Stopping and idle, or every allowed proposal made and all it led to (confirmation
        runs, re-applied changes) decided; then the final re-measure, and done once it is."""
        limit = self.limits.max_experiments
        if self._stopping():
            finished = self.idle()
        elif finished := limit is not None and self.proposals.started >= limit and self.idle():
            self.stop_reason = f"max experiments ({limit}) reached"
        return finished and not final.launch(self)  # no final runs due, or they ran

    def spent_usd(self) -> float:
        return spent_usd(self)

    # ----- workers and capacity -----
    def capacity(self) -> int:
        """Jobs to keep queued or running: one per live worker plus the look-ahead."""
        if self.policy.sequential:
            return 1
        workers = max(1, len(self.workers))
        cap = workers + lookahead_for(workers, self.policy.lookahead)
        return min(cap, self.policy.max_in_flight or cap)

    # ----- proposals -----
    def propose(self, combine: str = "") -> None:
        """Start one proposal on a thread; the loop collects it when it is made."""
        rows = self.results.rows()
        request = ProposalRequest(
            source=self.git.read(self.frontier),
            journal=journal.journal(rows, self.policy.journal_tokens, self.recorder.touched()),
            plateau=journal.plateau(rows, self.policy.plateau),
            failure_tail=self.judge.failure_tail,
            seed=self.seed * 1_000_003 + self.recorder.first_id() + self.proposals.started,
            combine=combine,
            idea=self.proposals.take_idea(),
        )
        self.proposals.start(request, self.frontier)

    def _propose_ahead(self) -> None:
        """Proposals for the free slots and those running jobs free within one's latency."""
        if self.policy.sequential:
            want = int(self.idle())  # one proposal, once all before it is decided
        else:
            want = self.capacity() - len(self.flights) - len(self.ready)
            if self.proposals.latency is not None:
                want += self.jobs.ending_within(self.proposals.latency)
        while self.proposals.may_start(want, self.limits.max_experiments):
            self.propose()

    def _collect_proposals(self) -> None:
        for proposal, parent in self.proposals.collect():
            if proposal.rejected is not None:
                self.recorder.reject(proposal, parent, "", self.best)
            elif (item := self._commit(Ready(proposal, parent))) is not None:
                self.ready.append(item)

    def duplicate_of(self, parent: str, source_hash: str, exp_id: str = "") -> str | None:
        """The id of an experiment that already ran the same normalised source on parent,
        runs it now, or waits to (exp_id: the asking one's own, not a twin)."""
        for row in self.results.rows():
            if row.get("source_hash") == source_hash and row["parent"] == parent[:7]:
                if row["status"] != RowStatus.REJECTED:
                    return row["id"]
        for flight in self.flights.values():
            if flight.spec["parent"] == parent and flight.kind == RunKind.CANDIDATE:
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
            self.recorder.reject(proposal, item.parent, item.exp_id, self.best)
            return None
        item.exp_id = item.exp_id or self.recorder.new_id()
        item.source_hash = source_hash
        p = proposal
        item.commit = self.git.commit_candidate(
            self.tag, item.exp_id, item.parent, p.source, p.description, p.proposer, p.usage
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
            spec = self.jobs.spec(item.exp_id, item.commit, item.parent, item.proposal, self.seed)
            self.jobs.launch(item.exp_id, RunKind.CANDIDATE, spec, item.proposal)

    def launch_frontier_runs(self, baseline: bool = False) -> None:
        """Runs of the frontier: the baseline and its noise runs at the start, or more noise
        runs later, up to noise_runs measurements of the frontier in all."""
        source = self.git.read(self.frontier)
        have = 0 if baseline else len(noise.measurements(self.results.rows(), self.frontier))
        runs = max(self.policy.noise_runs, 1) - have
        for k in range(runs):
            kind = RunKind.BASELINE if baseline and k == 0 else RunKind.NOISE
            exp_id = self.recorder.new_id()
            seed = self.seed + have + k
            desc = (
                "baseline"
                if kind == RunKind.BASELINE
                else f"noise {have + k + 1}/{self.policy.noise_runs} of {self.frontier[:7]} (seed {seed})"
            )
            self.git.pin(self.tag, exp_id, self.frontier)
            proposal = Proposal(source, desc, kind)
            spec = self.jobs.spec(exp_id, self.frontier, self.frontier, proposal, seed)
            self.jobs.launch(exp_id, kind, spec, proposal)

    # ----- results -----
    def _noise_pending(self) -> bool:
        return self.jobs.in_flight(RunKind.BASELINE) or self.jobs.in_flight(RunKind.NOISE)

    def _judge(self, flight: Flight, result: Result) -> None:
        self._follow(
            self.judge.handle(
                flight, result, noise_pending=self._noise_pending(), stopping=self._stopping()
            )
        )

    def _follow(self, followups: list[FollowUp]) -> None:
        """Schedule what the decisions asked for."""
        for f in followups:
            if f.then == Then.CONFIRM:
                self._launch_confirm(f.flight, f.result)
            elif f.then == Then.MEASURE:
                self.launch_frontier_runs()
            elif f.then == Then.REAPPLY:
                self.ready.appendleft(Ready(f.proposal, self.frontier))
            elif f.then == Then.COMBINE:
                self.propose(combine=f.combine)
            elif f.then == Then.GIVE_UP:
                self.jobs.cancel_all()
                raise BaselineFailed(f"baseline {f.result['status']}: {f.result['error']}")
            elif f.then == Then.RETRY:  # a second try absorbs a one-off hiccup of the host
                exp_id = self.recorder.new_id()
                self.git.pin(self.tag, exp_id, self.frontier)
                spec = {**f.flight.spec, "id": exp_id}
                self.jobs.launch(exp_id, RunKind.BASELINE, spec, f.flight.proposal)

    def _launch_confirm(self, flight: Flight, result: Result) -> None:
        """Re-run a would-be keep with another seed, on another worker when there is one."""
        if self.jobs.in_flight(RunKind.CONFIRM, of=flight.id):
            return  # a restarted orchestrator found its confirmation already in flight
        queue, at_front = self.jobs.confirm_queue(avoid=result.get("worker"))
        exp_id = self.recorder.new_id()
        spec = flight.spec
        self.git.pin(self.tag, exp_id, spec["commit"])
        desc = f"confirm {flight.id}: {spec['description']}"
        proposal = Proposal(spec["source"], desc, RunKind.CONFIRM)
        confirm = self.jobs.spec(exp_id, spec["commit"], spec["parent"], proposal, self.seed + 1)
        self.jobs.launch(
            exp_id, RunKind.CONFIRM, confirm, proposal, of=flight.id, queue=queue, at_front=at_front
        )

    def reconcile(self) -> None:
        """Adopt what a stopped or killed orchestrator left in flight: every pinned
        experiment without a row whose job RQ still knows is awaited (or taken as finished)
        and recorded once; one cancelled, orphaned or never queued runs again."""
        self.judge.resume()
        recorded = {r["id"] for r in self.results.rows()}
        for exp_id in self.jobs.adopt(sorted(set(self.git.candidate_ids(self.tag)) - recorded)):
            self.jobs.rerun_pinned(exp_id, self.git, self.seed)
        for flight, result in self.jobs.take_ended_in_order():
            if flight.kind == RunKind.CANDIDATE and self.jobs.in_flight(RunKind.CONFIRM, flight.id):
                self.judge.hold(flight, result)
            else:
                self._judge(flight, result)

    def summary(self) -> dict[str, Any]:
        out = self.recorder.summary(
            margin=self.judge.margin(),
            compute_kind="GPU" if self.profile.name == "gpu" else "CPU",
            wall_seconds=round(time.monotonic() - self.started, 1),
            stop_reason=self.stop_reason,
        )
        self.log.info("run.end", **out)
        self.publish_state(status="stopped", stop_reason=self.stop_reason or "done")
        return out

    def publish_state(self, **fields: str) -> None:
        """What other hosts see of the run now (research/publish.py); best effort."""
        rows = self.results.rows()
        state = {
            "frontier": self.frontier[:7],
            "best": "" if self.best is None else f"{self.best:.6f}",
            "workers": str(len(self.workers)),
            "in_flight": str(len(self.flights)),
            "proposing": str(self.proposals.running),
            "ready": str(len(self.ready)),
            "proposer": self.proposer.name,
            "model": str(getattr(self.proposer, "model", "") or ""),
            "paused": "1" if self.jobs.paused else "",
            **fields,
        }
        self.publisher.state(state, rows)
        describe_bar(self.recorder.bar, rows, self.best, len(self.flights))


def spent_usd(r: Research) -> float:
    """A run's LLM spend: recorded rows, proposals made but not recorded yet, failed calls."""
    recorded = sum(float(row.get("cost_usd") or 0) for row in r.results.rows())
    pending = [f.proposal for f in r.flights.values()] + [item.proposal for item in r.ready]
    pending += [f.proposal for f, _ in r.judge.parked + [*r.judge.confirming.values()]]
    pending_usd = sum(float(p.usage.get("cost_usd") or 0) for p in pending)
    return recorded + pending_usd + r.proposals.lost_usd
