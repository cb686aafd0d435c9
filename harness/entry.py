"""The entry point a runner starts for each phase: `python -m harness.entry {train,eval}`.

train: import the candidate, build_model, train() under the budget gate, save the weights.
eval:  a fresh process rebuilds the model, loads the weights and computes val_bpb itself,
       then prints the summary block and writes the phase results.
Each phase writes <scratch>/<phase>.json; the exit code (harness.codes) says how it ended.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

from harness import codes
from harness import manifest as mf

# Dense bf16 peak FLOP/s, for MFU. Unknown devices report no MFU rather than a guess.
PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "H800": 989.5e12, "A100": 312e12, "L40S": 362e12}
WEIGHTS = "model.pt"


def _load_candidate(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("train", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    for name in ("build_model", "train"):
        if not callable(getattr(module, name, None)):
            raise AttributeError(f"train.py defines no {name}()")
    return module


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(module: ModuleType, ctx):
    import torch

    model = module.build_model(ctx)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _write(scratch: Path, phase: str, payload: dict) -> None:
    tmp = scratch / f".{phase}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(scratch / f"{phase}.json")


def run_train(args: argparse.Namespace, manifest: dict) -> int:
    import torch

    from harness.context import Context

    device = _device()
    torch.manual_seed(args.seed)
    profile = manifest["profile"]
    data = Path(args.data)
    ctx = Context(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        seq_len=profile["seq_len"],
        device=device,
        profile=profile["name"],
        seed=args.seed,
        deadline=args.deadline,
        train_paths=[data / s["file"] for s in manifest["train"]],
        bos_id=manifest["tokenizer"]["bos_id"],
    )
    module = _load_candidate(Path(args.candidate))
    model = _build(module, ctx)
    params = sum(p.numel() for p in model.parameters())
    ctx.train_started = time.time()
    module.train(model, ctx)
    returned = time.time()
    stats = {
        "startup_s": ctx.train_started - args.started_at,
        "first_step_s": (ctx.second_batch_at or returned) - ctx.train_started,
        "training_s": returned - ctx.train_started,
        "tokens": ctx.tokens,
        "steps": ctx.steps,
        "params": params,
        "flops_per_token": getattr(model, "flops_per_token", None) or 6 * params,
        "stopped_by_deadline": ctx.stopped_by_deadline,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "peak_memory_mb": _peak_memory_mb(device),
    }
    late = returned - args.deadline
    if late > args.grace:
        stats["error"] = (
            f"train() returned {late:.1f}s after the deadline (grace {args.grace:.1f}s)"
        )
        _write(Path(args.scratch), "train", stats)
        print(f"harness: {stats['error']}", file=sys.stderr, flush=True)
        return codes.OVERTIME
    save_start = time.time()
    torch.save(model.state_dict(), Path(args.scratch) / WEIGHTS)
    stats["save_s"] = time.time() - save_start
    _write(Path(args.scratch), "train", stats)
    return codes.OK


def _mfu(train: dict) -> float | None:
    peak = next((v for k, v in PEAK_FLOPS.items() if k in train.get("device", "")), None)
    if not peak or not train.get("training_s"):
        return None
    return 100.0 * train["flops_per_token"] * train["tokens"] / train["training_s"] / peak


def summary_block(result: dict) -> str:
    """The greppable block of the original autoresearch: `grep '^val_bpb:' run.log`."""
    rows = [
        ("val_bpb", f"{result['val_bpb']:.6f}"),
        ("training_seconds", f"{result['training_s']:.1f}"),
        ("startup_seconds", f"{result['startup_s']:.1f}"),
        ("first_step_seconds", f"{result['first_step_s']:.1f}"),
        ("save_seconds", f"{result['save_s']:.1f}"),
        ("eval_seconds", f"{result['eval_s']:.1f}"),
        ("peak_vram_mb", f"{result['peak_memory_mb']:.1f}"),
        ("mfu_percent", "n/a" if result["mfu"] is None else f"{result['mfu']:.2f}"),
        ("total_tokens_M", f"{result['tokens'] / 1e6:.1f}"),
        ("num_steps", str(result["steps"])),
        ("num_params_M", f"{result['params'] / 1e6:.1f}"),
    ]
    return "---\n" + "\n".join(f"{k + ':':<20}{v}" for k, v in rows)


def run_eval(args: argparse.Namespace, manifest: dict) -> int:
    import numpy as np
    import torch

    from harness.context import Context
    from harness.evaluate import evaluate_bpb, validation_rows

    started = args.started_at
    device = _device()
    torch.manual_seed(args.seed)
    scratch, data = Path(args.scratch), Path(args.data)
    train_stats = json.loads((scratch / "train.json").read_text())
    profile = manifest["profile"]
    vocab = manifest["tokenizer"]["vocab_size"]
    ctx = Context(
        vocab_size=vocab,
        seq_len=profile["seq_len"],
        device=device,
        profile=profile["name"],
        seed=args.seed,
        deadline=time.time(),
    )
    module = _load_candidate(Path(args.candidate))
    model = _build(module, ctx)
    state = torch.load(scratch / WEIGHTS, map_location=device, weights_only=True)
    model.load_state_dict(state)
    rows = validation_rows(
        data / manifest["val"]["file"], manifest["tokenizer"]["bos_id"], profile["seq_len"]
    )
    token_bytes = np.load(data / manifest["tokenizer"]["token_bytes"])
    scores = evaluate_bpb(
        model,
        rows,
        token_bytes,
        vocab_size=vocab,
        batch_size=profile["eval_batch_size"],
        device=device,
    )
    result = {**train_stats, **scores, "eval_s": time.time() - started}
    result["mfu"] = _mfu(train_stats)
    result["peak_memory_mb"] = max(train_stats["peak_memory_mb"], _peak_memory_mb(device))
    _write(scratch, "eval", result)
    print(summary_block(result), flush=True)
    return codes.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.entry", description=__doc__)
    parser.add_argument("phase", choices=["train", "eval"])
    parser.add_argument("--candidate", required=True, help="the candidate train.py")
    parser.add_argument("--data", required=True, help="the prepared data folder (manifest.json)")
    parser.add_argument(
        "--scratch", required=True, help="read-write folder for weights and results"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--started-at", type=float, default=None, help="the phase's start (epoch s)"
    )
    parser.add_argument("--deadline", type=float, default=None, help="training deadline (epoch s)")
    parser.add_argument("--grace", type=float, default=0.0, help="late return allowed (s)")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="import torch, then wait for a 'go' line on stdin before starting the phase",
    )
    args = parser.parse_args(argv)
    if args.phase == "train" and args.deadline is None:
        parser.error("train needs --deadline")
    if args.wait and not _wait_for_go():
        return codes.USAGE
    args.started_at = args.started_at or time.time()
    try:
        manifest = mf.load_manifest(Path(args.data))
    except FileNotFoundError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return codes.USAGE
    try:
        return (run_train if args.phase == "train" else run_eval)(args, manifest)
    except BaseException as exc:  # noqa: BLE001 - a failing candidate is data, not an exception
        return _classify(exc)


def _wait_for_go() -> bool:
    """Pay the imports before the phase is due, then wait for the runner's go.

    A runner starts the eval process while training runs, so the second torch import of
    an experiment (over a second on a small CPU) is off its critical path.
    """
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import harness.context  # noqa: F401
    import harness.evaluate  # noqa: F401

    return sys.stdin.readline().strip() == "go"


def _classify(exc: BaseException) -> int:
    import torch

    from harness.evaluate import NonFiniteLogits

    traceback.print_exc()
    sys.stderr.flush()
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return codes.OOM
    if isinstance(exc, NonFiniteLogits):
        return codes.NAN
    if isinstance(exc, SystemExit):
        print(f"harness: train.py called sys.exit({exc.code})", file=sys.stderr, flush=True)
    return codes.CRASH


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown (torch's takes up to a second): every result is
    # already written and closed, and the runner reaps whatever the candidate started.
    os._exit(code)
