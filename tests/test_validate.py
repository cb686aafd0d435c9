"""Static validation of a candidate train.py: each rule, with its reason."""

from __future__ import annotations

import pytest

from orchestrator.validate import CandidateRejected, validate_candidate

GOOD = """\
import torch

LR = 0.01


def build_model(ctx):
    return torch.nn.Embedding(ctx.vocab_size, ctx.vocab_size)


def train(model, ctx):
    for x, y in ctx.batches(8):
        pass
"""


def test_good_source_passes():
    validate_candidate(GOOD)


def test_extra_optional_params_and_type_hints_pass():
    source = GOOD.replace("def train(model, ctx):", "def train(model: object, ctx, *, log=None):")
    validate_candidate(source.replace("def build_model(ctx):", "def build_model(ctx, extra=1):"))


def test_size_limit():
    with pytest.raises(
        CandidateRejected, match=r"^train\.py is \d+ bytes, over the 100-byte limit$"
    ):
        validate_candidate(GOOD, max_bytes=100)
    validate_candidate(GOOD, max_bytes=len(GOOD.encode()))


def test_size_counts_utf8_bytes_not_characters():
    source = GOOD + "# " + "é" * 40 + "\n"
    limit = len(source) + 10  # enough characters, too few bytes
    with pytest.raises(CandidateRejected, match="bytes, over the"):
        validate_candidate(source, max_bytes=limit)


def test_syntax_error_names_the_line():
    source = GOOD.replace("LR = 0.01", "LR = = 0.01")
    with pytest.raises(CandidateRejected, match="^syntax error at line 3: "):
        validate_candidate(source)


def test_null_byte():
    with pytest.raises(CandidateRejected, match=r"^train\.py contains a null byte$"):
        validate_candidate(GOOD + "\x00")


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("def build_model(ctx):", "def make_model(ctx):", r"no top-level def build_model\(ctx\)"),
        ("def train(model, ctx):", "def fit(model, ctx):", r"no top-level def train\(model, ctx\)"),
        ("def train(model, ctx):", "def train(model):", r"train must be callable as"),
        ("def build_model(ctx):", "def build_model():", r"build_model must be callable as"),
        ("def train(model, ctx):", "def train(model, ctx, steps):", r"train must be callable"),
        ("def train(model, ctx):", "def train(model, ctx, *, n):", r"train must be callable"),
        ("def train(model, ctx):", "async def train(model, ctx):", r"no top-level def train"),
    ],
)
def test_contract_functions(old, new, reason):
    with pytest.raises(CandidateRejected, match=reason):
        validate_candidate(GOOD.replace(old, new))


def test_nested_definition_does_not_count():
    source = GOOD.replace("def train(model, ctx):", "class Trainer:\n  def train(model, ctx):")
    with pytest.raises(CandidateRejected, match="no top-level def train"):
        validate_candidate(source)


def test_varargs_satisfy_the_contract():
    validate_candidate(GOOD.replace("def train(model, ctx):", "def train(*args):"))
