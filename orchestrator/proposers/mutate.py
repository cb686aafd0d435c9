"""The offline proposer: perturb the numeric constants at the top of train.py.

AST-based and seeded, so a run repeats. It needs no key and no network, and it is the
baseline an LLM has to beat. Only top-level UPPER_CASE assignments of a plain number are
touched, and the edit rewrites just that number's characters, comments and all else intact.
Constants with a `CPU_` twin are the GPU shape and are skipped on the cpu profile (and the
`CPU_` ones on gpu), so no experiment is spent on a value that changes nothing.
"""

from __future__ import annotations

import ast
import random
import threading
from dataclasses import dataclass

from orchestrator.proposers.base import Proposal, ProposalRequest

FLOAT_FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)
MAX_TRIES = 20


@dataclass(frozen=True)
class Constant:
    name: str
    value: int | float
    line: int  # 1-based
    col: int
    end_col: int


def find_constants(source: str) -> list[Constant]:
    """Top-level `NAME = <number>` (or `-<number>`) assignments, in file order."""
    found = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        if not (isinstance(target, ast.Name) and target.id.isupper()):
            continue
        number = _number(value)
        if number is None or value.lineno != value.end_lineno:
            continue
        found.append(
            Constant(target.id, number, value.lineno, value.col_offset, value.end_col_offset)
        )
    return found


def _number(node: ast.expr) -> int | float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    return None


def applicable(constants: list[Constant], profile: str) -> list[Constant]:
    names = {c.name for c in constants}
    if profile == "cpu":
        return [c for c in constants if f"CPU_{c.name}" not in names and c.value != 0]
    return [c for c in constants if not c.name.startswith("CPU_") and c.value != 0]


def perturb(value: int | float, rng: random.Random) -> int | float:
    if isinstance(value, float):
        return float(f"{value * rng.choice(FLOAT_FACTORS):.3g}")
    magnitude = abs(value)
    if magnitude >= 2 and magnitude & (magnitude - 1) == 0:  # powers of two stay powers of two
        new = magnitude * 2 if rng.random() < 0.5 else magnitude // 2
    else:
        step = max(1, round(magnitude * 0.25))
        new = max(1, magnitude + rng.choice((-step, step)))
    return new if value > 0 else -new


def _format(value: int | float) -> str:
    return repr(value)


def rewrite(source: str, changes: dict[Constant, int | float]) -> str:
    # Split on "\n" alone: str.splitlines also breaks at form feeds and the like, which
    # the AST's line numbers do not count.
    lines = source.split("\n")
    for const, value in sorted(changes.items(), key=lambda kv: (kv[0].line, -kv[0].col)):
        row = lines[const.line - 1]
        encoded = row.encode()
        new = encoded[: const.col] + _format(value).encode() + encoded[const.end_col :]
        lines[const.line - 1] = new.decode()
    return "\n".join(lines)


class MutateProposer:
    """Change one or two constants by a seeded random factor."""

    name = "mutate"

    def __init__(self, profile: str = "cpu"):
        self.profile = profile
        self.seen: set[str] = set()
        self._lock = threading.Lock()  # proposals are made on several threads at once

    def propose(self, request: ProposalRequest) -> Proposal:
        rng = random.Random(request.seed)
        try:
            pool = applicable(find_constants(request.source), self.profile)
        except SyntaxError as exc:
            return Proposal("", "mutate", "mutate", rejected=f"cannot parse train.py: {exc}")
        if not pool:
            return Proposal("", "mutate", "mutate", rejected="train.py has no numeric constants")
        for _ in range(MAX_TRIES):
            picks = rng.sample(pool, k=min(len(pool), 1 if rng.random() < 0.7 else 2))
            changes = {c: perturb(c.value, rng) for c in picks}
            changes = {c: v for c, v in changes.items() if v != c.value}
            candidate = rewrite(request.source, changes) if changes else request.source
            with self._lock:
                if candidate == request.source or candidate in self.seen:
                    continue
                self.seen.add(candidate)
            desc = ", ".join(
                f"{c.name} {_format(c.value)} -> {_format(v)}" for c, v in changes.items()
            )
            return Proposal(candidate, desc, "mutate", usage={"attempts": 1})
        return Proposal("", "mutate", "mutate", rejected="no new mutation found")
