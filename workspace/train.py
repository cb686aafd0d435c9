"""Baseline GPT for autoresearch: the one file the researcher edits.

A modern GPT in the style of nanochat: rotary embeddings, QK-norm, RMSNorm, ReLU^2 MLP,
untied embedding / lm_head, zero-init output projections, logit soft-capping. Muon trains
the block matrices, AdamW the embedding and lm_head. Schedules follow ctx.progress().
The harness rebuilds the model in a fresh process and computes val_bpb from its logits.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from harness import Context

# --- Hyperparameters ---

# Model shape, gpu profile (vocab 8192, seq_len 2048, 5-minute budget on one H100)
DEPTH = 8  # number of transformer blocks
ASPECT_RATIO = 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head
DEVICE_BATCH_SIZE = 128  # rows per forward/backward (micro-step)
TOTAL_BATCH_SIZE = 524288  # tokens per optimizer step (2**19; grad accumulation fills the gap)

# Model shape, cpu profile (vocab 1024, seq_len 128, ~25 s budget on 2 cores)
CPU_DEPTH = 2  # number of transformer blocks
CPU_MODEL_DIM = 128  # residual stream width (rounded up to a multiple of CPU_HEAD_DIM)
CPU_HEAD_DIM = 32  # channels per attention head
CPU_DEVICE_BATCH_SIZE = 16  # rows per forward/backward (micro-step)
CPU_TOTAL_BATCH_SIZE = 2048  # tokens per optimizer step

# Architecture
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * model_dim
ROPE_BASE = 10000.0  # rotary embedding base frequency
SOFTCAP = 15.0  # logits = SOFTCAP * tanh(logits / SOFTCAP)

# Optimizer
MATRIX_LR = 0.04  # Muon lr for the 2-D weights of the blocks
EMBEDDING_LR = 0.6  # AdamW lr for the token embedding (times (dim/768)^-0.5)
UNEMBEDDING_LR = 0.004  # AdamW lr for the lm_head (times (dim/768)^-0.5)
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
MUON_MOMENTUM = 0.95  # Muon Nesterov momentum after its warmup
MUON_MOMENTUM_START = 0.85  # Muon momentum at the start of training
MUON_MOMENTUM_WARMUP = 0.3  # fraction of training over which momentum ramps up
NS_STEPS = 5  # Newton-Schulz iterations in Muon
WEIGHT_DECAY = 0.0  # decoupled weight decay on the Muon matrices (scaled by lr)

# Schedule (fractions of the training time left after the first, compiling step)
WARMUP_RATIO = 0.01  # linear lr warmup
WARMDOWN_RATIO = 0.5  # linear decay to FINAL_LR_FRAC over the last part of training
FINAL_LR_FRAC = 0.0  # lr multiplier at the very end


def shape(ctx: Context) -> dict:
    """The shape constants of the profile being run."""
    if ctx.profile == "cpu":
        dim = -(-CPU_MODEL_DIM // CPU_HEAD_DIM) * CPU_HEAD_DIM  # a multiple of the head size
        return dict(depth=CPU_DEPTH, dim=dim, head_dim=CPU_HEAD_DIM,
                    batch=CPU_DEVICE_BATCH_SIZE, total=CPU_TOTAL_BATCH_SIZE)  # fmt: skip
    dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return dict(depth=DEPTH, dim=dim, head_dim=HEAD_DIM,
                batch=DEVICE_BATCH_SIZE, total=TOTAL_BATCH_SIZE)  # fmt: skip


# --- Model ---


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):  # x: [B, T, H, D]
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp_fc = nn.Linear(dim, MLP_RATIO * dim, bias=False)
        self.mlp_proj = nn.Linear(MLP_RATIO * dim, dim, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp_proj(F.relu(self.mlp_fc(norm(x))).square())  # ReLU^2 MLP


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, depth, dim, head_dim):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, head_dim) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2).float() / head_dim)
        freqs = torch.outer(torch.arange(seq_len).float(), inv_freq)[None, :, None, :]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        dim = self.wte.embedding_dim
        bound = math.sqrt(3.0 / dim)  # uniform with std 1/sqrt(dim)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp_proj.weight)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)


def build_model(ctx: Context) -> nn.Module:
    s = shape(ctx)
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(ctx.vocab_size, ctx.seq_len, s["depth"], s["dim"], s["head_dim"])
    model.init_weights()
    model.to(ctx.device)
    # Forward + backward FLOPs per token: 6 per non-embedding weight + attention.
    n_params = sum(p.numel() for p in model.parameters())
    attn = 12 * s["depth"] * s["dim"] * ctx.seq_len
    model.flops_per_token = int(6 * (n_params - model.wte.weight.numel()) + attn)
    return model


# --- Optimizer: Muon for the block matrices ---


def newton_schulz(G, steps):
    """Approximately orthogonalise G (quintic Newton-Schulz, as in modded-nanogpt)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "buf" not in state:
                    state["buf"] = torch.zeros_like(p.grad)
                buf = state["buf"]
                buf.lerp_(p.grad, 1 - mom)
                g = p.grad.lerp(buf, mom)  # Nesterov
                update = newton_schulz(g, NS_STEPS).to(p.dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


# --- Training ---


def lr_multiplier(frac):
    if frac < WARMUP_RATIO:
        return (frac + 1e-3) / (WARMUP_RATIO + 1e-3)
    if frac < 1.0 - WARMDOWN_RATIO:
        return 1.0
    w = max(0.0, 1.0 - frac) / max(WARMDOWN_RATIO, 1e-9)
    return w + (1.0 - w) * FINAL_LR_FRAC


def train(model: nn.Module, ctx: Context) -> None:
    s = shape(ctx)
    cuda = ctx.device.type == "cuda"
    grad_accum = max(1, s["total"] // (s["batch"] * ctx.seq_len))
    log_every = 25 if cuda else 10

    dim_scale = (s["dim"] / 768) ** -0.5
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    adam = torch.optim.AdamW(
        [
            dict(params=[model.wte.weight], lr=EMBEDDING_LR * dim_scale),
            dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * dim_scale),
        ],
        betas=(ADAM_BETA1, ADAM_BETA2),
        eps=1e-10,
        weight_decay=0.0,
        fused=cuda,
    )
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizers = (adam, muon)
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.reshape(-1))

    # Compile a function around the model, so model.state_dict() keys stay clean.
    loss_fn = torch.compile(loss_fn) if cuda else loss_fn
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    model.train()
    step, micro, p0 = 0, 0, None
    for x, y in ctx.batches(s["batch"]):
        with autocast:
            loss = loss_fn(x, y)
        (loss / grad_accum).backward()
        micro += 1
        if micro % grad_accum:
            continue
        # Schedules run over the time left after the first (compiling) step.
        progress = ctx.progress()
        frac = 0.0 if p0 is None else (progress - p0) / max(1e-9, 1.0 - p0)
        lrm = lr_multiplier(frac)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        ramp = min(1.0, frac / MUON_MOMENTUM_WARMUP)
        for group in muon.param_groups:
            group["momentum"] = MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        if p0 is None:
            p0 = ctx.progress()
        step += 1
        if step % log_every == 0 or step == 1:
            ctx.log(step=step, loss=round(loss.item(), 4), lr_mult=round(lrm, 4), progress=round(progress, 4))  # fmt: skip
