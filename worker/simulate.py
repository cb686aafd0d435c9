"""A runner that stands in for training: it holds the worker for the budget, no compute.

For benchmarks and dry runs of the scheduler (`--runner simulate`): every other part, RQ,
the worker, the orchestrator, git and results.tsv, is the real one. The score is made up,
from the candidate's text, so the same source always scores the same before the noise:

- `SIM_VAL_BPB = 0.95` in the source sets its true score (default: 1.0 plus a fixed
  offset in [-0.012, +0.008] drawn from the source's hash, so most changes lose), and
  each `SIM_DELTA_<name> = -0.01` line adds to it (changes that merge, for tests);
- `SIM_NOISE = 0.002` sets the standard deviation of the per-seed noise (default 0.002);
- `SIM_HOLD_S = 3` sets how long it holds the worker (default: the budget's train wall);
- a spec with test_split also gets a test_bpb: the true score plus TEST_OFFSET (0.01, the
  same for every source: the test split is another sample, not a better or worse one for
  any change) plus its own seeded noise (the same deviation as val_bpb's, drawn apart
  from it), so val_bpb and test_bpb of a run agree on the true gain and differ by noise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from harness import codes
from harness.manifest import harness_digest
from worker.runner import Emit, PhaseOutcome, Runner

DEFAULT_NOISE = 0.002
TEST_OFFSET = 0.01  # test_bpb's fixed, source-independent distance from the true score
SIM_TOKENS_PER_S = 100_000  # what the progress lines say; nothing is trained
# The worker's hardware signature (default "simulated"): two simulated workers with
# different ones stand in for two kinds of machine (a run pinned to one).
ENV_SIM_HARDWARE = "AUTORESEARCH_SIM_HARDWARE"


def _constant(source: str, name: str) -> float | None:
    match = re.search(rf"^{name}\s*=\s*([0-9.eE+-]+)", source, re.MULTILINE)
    return float(match.group(1)) if match else None


def true_score(source: str) -> float:
    """The score a candidate would get without noise."""
    value = _constant(source, "SIM_VAL_BPB")
    if value is None:
        digest = int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big")
        value = 1.0 + 0.02 * (digest / 2**64 - 0.6)
    deltas = re.findall(r"^SIM_DELTA_\w+\s*=\s*([0-9.eE+-]+)", source, re.MULTILINE)
    return value + sum(float(d) for d in deltas)


def score(source: str, seed: int, split: str = "val") -> float:
    """The measured score: the true one plus seeded noise; the same source and seed always
    measure the same (tests rely on it). split "test": plus TEST_OFFSET and its own noise."""
    noise = _constant(source, "SIM_NOISE")
    prefix = "" if split == "val" else f"{split}:"
    rng = random.Random(f"{prefix}{seed}:{hashlib.sha256(source.encode()).hexdigest()}")
    offset = TEST_OFFSET if split == "test" else 0.0
    return true_score(source) + offset + rng.gauss(0.0, DEFAULT_NOISE if noise is None else noise)


class SimulatedRunner(Runner):
    name = "simulate"

    def run_phase(
        self, phase: str, argv: list[str], workdir: Path, wall_s: float, emit: Emit
    ) -> PhaseOutcome:
        raise NotImplementedError("the simulated runner has no phases")

    def hardware(self) -> str:
        return os.environ.get(ENV_SIM_HARDWARE) or "simulated"

    def run(self, spec: dict[str, Any], workdir: Path, emit: Emit) -> dict[str, Any]:
        source = spec["source"]
        hold = _constant(source, "SIM_HOLD_S")
        hold = spec["budget"]["train_wall_s"] if hold is None else hold
        started = time.time()
        emit("train", f"simulated training: holding the worker {hold:.2f}s")
        step, end = 0, started + hold
        # Progress lines like the harness's, so `status`, `logs -f` and the dashboard show
        # something moving in a dry run.
        while (now := time.time()) < end:
            time.sleep(min(codes.PROGRESS_EVERY_S, end - now))
            step += 1
            now = time.time()
            line = {
                "source": "harness",
                "step": step,
                "loss": round(4.0 / (1 + 0.1 * step), 4),
                "tok_per_s": SIM_TOKENS_PER_S,
                "elapsed_s": round(now - started, 1),
                "remaining_s": round(max(end - now, 0.0), 1),
                "progress": round(min((now - started) / max(hold, 1e-9), 1.0), 4),
            }
            emit("train", codes.METRICS_PREFIX + json.dumps(line))
        value = score(source, spec["seed"])
        emit("eval", f"val_bpb: {value:.6f}")
        test = score(source, spec["seed"], "test") if spec.get("test_split") else None
        if test is not None:
            emit("eval", f"test_bpb: {test:.6f}")
        return {
            "test_bpb": test,
            "status": "ok",
            "val_bpb": value,
            "training_s": hold,
            "total_s": time.time() - started,
            "log_tail": f"val_bpb: {value:.6f}",
            "harness_sha256": harness_digest(),
            "fingerprint": spec["fingerprint"],
            "cage": self.cage,
            "hardware": self.hardware(),
        }
