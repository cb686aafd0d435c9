"""The proposer interface shared by the offline mutator and the LLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ProposalRequest:
    source: str  # the current best train.py
    results_tail: str  # recent results.tsv rows (header + rows) as text, "" if none
    failure_tail: str  # the last failed experiment's log tail, "" if none
    seed: int  # per-proposal seed
    # A change that won on an older train.py and conflicts with the current one: its
    # description and diff, for the LLM to combine with the current best ("" if none).
    combine: str = ""


@dataclass
class Proposal:
    source: str  # the full candidate train.py ("" when rejected)
    description: str  # one line
    proposer: str  # "llm" or "mutate"
    usage: dict = field(
        default_factory=dict
    )  # prompt_tokens, completion_tokens, cost_usd, attempts
    rejected: str | None = None  # reason, when no valid candidate could be produced


class Proposer(Protocol):
    name: str

    def propose(self, request: ProposalRequest) -> Proposal: ...
