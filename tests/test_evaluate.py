"""val_bpb against a brute-force computation, and the checks on a candidate's logits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.evaluate import (
    BadLogits,
    NonFiniteLogits,
    check_logits,
    evaluate_bpb,
    validation_rows,
)

CPU = torch.device("cpu")


class Bigram(torch.nn.Module):
    """Embedding + Linear with random weights: a real model with peaked, varied predictions."""

    def __init__(self, vocab: int, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab)
        with torch.no_grad():
            self.out.weight.mul_(8.0)

    def forward(self, x):
        return self.out(self.emb(x))


class Returns(torch.nn.Module):
    """A model whose forward returns whatever `make(x, logits)` builds."""

    def __init__(self, vocab: int, make):
        super().__init__()
        self.inner = Bigram(vocab)
        self.make = make

    def forward(self, x):
        return self.make(x, self.inner(x))


@pytest.fixture(scope="module")
def prepared(data_dir):
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    token_bytes = np.load(Path(data_dir) / manifest["tokenizer"]["token_bytes"])
    return {
        "val": Path(data_dir) / manifest["val"]["file"],
        "bos": manifest["tokenizer"]["bos_id"],
        "vocab": manifest["tokenizer"]["vocab_size"],
        "seq_len": manifest["profile"]["seq_len"],
        "token_bytes": token_bytes,
        # More documents than the tiny validation split holds, for many-row cases.
        "train": Path(data_dir) / manifest["train"][0]["file"],
    }


def many_rows(prepared, seq_len: int = 16) -> np.ndarray:
    rows = validation_rows(prepared["train"], prepared["bos"], seq_len)
    assert len(rows) > 12
    return rows


def brute_force(model, rows: np.ndarray, token_bytes: np.ndarray) -> dict:
    """The metric by definition, one target at a time, in float64."""
    nats, nbytes, scored = 0.0, 0, 0
    for row in rows:
        with torch.no_grad():
            logits = model(torch.from_numpy(row[None, :-1]))[0].double().numpy()
        for t in range(len(row) - 1):
            target = int(row[t + 1])
            if token_bytes[target] == 0:
                continue
            z = logits[t]
            m = z.max()
            log_norm = m + math.log(np.exp(z - m).sum())
            nats += log_norm - z[target]
            nbytes += int(token_bytes[target])
            scored += 1
    return {
        "val_bpb": nats / (math.log(2) * nbytes),
        "val_nats": nats,
        "val_bytes": nbytes,
        "val_tokens": scored,
    }


def score(model, rows, prepared, batch_size=8):
    return evaluate_bpb(
        model,
        rows,
        prepared["token_bytes"],
        vocab_size=prepared["vocab"],
        batch_size=batch_size,
        device=CPU,
    )


@pytest.mark.parametrize("seq_len", [None, 16, 40])
def test_validation_rows_are_every_full_bos_aligned_row_in_order(prepared, seq_len):
    seq_len = seq_len or prepared["seq_len"]
    bos = prepared["bos"]
    tokens = np.fromfile(prepared["val"], dtype=np.uint16).tolist()
    starts = [i for i, t in enumerate(tokens) if t == bos] + [len(tokens)]
    # Reference: documents one after another, the one that overflows a row cropped.
    expected, row = [], []
    for a, b in zip(starts, starts[1:], strict=False):
        row.extend(tokens[a:b][: seq_len + 1 - len(row)])
        if len(row) == seq_len + 1:
            expected.append(row)
            row = []
    rows = validation_rows(prepared["val"], bos, seq_len)
    assert rows.dtype == np.int64
    assert rows.tolist() == expected
    assert (rows[:, 0] == bos).all()


def test_validation_shorter_than_a_row_is_an_error(prepared):
    n_val = len(np.fromfile(prepared["val"], dtype=np.uint16))
    with pytest.raises(ValueError, match="shorter than one row"):
        validation_rows(prepared["val"], prepared["bos"], n_val + 10)


@pytest.mark.parametrize(("split", "seq_len"), [("val", None), ("train", 16), ("train", 255)])
def test_matches_brute_force(prepared, split, seq_len):
    seq_len = seq_len or prepared["seq_len"]
    rows = validation_rows(prepared[split], prepared["bos"], seq_len)
    model = Bigram(prepared["vocab"])
    got = score(model, rows, prepared)
    want = brute_force(model, rows, prepared["token_bytes"])
    assert got["val_bytes"] == want["val_bytes"] > 0
    assert got["val_tokens"] == want["val_tokens"] > 0
    assert got["val_nats"] == pytest.approx(want["val_nats"], rel=1e-6)
    assert got["val_bpb"] == pytest.approx(want["val_bpb"], rel=1e-6)
    if seq_len > 100:
        # Long rows hold several documents, so BOS targets that are not scored.
        assert got["val_tokens"] < rows.shape[0] * seq_len
    # A random model is far from a perfect one and not absurdly bad either.
    assert 0.5 < got["val_bpb"] < 50


def test_bytes_are_the_raw_bytes_of_the_scored_targets(prepared):
    rows = many_rows(prepared)
    got = score(Bigram(prepared["vocab"]), rows, prepared)
    assert got["val_bytes"] == int(prepared["token_bytes"][rows[:, 1:]].sum())


def test_batch_size_does_not_change_the_result(prepared):
    rows = many_rows(prepared)
    assert len(rows) > 7
    model = Bigram(prepared["vocab"])
    results = [score(model, rows, prepared, batch_size=b) for b in (1, 3, 7, len(rows) + 5)]
    for r in results[1:]:
        assert r["val_bytes"] == results[0]["val_bytes"]
        assert r["val_tokens"] == results[0]["val_tokens"]
        assert r["val_bpb"] == pytest.approx(results[0]["val_bpb"], rel=1e-9)


def test_better_model_scores_lower(prepared):
    rows = many_rows(prepared)
    vocab = prepared["vocab"]
    # Memorising every (input, target) pair of the rows: a much better predictor.
    table = torch.zeros(vocab, vocab)
    for row in rows:
        for a, b in zip(row[:-1], row[1:], strict=True):
            table[a, b] += 1
    oracle = Returns(vocab, lambda x, _: torch.log(table[x] + 1e-3))
    assert (
        score(oracle, rows, prepared)["val_bpb"] < score(Bigram(vocab), rows, prepared)["val_bpb"]
    )


def test_special_token_targets_are_excluded(prepared):
    rows = many_rows(prepared)
    model = Bigram(prepared["vocab"])
    base = score(model, rows[:3], prepared)
    all_bos = np.full_like(rows[:1], prepared["bos"])
    with_bos = score(model, np.concatenate([rows[:3], all_bos]), prepared)
    # A row of BOS targets adds no bytes, no scored tokens and no loss.
    assert with_bos["val_bytes"] == base["val_bytes"]
    assert with_bos["val_tokens"] == base["val_tokens"]
    assert with_bos["val_nats"] == pytest.approx(base["val_nats"], rel=1e-12)


def test_nan_logits_raise_non_finite(prepared):
    rows = many_rows(prepared)
    nan_model = Returns(prepared["vocab"], lambda x, z: torch.full_like(z, float("nan")))
    with pytest.raises(NonFiniteLogits):
        score(nan_model, rows, prepared)
    inf_model = Returns(
        prepared["vocab"], lambda x, z: z.index_fill(-1, torch.tensor([5]), math.inf)
    )
    with pytest.raises(NonFiniteLogits):
        score(inf_model, rows, prepared)


def test_nan_only_in_a_later_batch_still_raises(prepared):
    rows = many_rows(prepared)
    calls = []

    def late_nan(x, z):
        calls.append(1)
        return z if len(calls) < 3 else torch.full_like(z, float("nan"))

    with pytest.raises(NonFiniteLogits):
        score(Returns(prepared["vocab"], late_nan), rows, prepared, batch_size=2)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda x, z: z[..., :-1], "shape"),
        (lambda x, z: z[:, :-1], "shape"),
        (lambda x, z: z[None], "shape"),
        (lambda x, z: z.long(), "dtype"),
        (lambda x, z: z.numpy(), "not a Tensor"),
        (lambda x, z: (z, None), "not a Tensor"),
    ],
)
def test_bad_logits_are_rejected(prepared, make, reason):
    rows = many_rows(prepared)
    with pytest.raises(BadLogits, match=reason):
        score(Returns(prepared["vocab"], make), rows, prepared)


def test_check_logits_accepts_any_floating_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        z = torch.zeros(2, 3, 5, dtype=dtype)
        assert check_logits(z, 2, 3, 5) is z
    with pytest.raises(BadLogits, match="dtype"):
        check_logits(torch.zeros(2, 3, 5, dtype=torch.int32), 2, 3, 5)


def test_half_precision_logits_score_close_to_float32(prepared):
    rows = many_rows(prepared)
    model = Bigram(prepared["vocab"])
    half = Returns(prepared["vocab"], lambda x, z: z.to(torch.bfloat16))
    half.inner = model
    full = score(model, rows, prepared)["val_bpb"]
    assert score(half, rows, prepared)["val_bpb"] == pytest.approx(full, rel=2e-2)


def test_model_is_put_in_eval_mode(prepared):
    rows = many_rows(prepared)
    model = torch.nn.Sequential(Bigram(prepared["vocab"]), torch.nn.Dropout(0.9))
    model.train()
    a = score(model, rows, prepared)
    b = score(model, rows, prepared)
    assert not model.training
    assert a == b
