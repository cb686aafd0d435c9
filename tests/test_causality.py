"""The causality probe: secret split points, many row probes, a tolerance an honest model
keeps and a peeking one cannot (harness/evaluate.py, figures in bench/causality.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import evaluate as ev
from tests.test_evaluate import CPU, Bigram, prepared  # noqa: F401


class Peek(torch.nn.Module):
    """An honest bigram that also reads the next token at the positions `where` marks."""

    def __init__(self, vocab: int, where, strength: float = 30.0):
        super().__init__()
        self.inner, self.vocab, self.where, self.strength = Bigram(vocab), vocab, where, strength

    def forward(self, x):
        out = self.inner(x)
        nxt = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
        mask = self.where(x.shape[1]).to(out.dtype)[None, :, None]
        return out + self.strength * mask * torch.nn.functional.one_hot(nxt, self.vocab)


def everywhere(t):
    return torch.ones(t)


def all_but_the_middle(t):
    where = torch.ones(t)
    where[t // 2 - 1] = 0  # the old probe's only compared boundary
    return where


def a_fraction(fraction: float):
    def where(t):
        gen = torch.Generator().manual_seed(1234)
        return (torch.rand(t, generator=gen) < fraction).float()

    return where


def score(model, prepared, probe=True, passes=ev.PROBE_PASSES):  # noqa: F811
    rows = ev.validation_rows(prepared["val"], prepared["bos"], prepared["seq_len"])
    plan = ev.probe_plan(len(rows), 8, prepared["seq_len"], passes=passes) if probe else None
    return ev.evaluate_bpb(
        model,
        rows,
        prepared["token_bytes"],
        vocab_size=prepared["vocab"],
        batch_size=8,
        device=CPU,
        probe=plan,
    )


@pytest.mark.parametrize(
    "where",
    [everywhere, all_but_the_middle, a_fraction(0.05)],
    ids=["everywhere", "everywhere but the middle", "at 5% of positions"],
)
def test_a_model_that_reads_the_next_token_is_caught(prepared, where):  # noqa: F811
    model = Peek(prepared["vocab"], where)
    assert (
        score(model, prepared, probe=False)["val_bpb"]
        < score(Bigram(prepared["vocab"]), prepared)["val_bpb"]
    )
    with pytest.raises(ev.LooksAhead, match="reads tokens after"):
        # The gpu profile's 512 probes (this small set, probed again and again): a peek at
        # 5% of positions escapes them with probability 0.95 ** 512 < 1e-11.
        score(model, prepared, passes=512)


def test_a_faint_peek_everywhere_moves_more_than_the_tolerance(prepared):  # noqa: F811
    with pytest.raises(ev.LooksAhead):
        score(Peek(prepared["vocab"], everywhere, strength=0.05), prepared)


def test_an_honest_model_moves_by_nothing(prepared):  # noqa: F811
    out = score(Bigram(prepared["vocab"]), prepared)
    assert out["causal_move"] <= ev.CAUSALITY_MEASURED


def test_the_plan_covers_enough_rows_at_secret_points(prepared):  # noqa: F811
    rows, batch, seq = 48, 8, prepared["seq_len"]
    plans = [ev.probe_plan(rows, batch, seq) for _ in range(2)]
    for plan in plans:
        probes = [s for passes in plan.values() for s in passes]
        assert sum(len(s) for s in probes) == ev.PROBE_PASSES * rows  # a small set: capped
        assert all(start % batch == 0 and start < rows for start in plan)
        splits = np.concatenate(probes)
        assert splits.min() >= 1 and splits.max() <= seq - 1
        assert len(set(splits.tolist())) > seq // 4  # spread over the row, not one point
    first, second = (np.concatenate([s for p in plan.values() for s in p]) for plan in plans)
    assert not np.array_equal(first[: len(second)], second[: len(first)])
    big = ev.probe_plan(10_000, 32, 2048)
    # Whole batches, each once, until 512 rows are covered (17 when the short last one is drawn).
    assert len(big) in (ev.PROBE_ROWS // 32, ev.PROBE_ROWS // 32 + 1)
    assert all(len(passes) == 1 for passes in big.values())
    assert (
        ev.PROBE_ROWS <= sum(len(s) for passes in big.values() for s in passes) < ev.PROBE_ROWS + 32
    )
