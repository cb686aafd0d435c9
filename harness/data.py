"""BOS-aligned packing of documents into rows, no padding.

Every row of seq_len + 1 tokens starts at a document's BOS; documents follow one another
until the row is full and the last one is cropped. No row ever starts mid-document, so the
model always sees a document's beginning with its BOS, in training and in evaluation alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class TokenShards:
    """Memory-mapped uint16 shards and the offsets of their documents."""

    def __init__(self, paths: Sequence[Path], bos_id: int):
        if not paths:
            raise ValueError("no token shards given")
        self.shards = [np.memmap(p, dtype=np.uint16, mode="r") for p in paths]
        # (shard index, start, end) of every document.
        docs = []
        for i, arr in enumerate(self.shards):
            starts = np.flatnonzero(arr == bos_id)
            if len(starts) == 0:
                continue
            ends = np.append(starts[1:], len(arr))
            docs.append(np.stack([np.full_like(starts, i), starts, ends], axis=1))
        if not docs:
            raise ValueError("token shards hold no BOS-prefixed document")
        self.docs = np.concatenate(docs)

    def rows(self, row_len: int, *, shuffle: bool, seed: int = 0) -> Iterator[np.ndarray]:
        """Endless rows (shuffled epochs) when shuffle, else one ordered pass."""
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(self.docs)) if shuffle else np.arange(len(self.docs))
            row = np.empty(row_len, dtype=np.int64)
            filled = 0
            for shard, start, end in self.docs[order]:
                take = min(end - start, row_len - filled)
                row[filled : filled + take] = self.shards[shard][start : start + take]
                filled += take
                if filled == row_len:
                    yield row.copy()
                    filled = 0
            if not shuffle:
                return


def batches(rows: Iterator[np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) int64 arrays of shape [batch_size, row_len - 1]; a short tail is dropped."""
    while True:
        block = [row for _, row in zip(range(batch_size), rows, strict=False)]
        if len(block) < batch_size:
            return
        arr = np.stack(block)
        yield arr[:, :-1], arr[:, 1:]
