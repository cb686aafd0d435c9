"""The entry point a runner starts for each phase: `python -m harness.entry {train,eval}`.

train: import the candidate, build_model, train() under the budget gate, save the weights.
eval:  a fresh process rebuilds the model, loads the weights and computes val_bpb itself
       (and, with --test, test_bpb on the held-out test split, the same way), then prints
       the summary block and writes the phase results.
Each phase writes <scratch>/<phase>.json; the exit code (harness.codes) says how it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

from harness import candidate, codes, hardware, served
from harness import manifest as mf

# Dense bf16 peak FLOP/s, for MFU. Unknown devices report no MFU rather than a guess.
PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "H800": 989.5e12, "A100": 312e12, "L40S": 362e12}
WEIGHTS = "model.pt"


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write(scratch: Path, phase: str, payload: dict) -> None:
    tmp = scratch / f".{phase}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(scratch / f"{phase}.json")


def _before_candidate() -> tuple:
    """The train phase's start that is not the candidate's: torch and the harness imported,
    the device initialised (on CUDA its context made) and what it trains on read (its
    threads included). A waiting phase does it before its ready line, outside the wall.
    torch._dynamo too: every torch.optim optimizer imports it when it is made (about 2 s
    on a small CPU), and torch.compile needs it; it is nobody's idea, so nobody's wall."""
    import torch
    import torch._dynamo  # noqa: F401

    import harness.context  # noqa: F401

    device = _device()
    if device.type == "cuda":
        torch.cuda.init()
    torch.zeros(1, device=device)  # the device's first allocation
    return device, hardware.signature(device)


def run_train(args: argparse.Namespace, manifest: dict, warm: tuple | None = None) -> int:
    import torch

    from harness.context import Context

    # Before the candidate's code is loaded; before the go when the phase waited for it.
    device, signature = warm or _before_candidate()
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
    module = candidate.load(Path(args.candidate))
    model = candidate.build(module, ctx)
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
        "hardware": signature,
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
        *([("test_bpb", f"{result['test_bpb']:.6f}")] if "test_bpb" in result else []),
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


def run_eval(args: argparse.Namespace, manifest: dict, server: served.ModelServer) -> int:
    import numpy as np

    from harness.evaluate import score_split

    started = args.started_at
    device = _device()
    scratch, data = Path(args.scratch), Path(args.data)
    train_stats = json.loads((scratch / "train.json").read_text())
    profile = manifest["profile"]
    vocab = manifest["tokenizer"]["vocab_size"]
    server.vocab = vocab
    if device.type == "cuda":
        # Before the candidate's code is loaded; every batch has the same shape (padded).
        server.check_cuda_sharing(device, profile["eval_batch_size"] * profile["seq_len"] * vocab)
    server.load(
        {
            "candidate": str(Path(args.candidate).resolve()),
            "weights": str((scratch / WEIGHTS).resolve()),
            "device": str(device),
            "vocab_size": vocab,
            "seq_len": profile["seq_len"],
            "profile": profile["name"],
            "seed": args.seed,
        }
    )
    token_bytes = np.load(data / manifest["tokenizer"]["token_bytes"])
    how = {
        "bos_id": manifest["tokenizer"]["bos_id"],
        "seq_len": profile["seq_len"],
        "vocab_size": vocab,
        "batch_size": profile["eval_batch_size"],
        "device": device,
    }
    scores = score_split(server.forward, data / manifest["val"]["file"], token_bytes, **how)
    if args.test:  # only when the spec asks (test_split): the runner exposes test/ then
        path = data / mf.test_split(manifest)["file"]
        test = score_split(server.forward, path, token_bytes, **how)
        scores |= {k.replace("val_", "test_"): v for k, v in test.items() if k != "causal_move"}
        scores["causal_move"] = max(scores["causal_move"], test["causal_move"])
    result = {**train_stats, **scores, "eval_s": time.time() - started}
    result["mfu"] = _mfu(train_stats)
    # The data it read (the worker checks the files and stamps the harness digest itself).
    result["fingerprint"] = manifest["fingerprint"]
    result["peak_memory_mb"] = max(train_stats["peak_memory_mb"], _peak_memory_mb(device))
    _write(scratch, "eval", result)
    print(summary_block(result), flush=True)
    print(sign_result(result, args.result_key), flush=True)
    return codes.OK


def sign_result(result: dict, key: str) -> str:
    """The scorer's line the runner trusts: the result and an HMAC under a key that only
    the runner and this process hold (the model server never sees it)."""
    body = json.dumps(result, sort_keys=True, default=str)
    return f"{codes.RESULT_PREFIX}{body} {codes.result_mac(key, body)}"


def _not_dumpable() -> None:
    """Linux: no process of the same user may ptrace this one or read its memory or
    environment through /proc, so the model server cannot take the scorer's key."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


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
    parser.add_argument("--test", action="store_true", help="eval: also score the test split")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="import torch, then wait for a 'go' line on stdin before starting the phase",
    )
    args = parser.parse_args(argv)
    if args.phase == "train" and args.deadline is None and not args.wait:
        parser.error("train needs --deadline or --wait")
    key = ""
    server = None
    if args.phase == "eval":
        _not_dumpable()
        server = served.ModelServer()  # its imports overlap our wait for the go
    warm = None
    try:
        if args.wait:
            warm = _before_candidate() if args.phase == "train" else None
            go = _wait_for_go(ready=args.phase == "train")
            if go is None:
                return codes.USAGE
            key = go
        if args.phase == "train" and args.wait:
            # The train phase's go carries its start and deadline, set when it was sent,
            # then its seed and grace: the process may have started before its job was known.
            try:
                started, deadline, seed, grace = key.split()
                args.started_at, args.deadline = float(started), float(deadline)
                args.seed, args.grace = int(seed), float(grace)
            except ValueError:
                why = "the train phase's go needs its start, deadline, seed and grace"
                print(f"harness: {why}", file=sys.stderr)
                return codes.USAGE
            key = ""
        if args.phase == "eval" and not key:
            print("harness: the eval phase needs --wait and a key on its go line", file=sys.stderr)
            return codes.USAGE
        args.result_key = key
        args.started_at = args.started_at or time.time()
        try:
            manifest = mf.load_manifest(Path(args.data))
            if args.test:
                mf.test_split(manifest, args.data)
        except (FileNotFoundError, mf.NoTestSplit) as exc:
            print(f"harness: {exc}", file=sys.stderr)
            return codes.USAGE
        try:
            if args.phase == "train":
                return run_train(args, manifest, warm)
            return run_eval(args, manifest, server)
        except BaseException as exc:  # noqa: BLE001 - a failing candidate is data
            return _classify(exc)
    finally:
        if server is not None:
            server.close()


