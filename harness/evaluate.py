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


class LooksAhead(ValueError):
    """The logits at a position depend on later tokens: the model reads its own targets."""


# Largest change of a log-probability at a position when only later tokens change
# (bf16 kernels may differ in the last bits; reading the targets moves it by whole nats).
CAUSALITY_TOL = 0.25


def model_forward(model: torch.nn.Module, device: torch.device):
    """forward(x) for a model in this process (tests and tools; the eval phase serves the
    candidate's model from another process: harness.model_server)."""
    model.eval()
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else nullcontext()
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(x.to(device))

    return forward


@torch.no_grad()
def evaluate_bpb(
    model_or_forward,
    rows: np.ndarray,
    token_bytes: np.ndarray,
    *,
    vocab_size: int,
    batch_size: int,
    device: torch.device,
    probe_batch: int | None = None,
) -> dict:
    """Score on the fixed rows; returns val_bpb, nats, bytes and scored tokens.

    `model_or_forward` is a module or forward(x_cpu) -> logits [B, T, V]. With probe_batch,
    that batch is run again with its second half replaced by other tokens: the first
    half's log-probabilities must not move (LooksAhead otherwise).
    """
    forward = (
        model_forward(model_or_forward, device)
        if isinstance(model_or_forward, torch.nn.Module)
        else model_or_forward
    )
    nbytes_table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    scored = 0
    seq_len = rows.shape[1] - 1
    for b, i in enumerate(range(0, len(rows), batch_size)):
        block = torch.from_numpy(rows[i : i + batch_size])
        x, y = block[:, :-1], block[:, 1:].to(device)
        logits = check_logits(forward(x), x.shape[0], seq_len, vocab_size).to(device)
        logp = F.log_softmax(logits.float(), dim=-1)
        nats = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        nbytes = nbytes_table[y]
        counted = nbytes > 0
        if not torch.isfinite(nats[counted]).all():
            raise NonFiniteLogits("non-finite loss on validation targets")
        if b == probe_batch:
            check_causal(forward, x, logp, vocab_size, device)
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


def check_causal(forward, x: torch.Tensor, logp: torch.Tensor, vocab_size: int, device) -> None:
    """Run x again with its second half taken from other rows; the first half must agree."""
    half = x.shape[1] // 2
    other = x.roll(1, dims=0) if x.shape[0] > 1 else (x + 1) % vocab_size
    probe = torch.cat([x[:, :half], other[:, half:]], dim=1)
    again = check_logits(forward(probe), x.shape[0], x.shape[1], vocab_size).to(device)
    moved = (F.log_softmax(again.float(), dim=-1)[:, :half] - logp[:, :half]).abs().max()
    if not torch.isfinite(moved):
        raise NonFiniteLogits("non-finite logits on a validation batch")
    if not moved <= CAUSALITY_TOL:
        raise LooksAhead(
            f"log-probabilities moved by {float(moved):.3g} when only later tokens changed: "
            "the model reads tokens after the one it predicts"
        )
