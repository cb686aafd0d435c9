"""val_bpb, computed by the harness from the candidate's logits.

val_bpb = sum of next-token cross-entropy (nats) over validation targets
          / (ln 2 * number of UTF-8 bytes those targets encode).
Targets that are special tokens (byte length 0) are excluded from both sums. The
log-softmax is taken here, in float32: the candidate only maps token ids to logits.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import TokenShards


class NonFiniteLogits(ArithmeticError):
    """The model produced NaN or inf logits: status `nan`."""


class BadLogits(TypeError):
    """Logits of the wrong shape or dtype: a crash with a reason."""


def validation_rows(val_path: Path, bos_id: int, seq_len: int) -> np.ndarray:
    """The fixed validation set: every full BOS-aligned row of the validation shard, in order."""
    rows = list(TokenShards([val_path], bos_id).rows(seq_len + 1, shuffle=False))
    if not rows:
        raise ValueError("validation shard is shorter than one row")
    return np.stack(rows)


def check_logits(logits: object, batch: int, seq_len: int, vocab_size: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise BadLogits(f"forward returned {type(logits).__name__}, not a Tensor")
    if tuple(logits.shape) != (batch, seq_len, vocab_size):
        raise BadLogits(
            f"logits have shape {tuple(logits.shape)}, expected {(batch, seq_len, vocab_size)}"
        )
    if not logits.is_floating_point():
        raise BadLogits(f"logits have dtype {logits.dtype}, expected a floating dtype")
    return logits


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    rows: np.ndarray,
    token_bytes: np.ndarray,
    *,
    vocab_size: int,
    batch_size: int,
    device: torch.device,
) -> dict:
    """Score the model on the fixed rows; returns val_bpb, nats, bytes and scored tokens."""
    model.eval()
    nbytes_table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    scored = 0
    seq_len = rows.shape[1] - 1
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else nullcontext()
    )
    for i in range(0, len(rows), batch_size):
        block = torch.from_numpy(rows[i : i + batch_size]).to(device)
        x, y = block[:, :-1], block[:, 1:]
        with autocast:
            logits = model(x)
        logits = check_logits(logits, x.shape[0], seq_len, vocab_size)
        logp = F.log_softmax(logits.float(), dim=-1)
        nats = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        nbytes = nbytes_table[y]
        counted = nbytes > 0
        if not torch.isfinite(nats[counted]).all():
            raise NonFiniteLogits("non-finite loss on validation targets")
        total_nats += nats[counted].double().sum()
        total_bytes += nbytes.sum()
        scored += int(counted.sum())
    nats_sum, bytes_sum = float(total_nats), int(total_bytes)
    return {
        "val_bpb": nats_sum / (math.log(2) * bytes_sum),
        "val_nats": nats_sum,
        "val_bytes": bytes_sum,
        "val_tokens": scored,
    }