def _wait_for_go(ready: bool = False) -> str | None:
    """Pay the imports before the phase is due, then wait for the runner's go.

    A runner starts the eval process while training runs, so the second torch import of
    an experiment (over a second on a small CPU) is off its critical path; it starts the
    train process before it hands the candidate over, and that one says when it is `ready`
    (codes.READY_LINE): the candidate's wall starts at the go. The go line carries the eval
    phase's result key, "go <key>", or the train phase's start and deadline (epoch s), seed
    and grace (s), "go <started> <deadline> <seed> <grace>". The rest of the line, or None
    for anything else.
    """
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import harness.context  # noqa: F401
    import harness.evaluate  # noqa: F401

    if ready:
        print(codes.READY_LINE, flush=True)
    word, _, rest = sys.stdin.readline().strip().partition(" ")
    return rest if word == "go" else None


def _classify(exc: BaseException) -> int:
    import torch

    from harness.evaluate import NonFiniteLogits

    traceback.print_exc()
    sys.stderr.flush()
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return codes.OOM
    if isinstance(exc, served.HostFailure):
        print(f"harness: {exc}", file=sys.stderr, flush=True)
        return codes.INFRA
    if isinstance(exc, served.ServedError):
        print(f"harness: model server: {exc}", file=sys.stderr, flush=True)
        return codes.OOM if exc.kind == "oom" else codes.CRASH
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
