"""BOS-aligned packing: rows start at a document, have no padding, and repeat by seed."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.codes import METRICS_PREFIX
from harness.context import Context
from harness.data import TokenShards, batches

BOS = 7  # not 0, so a loader that assumed id 0 would fail


def _docs(seed: int, count: int) -> list[list[int]]:
    """Documents [BOS, 1000 + k, body...] of varied lengths, some longer than a row."""
    rng = np.random.default_rng(seed)
    docs = []
    for k in range(count):
        n = int(rng.choice([0, 1, 3, 9, 17, 40]))
        body = rng.integers(10, 900, size=n).tolist()
        docs.append([BOS, 1000 + k, *body])
    return docs


def _write(path: Path, docs: list[list[int]]) -> Path:
    np.asarray([t for d in docs for t in d], dtype=np.uint16).tofile(path)
    return path


def _pack(docs: list[list[int]], row_len: int) -> list[list[int]]:
    """Reference packing: fill rows with whole documents, crop the one that overflows."""
    rows, row = [], []
    for doc in docs:
        row.extend(doc[: row_len - len(row)])
        if len(row) == row_len:
            rows.append(row)
            row = []
    return rows


@pytest.fixture
def shards(tmp_path):
    docs_a, docs_b = _docs(1, 30), _docs(2, 25)
    docs_b = [[BOS, 2000 + i, *d[2:]] for i, d in enumerate(docs_b)]
    paths = [_write(tmp_path / "a.bin", docs_a), _write(tmp_path / "b.bin", docs_b)]
    return paths, docs_a + docs_b


def _prepared(data_dir: Path) -> tuple[list[Path], int]:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    paths = [data_dir / s["file"] for s in manifest["train"]]
    return paths, manifest["tokenizer"]["bos_id"]


def test_documents_are_found_at_every_bos(shards):
    paths, docs = shards
    ts = TokenShards(paths, BOS)
    assert len(ts.docs) == len(docs)
    got = [ts.shards[s][a:b].tolist() for s, a, b in ts.docs]
    assert got == docs


@pytest.mark.parametrize("row_len", [5, 17, 33])
def test_ordered_pass_is_the_concatenated_documents_cropped(shards, row_len):
    paths, docs = shards
    rows = [r.tolist() for r in TokenShards(paths, BOS).rows(row_len, shuffle=False)]
    expected = _pack(docs, row_len)
    assert len(expected) > 3
    assert rows == expected
    # One pass, then it ends; a second pass repeats it exactly.
    again = [r.tolist() for r in TokenShards(paths, BOS).rows(row_len, shuffle=False)]
    assert again == rows


def test_ordered_pass_on_prepared_shards(data_dir):
    paths, bos = _prepared(data_dir)
    tokens = np.concatenate([np.fromfile(p, dtype=np.uint16) for p in paths]).tolist()
    assert tokens[0] == bos
    starts = [i for i, t in enumerate(tokens) if t == bos] + [len(tokens)]
    docs = [tokens[a:b] for a, b in itertools.pairwise(starts)]
    row_len = 129
    rows = [r.tolist() for r in TokenShards(paths, bos).rows(row_len, shuffle=False)]
    assert rows and rows == _pack(docs, row_len)


def test_every_row_starts_with_bos_and_is_full(shards, data_dir):
    paths, _ = shards
    cases = [(paths, BOS), _prepared(data_dir)]
    for (ps, bos), shuffle in itertools.product(cases, [False, True]):
        rows = TokenShards(ps, bos).rows(19, shuffle=shuffle, seed=3)
        for row in itertools.islice(rows, 200):
            assert row.dtype == np.int64
            assert row.shape == (19,)
            assert row[0] == bos


def test_shuffled_rows_are_made_of_whole_documents_and_one_cropped_tail(shards):
    paths, docs = shards
    by_id = {d[1]: d for d in docs}
    rows = TokenShards(paths, BOS).rows(23, shuffle=True, seed=5)
    for row in itertools.islice(rows, 300):
        row = row.tolist()
        starts = [i for i, t in enumerate(row) if t == BOS] + [len(row)]
        assert starts[0] == 0
        pieces = [row[a:b] for a, b in itertools.pairwise(starts)]
        for piece in pieces[:-1]:
            assert piece == by_id[piece[1]]
        tail = pieces[-1]
        # The last piece is a (possibly whole) prefix of a document.
        assert len(tail) == 1 or by_id[tail[1]][: len(tail)] == tail


def test_shuffle_repeats_by_seed_and_differs_across_seeds(shards):
    paths, docs = shards
    ts = TokenShards(paths, BOS)

    def take(seed: int, n: int = 60) -> list[list[int]]:
        return [r.tolist() for r in itertools.islice(ts.rows(11, shuffle=True, seed=seed), n)]

    assert take(0) == take(0)
    assert take(0) != take(1)
    # Shuffled rows are not the ordered pass.
    ordered = [r.tolist() for r in ts.rows(11, shuffle=False)]
    assert take(0, len(ordered)) != ordered


def test_shuffled_rows_are_endless_epochs(shards):
    paths, docs = shards
    ts = TokenShards(paths, BOS)
    per_pass = len(list(ts.rows(11, shuffle=False)))
    rows = list(itertools.islice(ts.rows(11, shuffle=True, seed=0), 3 * per_pass + 1))
    assert len(rows) == 3 * per_pass + 1
    # Every document opens some row over a few epochs: the shuffle visits all of them.
    openers = {r[1] for r in itertools.islice(ts.rows(11, shuffle=True, seed=0), 40 * per_pass)}
    assert openers == {d[1] for d in docs}


def test_batches_shift_targets_by_one_and_drop_the_short_tail(shards):
    paths, docs = shards
    row_len, size = 13, 5
    rows = _pack(docs, row_len)
    got = list(batches(TokenShards(paths, BOS).rows(row_len, shuffle=False), size))
    assert len(got) == len(rows) // size
    assert len(rows) % size != 0, "the fixture should leave a short tail"
    for b, (x, y) in enumerate(got):
        assert x.shape == y.shape == (size, row_len - 1)
        assert x.dtype == y.dtype == np.int64
        block = np.asarray(rows[b * size : (b + 1) * size])
        assert np.array_equal(x, block[:, :-1])
        assert np.array_equal(y, block[:, 1:])
        assert np.array_equal(x[:, 1:], y[:, :-1])
        assert (x[:, 0] == BOS).all()


def test_no_shards_is_an_error():
    with pytest.raises(ValueError, match="no token shards"):
        TokenShards([], BOS)


def test_a_shard_without_bos_is_the_documented_error(tmp_path):
    nodoc = _write(tmp_path / "nodoc.bin", [[1, 2, 3]])
    with pytest.raises(ValueError, match="no BOS-prefixed document"):
        TokenShards([nodoc], BOS)


# Context.batches: the budget gate on top of the packing above.


def _context(data_dir: Path, deadline: float, seq_len: int = 16, seed: int = 0) -> Context:
    paths, bos = _prepared(data_dir)
    ctx = Context(
        vocab_size=512,
        seq_len=seq_len,
        device=torch.device("cpu"),
        profile="cpu",
        seed=seed,
        deadline=deadline,
        train_paths=paths,
        bos_id=bos,
    )
    ctx.train_started = time.time()
    return ctx


def test_context_batches_stop_at_the_deadline(data_dir):
    start = time.time()
    ctx = _context(data_dir, deadline=start + 0.5)
    progress = [ctx.progress()]
    steps = 0
    for x, y in ctx.batches(4):
        steps += 1
        progress.append(ctx.progress())
        assert x.shape == y.shape == (4, 16)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert time.time() < start + 10, "batches() kept yielding long past the deadline"
    assert time.time() >= ctx.deadline
    assert ctx.stopped_by_deadline
    assert steps == ctx.steps >= 2
    assert ctx.tokens == steps * 4 * 16
    assert ctx.second_batch_at is not None
    assert start <= ctx.first_batch_at <= ctx.second_batch_at < ctx.deadline
    # progress runs within [0, 1], never goes back, and reaches 1 once the deadline passed.
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert all(a <= b for a, b in itertools.pairwise(progress))
    assert progress[-1] > progress[0]
    assert ctx.progress() == 1.0


def test_context_batches_yield_nothing_after_the_deadline(data_dir):
    ctx = _context(data_dir, deadline=time.time() - 1)
    assert list(ctx.batches(4)) == []
    assert ctx.stopped_by_deadline
    assert ctx.tokens == ctx.steps == 0


def test_context_batches_are_the_seeded_shuffled_rows(data_dir):
    paths, bos = _prepared(data_dir)
    ctx = _context(data_dir, deadline=time.time() + 60, seed=3)
    got = list(itertools.islice(ctx.batches(2), 5))
    rows = TokenShards(paths, bos).rows(17, shuffle=True, seed=3)
    for (x, y), (wx, wy) in zip(got, batches(rows, 2), strict=False):
        assert np.array_equal(x.numpy(), wx)
        assert np.array_equal(y.numpy(), wy)
    assert ctx.tokens == 5 * 2 * 16
    assert not ctx.stopped_by_deadline


def test_context_batches_need_data_and_a_positive_size(data_dir):
    ctx = _context(data_dir, deadline=time.time() + 60)
    with pytest.raises(ValueError, match="positive"):
        next(ctx.batches(0))
    bare = Context(
        vocab_size=8,
        seq_len=4,
        device=torch.device("cpu"),
        profile="cpu",
        seed=0,
        deadline=time.time() + 60,
    )
    with pytest.raises(RuntimeError, match="no training data"):
        next(bare.batches(1))


def test_context_log_prints_one_metrics_json_line(data_dir, capsys):
    ctx = _context(data_dir, deadline=time.time() + 100)
    ctx.log(step=3, loss=torch.tensor(1.5), lr=0.01, bad=float("nan"), note="warm")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(METRICS_PREFIX)
    payload = json.loads(lines[0][len(METRICS_PREFIX) :])
    assert payload["step"] == 3
    assert payload["loss"] == 1.5
    assert payload["lr"] == 0.01
    assert payload["bad"] == "nan"
    assert payload["note"] == "warm"
    assert 0.0 <= payload["progress"] < 0.1
    assert 90 < payload["remaining_s"] <= 100
