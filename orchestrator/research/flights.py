"""The research loop's RQ side: jobs in flight, enqueued, polled, cancelled, adopted.

A `Flight` is a job queued or running and what the loop will do with its result. `Jobs`
holds everything that talks to RQ: enqueueing (timeouts, retries, the meta a restarted
orchestrator needs), one batched status poll per turn, results of ended jobs, cancelling,
the live workers, and fetching a killed orchestrator's jobs back.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from random import random
from typing import Any

import redis
from rq import Queue, Retry, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import as_text
from rq.worker_registration import clean_worker_registry, get_keys

from orchestrator import defaults
from orchestrator.proposers.base import Proposal
from orchestrator.validate import normalized_hash
from worker import contract, keys
from worker.contract import Result, Spec
from worker.runner import READY_S
from worker.vocab import Outcome, RunKind

# RQ's statuses of a job that will not change again.
ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


@dataclass
class Flight:
    """A job queued or running, and what to do with its result."""

    id: str
    kind: RunKind
    job: Job
    spec: Spec
    proposal: Proposal
    queue: str
    of: str = ""  # a confirmation: the candidate's id
    source_hash: str = ""  # normalised, for the near-duplicate check
    started: float | None = None  # when the loop first saw it running (monotonic)
    flag: str = ""  # why its gain looks suspicious, if it does

    def __post_init__(self) -> None:
        self.kind = RunKind(self.kind)
        self.source_hash = self.source_hash or normalized_hash(self.spec["source"])


class Jobs:
    """The run's jobs in RQ (one shared queue, a queue per worker for confirmations), the
    flights they belong to, and the live workers."""

    def __init__(self, connection: redis.Redis, tag: str, run: dict[str, Any], log: Any):
        """run: what every spec of this run shares (profile, fingerprint, budget, and the
        hardware signature it is pinned to, "" until the baseline scored)."""
        self.redis, self.tag, self.run, self.log = connection, tag, run, log
        self.queue = Queue(keys.QUEUE_NAME, connection=connection, serializer=JSONSerializer)
        budget = run["budget"]
        self.job_seconds = float(budget["train_wall_s"] + budget["eval_wall_s"])  # average
        # The train process may take READY_S to be ready before its wall starts.
        self.timeout = int(self.job_seconds + READY_S) + defaults.JOB_TIMEOUT_MARGIN_S
        self.flights: dict[str, Flight] = {}
        self.workers: list[str] = []
        self.paused = False  # `autoresearch pause`: nothing new is queued
        self.inbox: list[dict[str, Any]] = []  # `autoresearch submit`'s, not taken yet
        self._cleaned_at = 0.0
        self._no_worker_since: float | None = None
        self._warned_no_worker = False
        self._unmatched: tuple[str, list[str]] | None = None  # the pin, the workers last seen

    def job_id(self, exp_id: str) -> str:
        return f"{self.tag}-{exp_id}"

    def spec(
        self, exp_id: str, commit: str, parent: str, proposal: Proposal, seed: int, **extra: Any
    ) -> dict:
        """The job's spec (extra: make_spec's, e.g. test_split)."""
        return contract.make_spec(
            id=exp_id,
            tag=self.tag,
            parent=parent,
            commit=commit,
            source=proposal.source,
            seed=seed,
            description=proposal.description,
            **self.run,
            **extra,
        )

    def launch(self, exp_id: str, kind: RunKind, spec: Spec, proposal: Proposal, **kw) -> None:
        """Enqueue the job and take it into flight (kw: enqueue's)."""
        self.flights[exp_id] = self.enqueue(exp_id, kind, spec, proposal, **kw)

    def in_flight(self, kind: RunKind, of: str | None = None) -> bool:
        """A job of this kind is in flight (of: confirming that candidate)."""
        return any(f.kind == kind and of in (None, f.of) for f in self.flights.values())

    def ending_within(self, seconds: float) -> int:
        """Running jobs that will end before `seconds` (plus a margin) have passed: jobs
        that started together end together, so they are counted, not an average rate."""
        lead = seconds + max(2.0, 0.1 * self.job_seconds)
        now, horizon = time.monotonic(), self.job_seconds - lead
        return sum(1 for f in self.flights.values() if f.started and now - f.started >= horizon)

    def take_ended(self) -> list[tuple[Flight, Result]]:
        """The flights whose jobs ended, out of flight, with their results."""
        ended = self.poll(list(self.flights.values()))
        for flight, result in ended:
            del self.flights[flight.id]
            if result.get("total_s"):
                self.job_seconds = 0.7 * self.job_seconds + 0.3 * float(result["total_s"])
        return ended

    def cancel_all(self) -> None:
        for flight in list(self.flights.values()):
            self.cancel(flight.job)
        self.flights.clear()

    def confirm_queue(self, avoid: str | None) -> tuple[str, bool]:
        """Where a confirmation goes, and whether at the front: the queue of the live worker
        other than `avoid` with the fewest confirmations waiting for it (ties: random),
        served in order ahead of the shared queue; else the shared queue's front."""
        others = [w for w in self.workers if w != avoid]
        if not others:
            return keys.QUEUE_NAME, True
        waiting = Counter(f.queue for f in self.flights.values() if f.kind == RunKind.CONFIRM)
        pick = min(others, key=lambda w: (waiting[keys.worker_queue(w)], random()))
        return keys.worker_queue(pick), False

    def enqueue(
        self,
        exp_id: str,
        kind: RunKind,
        spec: Spec,
        proposal: Proposal,
        *,
        of: str = "",
        queue: str = keys.QUEUE_NAME,
        at_front: bool = False,
    ) -> Flight:
        q = (
            self.queue
            if queue == keys.QUEUE_NAME
            else Queue(queue, connection=self.redis, serializer=JSONSerializer)
        )
        job = q.enqueue_call(
            contract.JOB_FUNC,
            args=(spec,),
            job_id=self.job_id(exp_id),
            timeout=self.timeout,
            result_ttl=keys.RESULT_TTL_S,
            failure_ttl=keys.RESULT_TTL_S,
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

    def poll(self, flights: list[Flight]) -> list[tuple[Flight, Result]]:
        """The flights whose jobs ended, with their results (one round trip for every
        job's status; full results only for the ended ones). Marks the ones now running."""
        with self.redis.pipeline(transaction=False) as pipe:
            for flight in flights:
                pipe.hget(flight.job.key, "status")
            statuses = pipe.execute()
        now = time.monotonic()
        ended = []
        for flight, raw in zip(flights, statuses, strict=True):
            status = JobStatus(as_text(raw)) if raw else None
            if status == JobStatus.STARTED and flight.started is None:
                flight.started = now
            if status in ENDED and (result := self.result(flight, status)) is not None:
                ended.append((flight, result))
        return ended

    def result(self, flight: Flight, status: JobStatus | None = None) -> Result | None:
        """The result of a job that ended (an infra_error result for a failed one), else None.
        status: already read (the batched poll), so not asked again."""
        job = flight.job
        status = status or job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            return job.return_value(refresh=True)
        if status in ENDED:
            job.refresh()
            error = (job.exc_info or f"job {status.value}").strip().splitlines()[-1]
            return contract.make_result(flight.spec, Outcome.INFRA_ERROR, error=error[:500])
        return None

    def cancel(self, job: Job) -> None:
        try:
            if job.get_status(refresh=True) == JobStatus.STARTED:
                send_stop_job_command(self.redis, job.id, serializer=JSONSerializer)
            else:
                job.cancel()
        except (InvalidJobOperation, NoSuchJobError, redis.RedisError) as exc:
            self.log.warning("cancel_failed", id=job.id, error=str(exc))

    def take_inbox(self, parent: str) -> list[tuple[dict[str, Any], str]]:
        """What `autoresearch submit` sent since the last call, each with `parent`."""
        taken, self.inbox = self.inbox, []
        return [(item, parent) for item in taken]

    def sweep_abandoned(self) -> None:
        """A worker that died mid-job stops heartbeating; RQ's registry cleanup then fails
        the job as abandoned and, with a retry left, requeues it for another."""
        StartedJobRegistry(queue=self.queue).cleanup()

    def refresh_workers(self) -> None:
        """Whether the run is paused and what was submitted to it (one transaction); the
        live workers (one SMEMBERS; a dead worker's stale key is swept every ten
        refreshes), said when they change and when jobs wait with none; a confirmation
        waiting in the queue of a worker that left goes to the shared queue's front."""
        pipe = self.redis.pipeline()
        pipe.exists(keys.paused_key(self.tag))
        pipe.lrange(keys.inbox_key(self.tag), 0, -1)
        pipe.delete(keys.inbox_key(self.tag))
        exists, submitted, _ = pipe.execute()
        self.inbox += [json.loads(item) for item in submitted]
        paused = bool(exists)
        if paused != self.paused:
            self.log.info("run.paused" if paused else "run.resumed", in_flight=len(self.flights))
            self.paused = paused
        if time.monotonic() - self._cleaned_at > 10 * defaults.WORKER_REFRESH_S:
            clean_worker_registry(self.queue)
            self._cleaned_at = time.monotonic()
        prefix = Worker.redis_worker_namespace_prefix
        names = sorted(k.removeprefix(prefix) for k in get_keys(self.queue))
        if names != self.workers:
            joined, left = (
                sorted(set(names) - set(self.workers)),
                sorted(set(self.workers) - set(names)),
            )
            self.log.info("workers", count=len(names), joined=joined, left=left)
        self.workers = names
        if names or not self.flights:
            self._no_worker_since = None
        elif self._no_worker_since is None:
            self._no_worker_since = time.monotonic()
        elif time.monotonic() - self._no_worker_since > 10 and not self._warned_no_worker:
            self._warned_no_worker = True
            self.log.warning("no_worker", hint="start one: autoresearch worker --redis-url ...")
        self._check_pin(names)
        for flight in list(self.flights.values()):
            if (
                flight.queue != keys.QUEUE_NAME
                and flight.queue.split(".worker.", 1)[-1] not in names
                and flight.job.get_status(refresh=True) == JobStatus.QUEUED
            ):
                self.log.warning("requeue", id=flight.id, why=f"{flight.queue} has no worker")
                flight.job.cancel()
                flight.job.delete()
                self.launch(
                    flight.id,
                    flight.kind,
                    flight.spec,
                    flight.proposal,
                    of=flight.of,
                    at_front=True,
                )

    def _check_pin(self, names: list[str]) -> None:
        """Once the run is pinned to its baseline's hardware, say (once per change of the
        live workers) when none of them has that signature: its jobs wait for one."""
        pin = self.run.get("hardware", "")
        if not pin or not names or self._unmatched == (pin, names):
            return
        self._unmatched = (pin, names)
        found = self.redis.mget([keys.worker_hardware_key(name) for name in names])
        signatures = sorted({as_text(s) for s in found if s})
        if pin not in signatures:
            self.log.warning(
                "no_worker_with_hardware",
                pinned=pin,
                live=signatures,
                hint="the run's jobs wait for a worker on its baseline's hardware",
            )

    def adopt(self, exp_ids: list[str]) -> list[str]:
        """Take the jobs a stopped or killed orchestrator left into flight; returns the ids
        RQ does not know (never queued, or queued in a Redis that lost them). A job stopped
        on purpose (cancelled or stopped by Ctrl-C) or orphaned (running on a worker that
        is gone) is not a failure: it is queued again with the same spec and runs again."""
        lost = []
        alive = {k.removeprefix(Worker.redis_worker_namespace_prefix) for k in get_keys(self.queue)}
        for exp_id in exp_ids:
            try:
                job = Job.fetch(
                    self.job_id(exp_id), connection=self.redis, serializer=JSONSerializer
                )
            except NoSuchJobError:
                lost.append(exp_id)
                continue
            spec, meta = job.args[0], job.meta or {}
            kind = meta.get("kind") or (
                RunKind.BASELINE if spec["commit"] == spec["parent"] else RunKind.CANDIDATE
            )
            proposal = Proposal(
                spec["source"],
                spec["description"],
                meta.get("proposer", "?"),
                meta.get("usage") or {},
            )
            status = job.get_status(refresh=True)
            orphan = status == JobStatus.STARTED and job.worker_name not in alive
            if status in (JobStatus.CANCELED, JobStatus.STOPPED) or orphan:
                self.log.info("reconcile.rerun", id=exp_id, kind=kind, was=status.value)
                job.delete()
                self.launch(exp_id, kind, spec, proposal, of=meta.get("of", ""))
                continue
            flight = Flight(exp_id, kind, job, spec, proposal, job.origin, meta.get("of", ""))
            self.flights[exp_id] = flight
            self.log.info("reconcile.adopt", id=exp_id, kind=flight.kind, status=status.value)
        return lost

    def rerun_pinned(self, exp_id: str, git: Any, seed: int) -> None:
        """A pinned experiment RQ does not know: a candidate runs again from its commit;
        a run of a measured commit is unpinned (the loop schedules what it still needs)."""
        found = git.pinned_candidate(self.tag, exp_id)
        if found is None:
            git.unpin(self.tag, exp_id)
            self.log.info("reconcile.dropped", id=exp_id, why="a repeat run that never ran")
            return
        proposal = Proposal(
            found["source"], found["description"], found["proposer"], found["usage"]
        )
        spec = self.spec(exp_id, found["commit"], found["parent"], proposal, seed)
        self.log.info("reconcile.rerun", id=exp_id, kind=RunKind.CANDIDATE, was="not in Redis")
        self.launch(exp_id, RunKind.CANDIDATE, spec, proposal)

    def take_ended_in_order(self) -> Iterator[tuple[Flight, Result]]:
        """The flights whose jobs already ended, out of flight one at a time (lazily: each
        is taken only when the one before it was handled), candidates first, so that a
        confirmation finds the candidate it confirms held."""
        order = {
            RunKind.CANDIDATE: 0,
            RunKind.BASELINE: 1,
            RunKind.NOISE: 1,
            RunKind.CONFIRM: 2,
            RunKind.FINAL: 3,
        }
        for flight in sorted(self.flights.values(), key=lambda f: (order[f.kind], f.id)):
            result = self.result(flight)
            if result is not None:
                del self.flights[flight.id]
                yield flight, result
