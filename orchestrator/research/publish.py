"""What other hosts see of a run: its state, rows and decisions in Redis (and state.json).

`status`, `logs -f`, the report and the dashboard (orchestrator/view.py) read these. Best
effort: what other hosts see must never stop the loop; a failed publish is redone in full
at the next one. The terminal's progress bar is described here too: the same figures.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import redis
from rq.utils import as_text

from harness import bars
from orchestrator import defaults, noise
from orchestrator.research.policy import Policy
from orchestrator.results import summary
from worker import keys
from worker.settings import add_log_entry


class Publisher:
    def __init__(self, connection: redis.Redis, tag: str, folder: Path, policy: Policy, log: Any):
        self.redis, self.tag, self.folder, self.log = connection, tag, folder, log
        self.policy = policy
        self.published_at = 0.0  # monotonic
        self.resync = False  # Redis missed a row: copy them all again at the next publish

    def state(self, state: dict[str, str], rows: list[dict[str, str]]) -> None:
        """The run's state hash (also written to state.json in the run folder, for when
        Redis is gone) and its place in the index of runs; the noise floor from the rows."""
        sigma, dof = noise.pooled_sigma(rows)
        z, min_delta = self.policy.z, self.policy.min_delta
        state = {
            "sigma": f"{sigma:.6f}" if dof else "",
            "margin": f"{noise.margin(sigma, z, min_delta):.6f}",
            "z": str(z),
            "min_delta": str(min_delta),
            "host": socket.gethostname(),
            "pid": str(os.getpid()),  # `status` on this host tells a dead one from a live one
            **state,
        }
        try:
            if self.resync:
                self.sync(rows)
                self.resync = False
            self._state(state)
        except redis.RedisError as exc:
            self.resync = True
            self.log.warning("state.unpublished", error=str(exc))

    def _state(self, state: dict[str, str]) -> None:
        now = time.time()
        key = keys.run_state_key(self.tag)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(key, "started", f"{now:.3f}")  # run() sets it for each session
        pipe.hset(key, mapping={"updated": f"{now:.3f}", **state})
        pipe.zadd(keys.RUNS_KEY, {self.tag: now})
        pipe.hgetall(key)
        saved = pipe.execute()[-1]
        self.published_at = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (defaults.STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({as_text(k): as_text(v) for k, v in saved.items()}, indent=1))
        tmp.replace(self.folder / defaults.STATE_FILE)

    def row(self, row: dict[str, str]) -> bool:
        """The row for readers on other hosts, and the decision in the run's log stream and
        the experiment's (where `logs ID -f` ends). False when Redis missed it."""
        try:
            self._row(row)
        except redis.RedisError as exc:
            self.resync = True
            self.log.warning("row.unpublished", id=row["id"], error=str(exc))
            return False
        return True

    def _row(self, row: dict[str, str]) -> None:
        event = {
            "event": "decided",
            "status": row["status"],
            "val_bpb": row["val_bpb"],
            "description": row["description"],
            "error": row["error"],
        }
        fields = {
            "kind": "event",
            "phase": "decide",
            "text": json.dumps(event),
            "t": f"{time.time():.3f}",
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(keys.results_key(self.tag), json.dumps(row))
        add_log_entry(pipe, self.tag, row["id"], fields)
        pipe.expire(keys.log_stream_key(self.tag, row["id"]), keys.STREAM_TTL_S)
        pipe.execute()

    def forget(self) -> None:
        """Drop what Redis holds under this tag (state, rows, log streams): left by an
        earlier run whose branch is gone, it would be shown as this run's."""
        names = [keys.run_state_key(self.tag), keys.results_key(self.tag)]
        names += [keys.run_log_key(self.tag)]
        names += list(self.redis.scan_iter(match=keys.log_stream_key(self.tag, "*"), count=1000))
        self.redis.delete(*names)

    def sync(self, rows: list[dict[str, str]]) -> None:
        """Redis's copy of the rows matches results.tsv (a Redis that lost its data, or a
        run from before the copy existed, gets them again)."""
        key = keys.results_key(self.tag)
        if self.redis.llen(key) == len(rows):
            return
        pipe = self.redis.pipeline()
        pipe.delete(key)
        if rows:
            pipe.rpush(key, *(json.dumps(r) for r in rows))
        pipe.execute()


def describe_bar(bar: bars.Bar, rows: list[dict], best: float | None, in_flight: int) -> None:
    """The run's bar (a terminal only): best and gain, counts, jobs running and queued."""
    if bar.disable:
        return  # no terminal: nothing to draw, nothing to compute
    seen = summary(rows, {}, time.time())
    shown = "" if best is None else f"best {best:.4f}"
    if shown and seen["gain"] is not None:
        shown += f" ({seen['gain']:+.4f})"
    tally = seen["counts"]
    counts = " ".join(f"{k} {tally[k]}" for k in ("keep", "discard", "crash") if k in tally)
    bar.set_postfix_str(" | ".join(p for p in (shown, counts, f"{in_flight} in flight") if p))
