#!/usr/bin/env bash
# The GPU check: what no CPU test can show, on a machine with one NVIDIA GPU and no network,
# in under 8 minutes. Exits non-zero on any failure.
#
#   bash bench/gpu_check.sh            # PYTHON=.venv/bin/python, GPU_CHECK_WALL=60 (s)
#
# 1. the GPU, its driver and the torch build;
# 2. torch.compile of a small function on the device (Triton builds its launcher with the
#    host's C compiler: this fails where there is none);
# 3. a gpu-profile data folder prepared from the standard library's source (offline);
# 4. the baseline train.py through the process runner and its cage with a short wall:
#    status, val_bpb, tokens per second, MFU, the time split, peak memory, the cage, the
#    causality probe's largest move (bf16 on the GPU) and the model server's line (CUDA IPC);
#    then a candidate that turns on expandable segments at import (the logits still reach
#    the scorer through the harness's own buffer);
# 4b. the baseline again with a copy of the first run's compile cache (worker/compile_cache.py):
#    cold and warm side by side, first step, start-up, the copy, and the share of the wall
#    spent in training steps;
# 5. the same through the docker runner, where an engine and the runner image are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WALL=${GPU_CHECK_WALL:-60}
OUT=${GPU_CHECK_OUT:-/tmp/autoresearch-gpu-check}
mkdir -p "$OUT"

echo "== 1. device"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 2. torch.compile on the device"
"$PY" - <<'PYEOF'
import time, torch
f = torch.compile(lambda x: (x.sin() * 2 + 1).sum())
x = torch.arange(1024, device="cuda", dtype=torch.float32)
t = time.time(); got = f(x).item(); first = time.time() - t
t = time.time(); f(x).item(); again = time.time() - t
want = (x.sin() * 2 + 1).sum().item()
assert abs(got - want) < 1e-2 * abs(want), (got, want)
print(f"compiled: first call {first:.2f} s, second {again * 1000:.2f} ms")
PYEOF

echo "== 3+4. prepare and the baseline through the process runner (wall ${WALL} s)"
STDLIB=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
"$PY" bench/gpu_baseline.py --local-dir "$STDLIB" --data-dir "$OUT/data" --out "$OUT/process" \
    --max-train-tokens 20000000 --tokenizer-chars 5000000 --val-tokens 1000000 \
    --train-wall "$WALL" --cache "$OUT/cache" | tee "$OUT/process.txt"
"$PY" - "$OUT/process/result.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ("status", "val_bpb", "tokens_per_s", "mfu", "startup_s", "first_step_s", "training_s",
        "save_s", "eval_s", "train_phase_s", "eval_phase_s", "peak_memory_mb", "cage", "causal_move",
        "steps_share", "cache_mb")
print("\n".join(f"{k:>16}: {r.get(k)}" for k in keys))
PYEOF

echo "== 4b. the baseline again, warm: a copy of the first run's compile cache"
"$PY" bench/gpu_baseline.py --local-dir "$STDLIB" --data-dir "$OUT/data" --out "$OUT/warm" \
    --max-train-tokens 20000000 --tokenizer-chars 5000000 --val-tokens 1000000 \
    --train-wall "$WALL" --cache "$OUT/cache" | tail -3
"$PY" - "$OUT/process/result.json" "$OUT/warm/result.json" <<'PYEOF'
import json, sys
cold, warm = (json.load(open(p)) for p in sys.argv[1:3])
keys = ("status", "val_bpb", "tokens", "mfu", "startup_s", "first_step_s", "training_s", "eval_s",
        "prestart_s", "cache_s", "cache_mb", "steps_share")
print(f"{'':>14}  {'cold':>12}  {'warm':>12}")
for k in keys:
    print(f"{k:>14}  {str(cold.get(k))[:12]:>12}  {str(warm.get(k))[:12]:>12}")
sys.exit(warm["status"] != "ok" or not warm.get("cache_mb"))
PYEOF
grep -h "model server\|cage:" "$OUT/process/output.log" | head -5
sed '/^from __future__/a import torch; torch.cuda.memory._set_allocator_settings("expandable_segments:True")' \
    workspace/train.py > "$OUT/expandable_train.py"
"$PY" bench/gpu_baseline.py --local-dir "$STDLIB" --data-dir "$OUT/data" --out "$OUT/expandable" \
    --max-train-tokens 20000000 --tokenizer-chars 5000000 --val-tokens 1000000 \
    --train-wall 20 --candidate "$OUT/expandable_train.py" | tail -3 || true
"$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print('expandable segments:', r['status'], r.get('val_bpb')); sys.exit(r['status'] != 'ok')" "$OUT/expandable/result.json"

echo "== 5. the docker runner"
IMAGE=${AUTORESEARCH_RUNNER_IMAGE:-autoresearch-runner:latest}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    "$PY" -m orchestrator.cli evaluate workspace/train.py --profile gpu --runner docker --gpu 0 \
        --data-dir "$OUT/data" --train-wall "$WALL" --json | tee "$OUT/docker.json"
else
    echo "no docker engine or no image $IMAGE: skipped"
fi
echo "== gpu check passed"
