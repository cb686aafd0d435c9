"""What the worker's check from outside the cage costs per job (a benchmark, not a test).

Before and after each eval phase the runner checks its seal of the harness files and the
data the scorer reads against the manifest (worker/runner.py `Runner.vouch`). This times
that check on a prepared data folder, and the hash alone on a validation shard the size of
the gpu profile's (20 Mi tokens, 40 MiB), and prints each as a share of an eval phase.

    python bench/integrity.py [--data-dir DIR] [--rounds 50] [--eval-s 0.84]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import manifest as mf  # noqa: E402
from worker.process_runner import ProcessRunner  # noqa: E402
from worker.settings import default_data_root  # noqa: E402


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_root() / "cpu")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--eval-s", type=float, default=0.84, help="the cpu eval phase (bench/overhead.py)"
    )
    parser.add_argument("--gpu-eval-s", type=float, default=30.0, help="a gpu eval phase")
    args = parser.parse_args()
    runner = ProcessRunner(args.data_dir)
    vouch = timed(runner.vouch, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "val.bin"
        big.write_bytes(os.urandom(40 * 2**20))
        gpu_hash = timed(lambda: mf.sha256_file(big), max(3, args.rounds // 10))
    print("| check | median ms | p90 ms | share of the eval phase |\n|---|---|---|---|")
    for name, ms, eval_s in (
        ("vouch (cpu data, harness seal), x2 per job", vouch, args.eval_s),
        ("sha256 of a 40 MiB gpu validation shard, x2 per job", gpu_hash, args.gpu_eval_s),
    ):
        med = statistics.median(ms)
        p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
        share = 2 * med / 1000 / eval_s
        print(f"| {name} | {med:.2f} | {p90:.2f} | {share:.2%} of {eval_s:g} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
