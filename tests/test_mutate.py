"""The offline mutate proposer: AST-found constants, seeded, minimal textual edits."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import TINY_TRAIN

from orchestrator.proposers.base import ProposalRequest
from orchestrator.proposers.mutate import MutateProposer, find_constants, rewrite

SOURCE = '''\
"""Docstring with LR = 99 inside, which is not an assignment."""
import math

LR = 0.003  # learning rate, a float
WARMUP = 0.1
BATCH_SIZE = 64  # a power of two
N_LAYER = 6  # not a power of two
WEIGHT_DECAY = -0.5  # negative float
OFFSET = -7  # negative int
lower_case = 3
USE_AMP = True
NAME = "model"
PRODUCT = 2 * 8
ZERO = 0
TUPLE = (1, 2)


def train():
    INNER = 5
    return INNER


class Config:
    DIM = 128
'''

TWINS = """\
SEQ_LEN = 1024
CPU_SEQ_LEN = 128
DIM = 512
CPU_DIM = 64
LR = 0.01
"""


def request(source: str = SOURCE, seed: int = 0) -> ProposalRequest:
    return ProposalRequest(source=source, journal="", failure_tail="", seed=seed)


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    """(old line, new line) pairs that differ; the line count must not change."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_find_constants_picks_only_top_level_upper_numbers():
    found = {c.name: c.value for c in find_constants(SOURCE)}
    assert found == {
        "LR": 0.003,
        "WARMUP": 0.1,
        "BATCH_SIZE": 64,
        "N_LAYER": 6,
        "WEIGHT_DECAY": -0.5,
        "OFFSET": -7,
        "ZERO": 0,
    }
    assert type(found["BATCH_SIZE"]) is int and type(found["LR"]) is float
    assert [c.name for c in find_constants(SOURCE)][:3] == ["LR", "WARMUP", "BATCH_SIZE"]


def test_find_constants_positions_cover_the_number():
    lines = SOURCE.splitlines()
    for c in find_constants(SOURCE):
        text = lines[c.line - 1].encode()[c.col : c.end_col].decode()
        assert ast.literal_eval(text) == c.value, c


def test_tiny_train_constants():
    assert [(c.name, c.value) for c in find_constants(TINY_TRAIN)] == [
        ("LR", 0.03),
        ("BATCH_SIZE", 16),
        ("DIM", 32),
    ]


def test_same_seed_same_proposal_different_seeds_differ():
    first = MutateProposer("cpu").propose(request(seed=42))
    again = MutateProposer("cpu").propose(request(seed=42))
    assert first.rejected is None
    assert (first.source, first.description) == (again.source, again.description)
    others = {MutateProposer("cpu").propose(request(seed=s)).source for s in range(12)}
    assert len(others) >= 4


@pytest.mark.parametrize("seed", range(25))
def test_result_is_a_minimal_edit(seed):
    proposal = MutateProposer("cpu").propose(request(seed=seed))
    assert proposal.rejected is None and proposal.proposer == "mutate"
    ast.parse(proposal.source)
    assert proposal.source != SOURCE
    before = {c.name: c for c in find_constants(SOURCE)}
    after = {c.name: c.value for c in find_constants(proposal.source)}
    assert set(after) == set(before)
    changed = {n for n in before if after[n] != before[n].value}
    assert 1 <= len(changed) <= 2
    assert "ZERO" not in changed  # zero has no scale to perturb

    pairs = changed_lines(SOURCE, proposal.source)
    assert len(pairs) == len(changed)
    for old, new in pairs:
        name = old.split("=")[0].strip()
        c = before[name]
        b_old, b_new = old.encode(), new.encode()
        # Same bytes before the number, same bytes (comment, newline) after it.
        assert b_new[: c.col] == b_old[: c.col]
        tail = b_old[c.end_col :]
        assert b_new.endswith(tail)
        number = b_new[c.col : len(b_new) - len(tail)].decode()
        assert ast.literal_eval(number) == after[name]
        assert type(after[name]) is type(c.value)
        assert (after[name] < 0) == (c.value < 0)

    # The description names each changed constant with its old and new value.
    for name in changed:
        assert f"{name} {before[name].value!r} -> {after[name]!r}" in proposal.description
    named = set(re.findall(r"([A-Z_]+) \S+ -> ", proposal.description))
    assert named == changed
    assert "\n" not in proposal.description


def test_powers_of_two_stay_powers_of_two():
    source = "BATCH_SIZE = 64\nHEADS = 8\nLR = 0.5\n"
    seen_values = set()
    for seed in range(40):
        after = {
            c.name: c.value
            for c in find_constants(MutateProposer().propose(request(source, seed)).source)
        }
        for name in ("BATCH_SIZE", "HEADS"):
            v = after[name]
            assert v > 0 and v & (v - 1) == 0, (seed, name, v)
            seen_values.add((name, v))
    assert {("BATCH_SIZE", 32), ("BATCH_SIZE", 128)} <= seen_values


