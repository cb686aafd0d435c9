"""val_bpb, computed by the harness from the candidate's logits.

val_bpb = sum of next-token cross-entropy (nats) over validation targets
          / (ln 2 * number of UTF-8 bytes those targets encode).
Targets that are special tokens (byte length 0) are excluded from both sums. The
log-softmax is taken here, in float32: the candidate only maps token ids to logits.
"""

from __future__ import annotations

import math
import secrets
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


# Largest change of a log-probability (nats) allowed at a position when only later tokens
# change. Set from bench/causality.py: honest models (eager and compiled, fp32 and bf16, the
# baseline and a small one) moved by at most CAUSALITY_MEASURED on this harness; the
# tolerance is that with a wide margin for other kernels. A model that reads the next token
# moves its log-probabilities by whole nats.
CAUSALITY_MEASURED = 0.0
CAUSALITY_TOL = 1e-3
# Row probes per evaluation: each is one row run again with its own secret split point.
# Whole batches are probed (one extra forward pass each); on a validation set with fewer
# rows, batches are probed again with new split points, up to PROBE_PASSES extra passes
# over the whole set (the cpu profile's 48 rows: 96 probes; the gpu profile: 512).
PROBE_ROWS = 512
PROBE_PASSES = 2


def probe_plan(
    n_rows: int, batch_size: int, seq_len: int, rows: int = PROBE_ROWS, passes: int = PROBE_PASSES
) -> dict[int, list[np.ndarray]]:
    """{first row of a batch: [split points of its rows, one array per probe pass]}, drawn
    from the operating system's randomness, so the candidate cannot know which batches are
    probed, how often, or where each row is split (s in [1, seq_len - 1]: the positions
    before s are compared).

    A model that reads the next token at a fraction f of positions is caught with
    probability 1 - (1 - f) ** probes, probes = min(rows, PROBE_PASSES * n_rows)
    (f = 1%: 99.4% with 512 probes, 62% with 96; f = 5%: 99.3% with 96).
    """
    rows = min(rows, passes * n_rows)
    rng = np.random.default_rng(secrets.randbits(128))
    plan: dict[int, list[np.ndarray]] = {}
    covered = 0
    while covered < rows:
        for b in rng.permutation(-(-n_rows // batch_size)):
            if covered >= rows:
                break
            lo, hi = int(b) * batch_size, min((int(b) + 1) * batch_size, n_rows)
            plan.setdefault(lo, []).append(rng.integers(1, seq_len, size=hi - lo))
            covered += hi - lo
    return plan


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
    probe: dict[int, list[np.ndarray]] | None = None,
) -> dict:
    """Score on the fixed rows; returns val_bpb, nats, bytes, scored tokens and the
    causality probe's largest move.

    `model_or_forward` is a module or forward(x_cpu) -> logits [B, T, V]. `probe` (from
    probe_plan) gives the probed batches and their rows' secret split points: each such
    batch runs again (once per pass) with every token from the split on replaced, and the
    log-probabilities before the split must not move (LooksAhead otherwise).
    """
    forward = (
        model_forward(model_or_forward, device)
        if isinstance(model_or_forward, torch.nn.Module)
        else model_or_forward
    )
    nbytes_table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    scored, moved = 0, 0.0
    seq_len = rows.shape[1] - 1
    for i in range(0, len(rows), batch_size):
        block = torch.from_numpy(rows[i : i + batch_size])
        x, y = block[:, :-1].contiguous(), block[:, 1:].to(device)
        logits = _padded(forward, x, batch_size, seq_len, vocab_size).to(device)
        logp = F.log_softmax(logits.float(), dim=-1)
        nats = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        nbytes = nbytes_table[y]
        counted = nbytes > 0
        if not torch.isfinite(nats[counted]).all():
            raise NonFiniteLogits("non-finite loss on validation targets")
        for splits in (probe or {}).get(i, []):
            splits = torch.from_numpy(splits)
            moved = max(moved, check_causal(forward, x, logp, splits, device, batch_size))
        total_nats += nats[counted].double().sum()
        total_bytes += nbytes.sum()
        scored += int(counted.sum())
    nats_sum, bytes_sum = float(total_nats), int(total_bytes)
    return {
        "val_bpb": nats_sum / (math.log(2) * bytes_sum),
        "val_nats": nats_sum,
        "val_bytes": bytes_sum,
        "val_tokens": scored,
        "causal_move": moved,
    }


def score_split(
    forward,
    path: Path,
    token_bytes: np.ndarray,
    *,
    bos_id: int,
    seq_len: int,
    vocab_size: int,
    batch_size: int,
    device: torch.device,
) -> dict:
    """evaluate_bpb over one split's file (validation, or the held-out test split: scored
    the same way, rows, bytes and causality probe alike); keys as evaluate_bpb's."""
    rows = validation_rows(path, bos_id, seq_len)
    return evaluate_bpb(
        forward,
        rows,
        token_bytes,
        vocab_size=vocab_size,
        batch_size=batch_size,
        device=device,
        probe=probe_plan(len(rows), batch_size, seq_len),
    )


def _padded(forward, x: torch.Tensor, batch_size: int, seq_len: int, vocab_size: int):
    """forward(x) checked, with a short last batch padded to batch_size by repeating its
    last row: every call has one shape and layout, so a compiled model neither recompiles
    inside the eval wall nor runs other kernels for the probe."""
    rows = x.shape[0]
    if rows < batch_size:
        x = torch.cat([x, x[-1:].expand(batch_size - rows, -1)]).contiguous()
    return check_logits(forward(x), x.shape[0], seq_len, vocab_size)[:rows]


def causal_move(forward, x, logp, splits: torch.Tensor, device, batch_size: int | None = None):
    """The largest change of a log-probability before each row's split (splits[b] >= 1)
    when every token from the split on is replaced by another one."""
    vocab = logp.shape[-1]
    pos = torch.arange(x.shape[1])
    after = pos[None, :] >= splits[:, None]
    shift = torch.randint(1, vocab, x.shape, generator=_generator())
    probe = torch.where(after, (x + shift) % vocab, x).contiguous()
    again = _padded(forward, probe, batch_size or len(x), x.shape[1], vocab).to(device)
    diff = (F.log_softmax(again.float(), dim=-1) - logp).abs().amax(dim=-1)
    return diff[~after.to(device)].max()


def check_causal(forward, x, logp, splits, device, batch_size: int | None = None) -> float:
    """causal_move within CAUSALITY_TOL, or LooksAhead; returns the move."""
    moved = causal_move(forward, x, logp, splits, device, batch_size)
    if not torch.isfinite(moved):
        raise NonFiniteLogits("non-finite logits on a validation batch")
    if not moved <= CAUSALITY_TOL:
        raise LooksAhead(
            f"log-probabilities moved by {float(moved):.3g} when only later tokens changed: "
            "the model reads tokens after the one it predicts"
        )
    return float(moved)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))
