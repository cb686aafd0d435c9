"""The proposer interface shared by the offline mutator and the LLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ProposalRequest:
    source: str  # the current best train.py
    journal: str  # every attempt of the run, compact (orchestrator/journal.py), "" if none
    failure_tail: str  # the last failed experiment's log tail, "" if none
    seed: int  # per-proposal seed
    # A change that won on an older train.py and conflicts with the current one: its
    # description and diff, for the LLM to combine with the current best ("" if none).
    combine: str = ""
    # Experiments since the last keep, when that is at least the plateau setting (else 0):
    # the request then asks for a larger or a different kind of change.
    plateau: int = 0
    idea: str = ""  # a human's idea (`autoresearch submit --idea`) this proposal must try


@dataclass
class Proposal:
    source: str  # the full candidate train.py ("" when rejected)
    description: str  # one line
    proposer: str  # "llm" or "mutate"
    usage: dict = field(
        default_factory=dict
    )  # prompt_tokens, completion_tokens, cost_usd, attempts
    rejected: str | None = None  # reason, when no valid candidate could be produced
    # The LLM itself failed (not its reply): auth, model, quota, connection, server,
    # request. No row is written; the loop backs off, then stops (proposing.py).
    failure: str | None = None
    # What the LLM was sent and answered, retries included (the system prompt by its
    # sha256 only): {"model", "system_sha256", "system", "messages": [{role, content}]}.
    transcript: dict | None = None
    why: str = ""  # the LLM's one-line hypothesis (WHY:), shown in the journal and report
    program: str = ""  # sha256 (12) of the program.md the proposal was made under


class LLMUnavailable(Exception):
    """The endpoint, key or model does not answer a request: the run cannot propose."""


class Proposer(Protocol):
    name: str

    def propose(self, request: ProposalRequest) -> Proposal: ...
