"""The compile cache's cost and worth: a real inductor cache, cold and warm, and the copy
a candidate gets (worker/compile_cache.py) for caches of several sizes.

1. A small transformer is compiled (torch.compile, inductor; forward and backward) in a
   fresh process with an empty cache folder, then in another fresh process with a copy of
   that folder, as a candidate gets the frontier's: seconds to the end of the first step,
   and the FX graph cache's hits. On a CPU inductor compiles C++; on a GPU triton kernels.
2. `CacheStore.give` (the copy into a scratch, before the train process starts) and
   `CacheStore.keep` (the move out of it, between the phases) for that cache and for
   synthetic ones of 100 and 500 MB in 64 KiB files. Target: the copy under 0.5 s.

    python bench/compile_cache.py [--device cpu|cuda] [--skip-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.compile_cache import CacheStore  # noqa: E402

FIRST_STEP = """
import json, time, torch
from torch._dynamo.utils import counters
t0 = time.time()
device = "{device}"
layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
model = torch.nn.Sequential(torch.nn.Embedding(4096, 256), layer, torch.nn.Linear(256, 4096))
model = model.to(device)
step = torch.compile(lambda x: model(x).float().logsumexp(-1).mean())
x = torch.randint(0, 4096, (8, 128), device=device)
step(x).backward()
if device == "cuda":
    torch.cuda.synchronize()
print(json.dumps({{"seconds": time.time() - t0, "hits": counters["inductor"]["fxgraph_cache_hit"],
                   "misses": counters["inductor"]["fxgraph_cache_miss"]}}))
"""


def first_step(folder: Path, device: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder)}
    env["TRITON_CACHE_DIR"] = str(folder / "triton")
    out = subprocess.run(
        [sys.executable, "-c", FIRST_STEP.format(device=device)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def size(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 2**20


def synthetic(folder: Path, mb: int) -> None:
    chunk = os.urandom(64 * 1024)
    for n in range(mb * 16):
        sub = folder / f"{n % 64:02x}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"k{n}.bin").write_bytes(chunk)


def copy_cost(store_root: Path, name: str, source: Path, rows: list) -> None:
    """keep (the move into the store) then give (a copy into a fresh scratch)."""
    store = CacheStore(store_root)
    files, mb = size(source)
    t0 = time.monotonic()
    why = store.keep(name, source)
    kept = time.monotonic() - t0
    assert not why, why
    given = store.give(name, name, store_root.parent / f"scratch-{name}" / "compile-cache")
    rows.append((name, files, f"{mb:.1f}", f"{given.seconds:.3f}", f"{kept:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-compile", action="store_true", help="only the copy's cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autoresearch-cache-bench-") as tmp:
        root = Path(tmp)
        sources = []
        if not args.skip_compile:
            cold = first_step(root / "real", args.device)
            files, mb = size(root / "real")
            CacheStore(root / "copy").keep("real", root / "real")
            CacheStore(root / "copy").give("real", "real", root / "warm")
            warm = first_step(root / "warm", args.device)
            print(
                f"\ntorch.compile, first step ({args.device}; cache {files} files, {mb:.1f} MB)\n"
            )
            print("| run | seconds | fxgraph hits | fxgraph misses |\n|---|---|---|---|")
            for label, r in (("cold", cold), ("warm (a copy)", warm)):
                print(f"| {label} | {r['seconds']:.2f} | {r['hits']} | {r['misses']} |")
            sources.append(("inductor", root / "warm"))
        for mb in (100, 500):
            synthetic(root / f"synthetic-{mb}", mb)
            sources.append((f"synthetic-{mb}MB", root / f"synthetic-{mb}"))
        rows: list = []
        for name, source in sources:
            copy_cost(root / "store", name, source, rows)
        print("\nThe copy a candidate gets (give) and the move out of its scratch (keep)\n")
        print("| cache | files | MB | give s | keep s |\n|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
