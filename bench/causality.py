"""How far honest models' log-probabilities move under the causality probe (a benchmark).

The scorer's probe (harness/evaluate.py) replaces every token from a secret split point on
and requires the log-probabilities before it not to move by more than CAUSALITY_TOL. This
measures the move for honest models, so the tolerance rests on figures: the baseline
train.py (trained for a few seconds) and a small bigram model, eager and torch.compile'd,
in float32 and bfloat16, with the scorer's own probe plan. It also prints the detection
probability of a model that reads the next token at 1% of positions.

    python bench/causality.py [--data-dir DIR] [--train-s 8] [--no-compile]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness import evaluate as ev  # noqa: E402
from harness.context import Context  # noqa: E402
from harness.manifest import load_manifest  # noqa: E402
from worker.settings import default_data_root  # noqa: E402


class Bigram(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 64)
        self.out = torch.nn.Linear(64, vocab)

    def forward(self, x):
        return self.out(self.emb(x))


def baseline(ctx: Context, train_s: float) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("train", ROOT / "workspace" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(ctx)
    ctx.deadline = time.time() + train_s
    ctx.train_started = time.time()
    module.train(model, ctx)
    return model


def forward_of(model: torch.nn.Module, dtype: torch.dtype, compiled: bool):
    model = model.to(dtype).eval()
    call = torch.compile(model) if compiled else model
    return lambda x: call(x).float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_root() / "cpu")
    parser.add_argument("--train-s", type=float, default=8.0)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    manifest = load_manifest(args.data_dir)
    profile, tok = manifest["profile"], manifest["tokenizer"]
    rows = ev.validation_rows(
        args.data_dir / manifest["val"]["file"], tok["bos_id"], profile["seq_len"]
    )
    token_bytes = np.load(args.data_dir / tok["token_bytes"])
    ctx = Context(
        vocab_size=tok["vocab_size"],
        seq_len=profile["seq_len"],
        device=torch.device("cpu"),
        profile=profile["name"],
        seed=0,
        deadline=time.time(),
        train_paths=[args.data_dir / s["file"] for s in manifest["train"]],
        bos_id=tok["bos_id"],
    )
    models = {"baseline train.py": baseline(ctx, args.train_s), "bigram": Bigram(tok["vocab_size"])}
    batch = profile["eval_batch_size"]
    print(
        f"{len(rows)} validation rows, {ev.PROBE_ROWS} row probes, seq_len {profile['seq_len']}\n"
    )
    print("| model | mode | dtype | val_bpb | largest move (nats) |\n|---|---|---|---|---|")
    largest = 0.0
    for name, model in models.items():
        for compiled in (False, True)[: 1 if args.no_compile else 2]:
            for dtype in (torch.float32, torch.bfloat16):
                plan = ev.probe_plan(len(rows), batch, profile["seq_len"])
                out = ev.evaluate_bpb(
                    forward_of(model, dtype, compiled),
                    rows,
                    token_bytes,
                    vocab_size=tok["vocab_size"],
                    batch_size=batch,
                    device=torch.device("cpu"),
                    probe=plan,
                )
                largest = max(largest, out["causal_move"])
                mode = "compiled" if compiled else "eager"
                dt = str(dtype).removeprefix("torch.")
                print(
                    f"| {name} | {mode} | {dt} | {out['val_bpb']:.4f} | {out['causal_move']:.3g} |"
                )
    print(f"\nlargest honest move {largest:.3g} nats; tolerance {ev.CAUSALITY_TOL:g} nats")
    for n, where in (
        (min(ev.PROBE_ROWS, ev.PROBE_PASSES * len(rows)), "this set"),
        (ev.PROBE_ROWS, "a large set"),
    ):
        for f in (0.01, 0.05):
            p = 1 - (1 - f) ** n
            print(
                f"reads the next token at {f:.0%} of positions, {where} ({n} probes): caught with p = {p:.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
