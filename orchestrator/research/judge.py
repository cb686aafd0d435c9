"""Carrying out the decision rules: the frontier's figures, the rows, what runs next.

`Judge` holds what the rules need between runs (the frontier's value, candidates parked
until the noise floor is known, would-be keeps waiting for their confirmation). For each
finished run it asks research/decide.py for the verdict, records the row (record.py) and
returns the follow-up work for the loop to schedule: a confirmation, the baseline again,
noise runs of a new frontier, a change re-applied on it, or one for the LLM to combine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator import noise
from orchestrator.gitstore import GitStore
from orchestrator.proposers.base import Proposal
from orchestrator.research import decide
from orchestrator.research.decide import Then
from orchestrator.research.flights import Flight
from orchestrator.research.policy import Policy
from orchestrator.research.record import Experiment, Recorder
from orchestrator.results import best_kept
from worker import contract
from worker.contract import Result, Spec
from worker.vocab import Outcome, RowStatus, RunKind


@dataclass
class FollowUp:
    """Work a decision asks the loop for (decide.Then says which)."""

    then: Then
    flight: Flight | None = None  # CONFIRM: the candidate; RETRY, GIVE_UP: the baseline
    result: Result | None = None  # CONFIRM: the candidate's first result
    proposal: Proposal | None = None  # REAPPLY: the merged change, on the frontier
    combine: str = ""  # COMBINE: the change the LLM carries over to the frontier


class Judge:
    def __init__(self, recorder: Recorder, policy: Policy, run: dict, llm: bool, log: Any):
        """run: what every spec of the run shares (flights.Jobs.run); the judge pins its
        `hardware` to the baseline's signature, so the specs queued after carry it."""
        self.recorder, self.policy, self.run, self.llm = recorder, policy, run, llm
        self.git: GitStore = recorder.git
        self.log = log
        self.best: float | None = None  # mean val_bpb of the frontier, once scored
        self.parked: list[tuple[Flight, Result]] = []  # candidates waiting for the noise floor
        self.confirming: dict[str, tuple[Flight, Result]] = {}  # candidate id -> it, result
        self.keeps_since_noise = 0
        self.baseline_failures = 0
        self.failure_tail = ""  # the last failed candidate's output, for the next proposal

    @property
    def frontier(self) -> str:
        return self.recorder.frontier

    @property
    def established(self) -> bool:
        """The baseline scored: candidates can be judged."""
        return self.best is not None

    def margin(self) -> float:
        sigma = noise.pooled_sigma(self.recorder.results.rows())[0]
        return noise.margin(sigma, self.policy.z, self.policy.min_delta)

    def resume(self) -> None:
        """The frontier's value and the hardware pin as results.tsv has them (a resumed
        run: the first keep is the baseline)."""
        rows = self.recorder.results.rows()
        kept = best_kept(rows)
        self.best = noise.commit_value(rows, kept["commit"]) if kept else None
        baseline = next((r for r in rows if r["status"] == RowStatus.KEEP), None)
        if baseline is not None:
            self.run["hardware"] = baseline.get("hardware", "")

    def _remeasure(self) -> None:
        self.best = noise.commit_value(self.recorder.results.rows(), self.frontier)

    # ----- one finished run -----
    def handle(
        self, flight: Flight, result: Result, *, noise_pending: bool, stopping: bool
    ) -> list[FollowUp]:
        result = self._refused(flight.spec, result)
        if flight.kind == RunKind.BASELINE:
            return self._baseline(flight, result)
        if flight.kind == RunKind.NOISE:
            self.record(flight, result, decide.noise_run(result).status)
            if self.established and flight.spec["commit"] == self.frontier:
                self._remeasure()
            return []
        if flight.kind == RunKind.CONFIRM:
            return self._confirmed(flight, result, stopping)
        if flight.kind == RunKind.FINAL:
            self.record(flight, result, decide.noise_run(result, final=True).status)
            return []
        if not self.established or noise_pending:
            self.parked.append((flight, result))  # judged once the noise floor is known
            return []
        return self.candidate(flight, result, stopping)

    def unpark(self, *, noise_pending: bool) -> list[tuple[Flight, Result]]:
        """The candidates that finished before the noise floor was known, once it is (the
        loop decides them one by one with candidate(), scheduling each one's follow-ups)."""
        if not self.established or noise_pending:
            return []
        parked, self.parked = self.parked, []
        return parked

    def _refused(self, spec: Spec, result: Result) -> dict:
        """A scored result is taken only when it was scored by this harness on this data."""
        why = decide.refused(
            result, self.recorder.harness_sha256, self.run["fingerprint"], self.run["hardware"]
        )
        if not why:
            return result
        self.log.warning("result.refused", id=spec["id"], why=why, worker=result.get("worker"))
        return contract.make_result(
            spec, Outcome.INFRA_ERROR, error=why, worker=result.get("worker")
        )

    def _baseline(self, flight: Flight, result: Result) -> list[FollowUp]:
        verdict = decide.baseline(result, self.baseline_failures)
        self.record(flight, result, verdict.status)
        if verdict.status == RowStatus.KEEP:
            self._remeasure()
            self.run["hardware"] = result.get("hardware") or ""
            self.log.info("run.pinned", hardware=self.run["hardware"] or "(none reported)")
            return []
        self.baseline_failures += 1
        return [FollowUp(verdict.then, flight, result)]

    def candidate(self, flight: Flight, result: Result, stopping: bool) -> list[FollowUp]:
        """A candidate's own run, once the noise floor is known."""
        assert self.best is not None  # the baseline scored (established)
        if result["status"] != Outcome.OK:
            self.failure_tail = result["log_tail"][-4000:]  # the next proposal sees why
        verdict = decide.candidate(
            result,
            self.recorder.results.rows(),
            parent=flight.spec["parent"],
            frontier=self.frontier,
            best=self.best,
            margin=self.margin(),
            confirm=self.policy.confirm,
        )
        if verdict.then == Then.STALE:
            return self._stale(flight, result, verdict.value, stopping)
        if verdict.then == Then.CONFIRM:
            flight.flag = verdict.flag
            if flight.flag:
                self.log.warning("suspicious", id=flight.id, why=flight.flag)
            self.confirming[flight.id] = (flight, result)
            return [FollowUp(Then.CONFIRM, flight, result)]
        if verdict.status == RowStatus.KEEP:
            return self._keep(flight, result)
        self.record(flight, result, verdict.status, verdict.note)
        return []

    def _confirmed(self, confirm: Flight, result: Result, stopping: bool) -> list[FollowUp]:
        held = self.confirming.pop(confirm.of, None)
        if held is None:  # its candidate was recorded already (should not happen): keep the row
            ok = result["status"] == Outcome.OK
            self.record(confirm, result, RowStatus.CONFIRM if ok else result["status"])
            return []
        flight, first = held
        assert self.best is not None  # a would-be keep was judged against it
        verdict, confirm_status = decide.confirmed(
            first,
            result,
            parent=flight.spec["parent"],
            frontier=self.frontier,
            best=self.best,
            margin=self.margin(),
            flag=flight.flag,
            confirm_id=confirm.id,
        )
        if verdict.status == RowStatus.KEEP:
            return self._keep(flight, first, confirm=(confirm, result), note=verdict.note)
        follow = []
        if verdict.then == Then.STALE:
            follow = self._stale(flight, first, verdict.value, stopping)
        else:
            self.record(flight, first, verdict.status, verdict.note)
        self.record(confirm, result, confirm_status)
        return follow

    def _keep(
        self,
        flight: Flight,
        result: Result,
        confirm: tuple[Flight, Result] | None = None,
        note: str | None = None,
    ) -> list[FollowUp]:
        self.record(flight, result, RowStatus.KEEP, note)
        if confirm is not None:
            self.record(*confirm, RowStatus.CONFIRM)
        self._remeasure()
        self.keeps_since_noise += 1
        if self.keeps_since_noise < self.policy.noise_every:
            return []
        self.keeps_since_noise = 0
        return [FollowUp(Then.MEASURE)]

    def _stale(
        self, flight: Flight, result: Result, value: float | None, stopping: bool
    ) -> list[FollowUp]:
        """A candidate built on an older frontier: re-applied on the new one when it beat
        its own parent, else discarded."""
        spec, parent, frontier = flight.spec, flight.spec["parent"], self.frontier
        parent_value = noise.commit_value(self.recorder.results.rows(), parent)
        won = decide.stale_gain(float(value or 0.0), parent_value, self.margin(), parent)
        if won.status is not None:
            self.record(flight, result, won.status, won.note)
            return []
        merged = self.git.merge3(self.git.read(parent), self.git.read(frontier), spec["source"])
        verdict = decide.reapply(
            won.note or "", frontier, stopping=stopping, merges=merged is not None, llm=self.llm
        )
        self.record(flight, result, verdict.status, verdict.note)
        if verdict.then == Then.REAPPLY:
            desc = f"{spec['description']} (re-applied {flight.id} on {frontier[:7]})"
            return [FollowUp(Then.REAPPLY, proposal=Proposal(merged, desc, "reapply"))]
        if verdict.then == Then.COMBINE:
            diff = self.git.diff(parent, spec["commit"])
            return [FollowUp(Then.COMBINE, combine=f"{spec['description']}\n{diff}")]
        return []

    def record(
        self, flight: Flight, result: Result, status: RowStatus | None, note: str | None = None
    ) -> None:
        spec = flight.spec
        run = {k: spec.get(k) for k in ("seed", "budget", "profile", "fingerprint", "commit")}
        run["hardware"] = spec.get("hardware", "")
        exp = Experiment(
            flight.id, spec["commit"], spec["parent"], spec["description"], flight.proposal, run
        )
        self.recorder.record(exp, result, RowStatus(status), note, best=self.best)
