"""Context: what a candidate's train.py gets from the harness, and the budget gate.

The gate is `batches()`: it stops yielding at the training deadline, an absolute time the
runner chose when it handed the candidate over (the phase's go, which starts its hard wall
too), so the runner's hard wall and the harness agree.
The harness counts what was yielded (tokens, steps) itself; the candidate's own numbers are
never read.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from harness.codes import METRICS_PREFIX, PROGRESS_EVERY_S
from harness.data import TokenShards
from harness.data import batches as row_batches


class Context:
    """The harness side of the train.py contract."""

    def __init__(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        device: torch.device,
        profile: str,
        seed: int,
        deadline: float,
        train_paths: list[Path] | None = None,
        bos_id: int = 0,
    ):
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.device = device
        self.profile = profile
        self.seed = seed
        self.deadline = deadline
        self._train_paths = train_paths or []
        self._bos_id = bos_id
        self._shards: TokenShards | None = None
        self.train_started: float | None = None
        self.first_batch_at: float | None = None
        self.second_batch_at: float | None = None
        self.tokens = 0
        self.steps = 0
        self.stopped_by_deadline = False
        self.last_logged: dict[str, object] = {}  # the candidate's last ctx.log() fields
        self._progress_at: tuple[float, int] | None = None  # (time, tokens) of the last line

    def progress(self) -> float:
        """Fraction of the training budget used, 0 at the call of train(), 1 at the deadline."""
        start = self.train_started or time.time()
        span = max(self.deadline - start, 1e-9)
        return min(max((time.time() - start) / span, 0.0), 1.0)

    def log(self, **metrics: object) -> None:
        """Publish live progress; the worker forwards these lines to the run's log stream."""
        clean = {}
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            clean[str(key)] = value
        clean["progress"] = round(self.progress(), 4)
        clean["remaining_s"] = round(max(self.deadline - time.time(), 0.0), 1)
        self.last_logged = clean
        print(METRICS_PREFIX + json.dumps(clean, default=str), flush=True)

    def _heartbeat(self, now: float) -> None:
        """The harness's progress line, every PROGRESS_EVERY_S: its own counts (batches,
        tokens, tokens/s since the last line, elapsed, time left) and the step and loss the
        candidate last logged, if it logged any."""
        if self._progress_at is None:
            self._progress_at = (now, self.tokens)
            return
        then, tokens = self._progress_at
        if now - then < PROGRESS_EVERY_S:
            return
        self._progress_at = (now, self.tokens)
        start = self.train_started or now
        line: dict[str, object] = {
            "source": "harness",
            "batches": self.steps,
            "tokens": self.tokens,
            "tok_per_s": round((self.tokens - tokens) / max(now - then, 1e-9)),
            "elapsed_s": round(now - start, 1),
            "remaining_s": round(max(self.deadline - now, 0.0), 1),
            "progress": round(self.progress(), 4),
        }
        for key in ("step", "loss"):
            if key in self.last_logged:
                line[key] = self.last_logged[key]
        print(METRICS_PREFIX + json.dumps(line, default=str), flush=True)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) LongTensors [batch_size, seq_len] on the device until the deadline passes."""
        if not self._train_paths:
            raise RuntimeError("no training data in this phase")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if self._shards is None:
            self._shards = TokenShards(self._train_paths, self._bos_id)
        rows = self._shards.rows(self.seq_len + 1, shuffle=True, seed=self.seed)
        pin = self.device.type == "cuda"
        for x, y in row_batches(rows, batch_size):
            now = time.time()
            if now >= self.deadline:
                self.stopped_by_deadline = True
                return
            if self.first_batch_at is None:
                self.first_batch_at = now
            elif self.second_batch_at is None:
                self.second_batch_at = now
            self._heartbeat(now)
            xt, yt = (
                torch.from_numpy(np.ascontiguousarray(x)),
                torch.from_numpy(np.ascontiguousarray(y)),
            )
            if pin:
                xt, yt = xt.pin_memory(), yt.pin_memory()
            self.tokens += x.size
            self.steps += 1
            yield xt.to(self.device, non_blocking=True), yt.to(self.device, non_blocking=True)
        print("harness: training data exhausted before the deadline", file=sys.stderr, flush=True)
