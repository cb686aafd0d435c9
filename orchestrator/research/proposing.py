"""Proposals in the making: each on its own thread, so LLM calls overlap the training.

`Proposals` starts them (at most llm_concurrency at once, at most llm_rate_per_min a
minute), keeps a moving average of how long one takes (the loop proposes that far ahead),
and hands back the made ones, checked by the candidate validator, a slice of time at a time.

It is also the LLM's circuit breaker. A call that failed (after the client's own retries:
auth, model, quota, connection, server) is no proposal: no row, and it does not count
against max_experiments. The next start waits llm_backoff_s, tripled after each failure of
the same kind in a row; at llm_failures of them `broken` says why, and the loop stops.
"""

from __future__ import annotations

import queue as queuelib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator import defaults
from orchestrator.journal import estimate_tokens
from orchestrator.proposers.base import Proposal, ProposalRequest, Proposer
from orchestrator.research.policy import Policy
from orchestrator.validate import CandidateRejected, validate_candidate


class Proposals:
    def __init__(
        self, proposer: Proposer, policy: Policy, log: Any, inbox: Callable[[], list] = list
    ):
        """inbox: what humans submitted since the last call, as (item, parent) pairs."""
        self.proposer, self.policy, self.log, self.inbox = proposer, policy, log, inbox
        self.ideas: list[str] = []  # humans' ideas for the next LLM proposals
        self.made: queuelib.SimpleQueue = queuelib.SimpleQueue()  # (Proposal, parent, s)
        self.running = 0  # proposal threads running
        self.started = 0  # proposals started this session (max_experiments counts these)
        self.latency: float | None = None  # moving average, seconds
        self._next_at = 0.0  # monotonic: the rate limit's next start
        self.failures: list[str] = []  # the LLM failures in a row, all of one kind
        self.broken = ""  # why proposing stopped (the same failure llm_failures times)
        self.program = ""  # the hash of the program.md the last LLM proposal was made under
        self.lost_usd = 0.0  # spent on calls that ended in a failure (no row holds it)

    def may_start(self, want: int, limit: int | None) -> bool:
        """Another proposal may start now: fewer than want (and llm_concurrency) running,
        the session's limit not reached, the rate limit's gap passed."""
        return (
            not self.broken
            and self.running < min(want, self.policy.llm_concurrency)
            and (limit is None or self.started < limit)
            and time.monotonic() >= self._next_at
        )

    def start(self, request: ProposalRequest, parent: str) -> None:
        """Start one proposal on a thread; collect() hands it back when it is made."""
        self.started += 1
        self.running += 1
        self.log.info("proposal.start", journal_tokens=estimate_tokens(request.journal))
        rate = self.policy.llm_rate_per_min
        self._next_at = time.monotonic() + (60.0 / rate if rate else 0.0)

        def make() -> None:
            began = time.monotonic()
            try:
                proposal = self.proposer.propose(request)
            except Exception as exc:  # noqa: BLE001 - a proposer bug is a rejected row
                proposal = Proposal(
                    "",
                    "proposer failed",
                    self.proposer.name,
                    rejected=f"proposer raised {type(exc).__name__}: {exc}",
                )
            self.made.put((proposal, parent, time.monotonic() - began))

        threading.Thread(target=make, name="propose", daemon=True).start()

    def collect(self) -> Iterator[tuple[Proposal, str]]:
        """The made proposals and the frontier each was written against, validated (a
        rejected one says why). Time-boxed: validating and committing a burst of proposals
        must not hold up polling and dispatching for the workers that are free now."""
        for item, parent in self.inbox():
            self._submitted(item, parent)
        until = time.monotonic() + defaults.COLLECT_SLICE_S
        while time.monotonic() < until:
            try:
                proposal, parent, seconds = self.made.get_nowait()
            except queuelib.Empty:
                return
            self.running -= 1
            if proposal.proposer != "human":  # made by the proposer: its latency counts
                a = 0.3
                self.latency = (
                    seconds if self.latency is None else a * seconds + (1 - a) * self.latency
                )
            self.log.info(
                "proposal",
                proposer=proposal.proposer,
                description=proposal.description,
                rejected=proposal.rejected,
                usage=proposal.usage,
                seconds=round(seconds, 3),
            )
            if proposal.program and proposal.program != self.program:
                if self.program:  # program.md was edited while the run goes on
                    self.log.info("program.changed", was=self.program, now=proposal.program)
                self.program = proposal.program
            if proposal.failure is not None:
                self._failed(proposal)
                continue
            self.failures.clear()
            if proposal.rejected is None:
                try:
                    validate_candidate(proposal.source)
                except CandidateRejected as exc:
                    proposal.rejected = str(exc)
            yield proposal, parent

    def _submitted(self, item: dict[str, Any], parent: str) -> None:
        """A human's train.py becomes a proposal like any other (validated, queued, judged
        with the noise margin and confirmation); an idea waits for the next LLM request."""
        if item.get("kind") == "file":
            proposal = Proposal(item["source"], item["description"], "human")
            self.running += 1  # collect() counts it out like a made one
            self.made.put((proposal, parent, 0.0))
            self.log.info("submitted", kind="file", description=item["description"])
        elif self.proposer.name == "llm":
            self.ideas.append(item["text"])
            self.log.info("submitted", kind="idea", text=item["text"])
        else:
            self.log.warning("idea.ignored", text=item["text"], why="the proposer is mutate")

    def take_idea(self) -> str:
        return self.ideas.pop(0) if self.ideas else ""

    def _failed(self, proposal: Proposal) -> None:
        """Back off; at llm_failures of one kind in a row, break."""
        self.started -= 1
        self.lost_usd += float(proposal.usage.get("cost_usd") or 0)
        if self.failures and self.failures[-1] != proposal.failure:
            self.failures.clear()
        self.failures.append(proposal.failure or "")
        n = len(self.failures)
        wait = self.policy.llm_backoff_s * 3 ** (n - 1)
        self._next_at = max(self._next_at, time.monotonic() + wait)
        if n >= self.policy.llm_failures:
            self.broken = (
                f"LLM failing ({proposal.failure}, {n} times in a row): {proposal.rejected}"
            )
        self.log.warning(
            "llm.failed",
            kind=proposal.failure,
            error=proposal.rejected,
            in_a_row=n,
            next_try_s=None if self.broken else round(wait, 1),
            stopping=bool(self.broken),
        )
