"""Every Redis key, key pattern and time-to-live autoresearch uses, in one place.

Like RQ's `worker_registration.py`: one module per key family's names, so a reader can see
all that a run leaves in Redis. RQ's own keys (`rq:job:*`, `rq:queue:*`, `rq:workers`) are
RQ's; these are ours, all under `autoresearch:`.

  autoresearch                        the shared RQ queue (RQ prefixes it: rq:queue:...)
  autoresearch.worker.<name>          one worker's queue, ahead of the shared one
  autoresearch:runs                   sorted set: every run's tag, by its last update
  autoresearch:<tag>:state            hash: a run's state (started, updated, status, margin...)
  autoresearch:<tag>:results          list: a run's results rows, JSON, in results.tsv's order
  autoresearch:<tag>:log              stream: a run's interleaved log (every id, decisions)
  autoresearch:<tag>:log:<id>         stream: one experiment's output lines and metrics
  autoresearch:<tag>:paused           string: set while a run is paused (who and when)
  autoresearch:<tag>:inbox            list: `autoresearch submit`'s train.py files and ideas
  autoresearch:gpu:<host>:<index>     string: which worker holds that GPU (expires)
  autoresearch:worker:<name>:hardware string: a live worker's hardware signature (expires)
"""

from __future__ import annotations

QUEUE_NAME = "autoresearch"
RUNS_KEY = "autoresearch:runs"

# A finished job's result, and a failed one's traceback, stay in RQ this long.
RESULT_TTL_S = 7 * 24 * 3600
# A log stream stays this long after its last line, and is capped at this many entries.
STREAM_TTL_S = 7 * 24 * 3600
STREAM_MAXLEN = 20_000
# A GPU claim expires this long after its last heartbeat (a dead worker frees its GPU).
GPU_CLAIM_TTL_S = 30.0
GPU_HEARTBEAT_S = 10.0
# A worker's hardware signature is set at its birth and at each of RQ's heartbeats (at least
# every 405 s while idle, every 30 s during a job), deleted at its death, and expires this
# long after the last (RQ's own worker key lives worker_ttl 420 s + 60).
WORKER_HARDWARE_TTL_S = 480


def worker_queue(worker_name: str) -> str:
    """The queue only one worker serves (before the shared one): where a confirmation run
    goes so that another worker than the candidate's repeats it."""
    return f"{QUEUE_NAME}.worker.{worker_name}"


def run_state_key(tag: str) -> str:
    return f"autoresearch:{tag}:state"


def results_key(tag: str) -> str:
    return f"autoresearch:{tag}:results"


def run_log_key(tag: str) -> str:
    return f"autoresearch:{tag}:log"


def log_stream_key(tag: str, exp_id: str) -> str:
    """One experiment's output lines and live metrics."""
    return f"{run_log_key(tag)}:{exp_id}"


def paused_key(tag: str) -> str:
    """Set by `autoresearch pause`: the run queues nothing new until `resume` deletes it."""
    return f"autoresearch:{tag}:paused"


def inbox_key(tag: str) -> str:
    """`autoresearch submit` pushes JSON here; the loop takes it within a second."""
    return f"autoresearch:{tag}:inbox"


def gpu_key(host: str, index: int) -> str:
    return f"autoresearch:gpu:{host}:{index}"


def worker_hardware_key(worker_name: str) -> str:
    """What the worker runs candidates on (harness/hardware.py), for `status` and the
    dashboard; the worker refuses jobs pinned to another signature."""
    return f"autoresearch:worker:{worker_name}:hardware"