def test_non_power_of_two_int_stays_a_positive_int():
    for seed in range(20):
        p = MutateProposer().propose(request("N_LAYER = 6\n", seed))
        (c,) = find_constants(p.source)
        assert type(c.value) is int and c.value >= 1 and c.value != 6


def test_cpu_profile_never_changes_constants_with_a_cpu_twin():
    changed_any = set()
    for seed in range(40):
        p = MutateProposer("cpu").propose(request(TWINS, seed))
        for old, _new in changed_lines(TWINS, p.source):
            changed_any.add(old.split("=")[0].strip())
    assert "SEQ_LEN" not in changed_any and "DIM" not in changed_any
    assert changed_any == {"CPU_SEQ_LEN", "CPU_DIM", "LR"}


def test_gpu_profile_never_changes_cpu_constants():
    changed_any = set()
    for seed in range(40):
        p = MutateProposer("gpu").propose(request(TWINS, seed))
        for old, _new in changed_lines(TWINS, p.source):
            changed_any.add(old.split("=")[0].strip())
    assert changed_any == {"SEQ_LEN", "DIM", "LR"}


def test_no_constants_is_rejected_with_a_reason():
    source = 'import torch\n\nlr = 0.1\nNAME = "x"\nZERO = 0\n\n\ndef f():\n    X = 3\n'
    p = MutateProposer().propose(request(source))
    assert p.source == ""
    assert p.rejected and "no numeric constants" in p.rejected
    # On gpu, CPU_* constants are skipped: a file of only those has none to change.
    p = MutateProposer("gpu").propose(request("CPU_DIM = 64\n"))
    assert p.rejected and p.source == ""


def test_unparsable_source_is_rejected():
    p = MutateProposer().propose(request("LR = 0.1\ndef broken(:\n"))
    assert p.source == "" and p.rejected and "cannot parse" in p.rejected


def test_never_returns_the_same_candidate_twice():
    proposer = MutateProposer()
    source = "LR = 0.1\n"  # six float factors: at most six distinct candidates
    got = []
    for _ in range(10):
        p = proposer.propose(request(source, seed=7))  # the same seed every time
        if p.rejected:
            assert p.rejected == "no new mutation found" and p.source == ""
            break
        got.append(p.source)
    else:
        pytest.fail("the proposer never ran out of new candidates")
    assert len(got) >= 2
    assert len(set(got)) == len(got)
    assert source not in got


def test_non_ascii_before_the_constant_on_the_same_line():
    source = 'NOTE = "été ✓ über"; LR = 0.25  # größe\nDIM = 16  # ✓\n'
    p = MutateProposer().propose(request(source, seed=3))
    ast.parse(p.source)
    after = {c.name: c.value for c in find_constants(p.source)}
    lines = p.source.splitlines(keepends=True)
    assert lines[0].startswith('NOTE = "été ✓ über"; LR = ')
    assert lines[0].endswith("  # größe\n")
    assert lines[1].startswith("DIM = ") and lines[1].endswith("  # ✓\n")
    assert (after["LR"], after["DIM"]) != (0.25, 16)
    # Every seed: the line structure around the numbers survives.
    for seed in range(20):
        src = MutateProposer().propose(request(source, seed)).source
        first = src.splitlines()[0]
        assert re.fullmatch(r'NOTE = "été ✓ über"; LR = [0-9.e-]+  # größe', first), first


def test_rewrite_two_constants_on_one_line():
    source = "A = 1; B = 20  # é\n"
    consts = {c.name: c for c in find_constants(source)}
    out = rewrite(source, {consts["A"]: 1000, consts["B"]: 3})
    assert out == "A = 1000; B = 3  # é\n"


@pytest.mark.parametrize("breaker", ["\x0c", "\u2028", "\x1c"])
def test_rewrite_with_a_line_break_python_does_not_count(breaker):
    """str.splitlines() splits at form feeds and Unicode separators; Python's tokenizer does
    not, so a constant below such a character must still be rewritten on its own line."""
    source = f"# section{breaker}\nLR = 0.5  # rate\nDIM = 16\n"
    for seed in range(5):
        p = MutateProposer().propose(request(source, seed))
        assert p.rejected is None
        ast.parse(p.source)
        lines = p.source.split("\n")
        assert lines[0] == f"# section{breaker}", repr(p.source)
        assert re.fullmatch(r"LR = [0-9.e-]+  # rate", lines[1]), repr(p.source)
        assert re.fullmatch(r"DIM = [0-9]+", lines[2]), repr(p.source)
        assert lines[3:] == [""]
