"""The baseline train.py for one full budget on a GPU, through the real runner and harness.

Prepares a gpu-profile data folder from a local corpus (a folder of text or source files),
then runs workspace/train.py with the process runner under the gpu profile's 300 s wall and
prints the result: val_bpb, tokens/s, MFU and the time split. Needs no Redis and no network.

    python bench/gpu_baseline.py --local-dir DIR [--max-train-tokens N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import manifest as mf  # noqa: E402
from harness.prepare import prepare  # noqa: E402
from harness.profiles import Profile, get_profile  # noqa: E402
from worker import contract  # noqa: E402
from worker.compile_cache import CacheStore  # noqa: E402
from worker.process_runner import ProcessRunner  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--local-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/autoresearch-gpu-data"))
    parser.add_argument("--max-train-tokens", type=int, default=200_000_000)
    parser.add_argument("--tokenizer-chars", type=int, default=50_000_000)
    parser.add_argument("--val-tokens", type=int, default=None, help="default: the profile's")
    parser.add_argument("--gpu", type=int, default=0, help="-1: no GPU (a dry run of the script)")
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--train-wall", type=float, default=None)
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for result.json and output.log"
    )
    parser.add_argument(
        "--candidate", type=Path, default=ROOT / "workspace" / "train.py", help="the train.py"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="a compile cache store: the run gets a copy of its cache (cold the first time) "
        "and leaves its own there, as a repeat of a kept commit does",
    )
    return parser.parse_args()


def bench_profile(args: argparse.Namespace) -> Profile:
    """The named profile with this run's data sizes."""
    profile = dataclasses.replace(
        get_profile(args.profile),
        max_train_tokens=args.max_train_tokens,
        tokenizer_chars=args.tokenizer_chars,
    )
    if args.val_tokens:
        profile = dataclasses.replace(profile, val_tokens=args.val_tokens)
    return profile


def prepared_data(args: argparse.Namespace, profile: Profile) -> dict:
    """The data folder's manifest, prepared now unless it already holds this profile."""
    t0 = time.time()
    try:  # the same profile prepared before (a second candidate on the same data): reuse it
        manifest = mf.load_manifest(args.data_dir)
        if manifest.get("profile") != profile.to_dict():
            raise FileNotFoundError
    except FileNotFoundError:
        manifest = prepare(
            args.data_dir,
            profile,
            source="local",
            local_dir=args.local_dir,
            emit=lambda event, **kw: print(f"[{time.time() - t0:6.1f}s] {event} {kw}", flush=True),
        )
    print(
        f"prepared in {time.time() - t0:.1f}s: {train_tokens(manifest) / 1e6:.1f}M train tokens, "
        f"{manifest['val']['tokens'] / 1e6:.2f}M val tokens",
        flush=True,
    )
    return manifest


def train_tokens(manifest: dict) -> int:
    return sum(s["tokens"] for s in manifest["train"])


def baseline_spec(args: argparse.Namespace, profile: Profile, manifest: dict) -> dict:
    """The candidate under the profile's budget (its train wall overridden if asked)."""
    budget = {
        k: getattr(profile, k)
        for k in ("train_wall_s", "save_margin_s", "return_grace_s", "eval_wall_s")
    }
    if args.train_wall:
        budget["train_wall_s"] = args.train_wall
    return contract.make_spec(
        id="gpu-baseline",
        tag="bench",
        # A repeat of one commit: with --cache, its own cache (none the first time).
        parent="baseline" if args.cache else "",
        commit="baseline" if args.cache else "",
        source=args.candidate.read_text(),
        profile=args.profile,
        fingerprint=manifest["fingerprint"],
        budget=budget,
        seed=0,
        description="baseline",
    )


def run_spec(args: argparse.Namespace, spec: dict, out: Path) -> dict:
    """Run the spec with the process runner; every line to output.log, a sample to stdout."""
    with open(out / "output.log", "w") as log:

        def emit(phase: str, line: str) -> None:
            log.write(line + "\n")
            log.flush()
            if not line.startswith("@metrics") or '"step": 0' in line or "00," in line:
                print(f"{phase}: {line}", flush=True)

        runner = ProcessRunner(args.data_dir, gpu=None if args.gpu < 0 else args.gpu)
        runner.caches = CacheStore(args.cache) if args.cache else None
        return runner.run(spec, out / "work", emit)


def main() -> int:
    args = parse_args()
    profile = bench_profile(args)
    manifest = prepared_data(args, profile)
    spec = baseline_spec(args, profile, manifest)
    out = args.out or Path("/tmp/autoresearch-gpu-run")
    out.mkdir(parents=True, exist_ok=True)
    result = contract.make_result(spec, **run_spec(args, spec, out))
    available = train_tokens(manifest)
    result["train_tokens_available"] = available
    if result["tokens"] and result["training_s"]:
        result["tokens_per_s"] = result["tokens"] / result["training_s"]
        result["epochs"] = result["tokens"] / available
        # The share of the train wall spent in training steps (after the first step).
        steps = result["training_s"] - (result["first_step_s"] or 0.0)
        result["steps_share"] = steps / spec["budget"]["train_wall_s"]
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=2))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
