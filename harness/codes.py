"""Exit codes the harness entry point uses, so a runner can classify without parsing text.

Torch-free: the worker imports it.
"""

import hashlib
import hmac

OK = 0
CRASH = 1  # an exception in the candidate or a failed check (the traceback is in the log)
USAGE = 2  # the entry point was called wrongly: an infrastructure fault, not the candidate's
OOM = 3  # CUDA out of memory or MemoryError
NAN = 4  # non-finite logits or a non-finite val_bpb
OVERTIME = 5  # train() returned after the deadline plus the grace
INFRA = 6  # the host failed before the candidate ran (e.g. CUDA IPC): not the candidate's

STATUS_BY_CODE = {OK: "ok", CRASH: "crash", OOM: "oom", NAN: "nan", OVERTIME: "overtime"}

# Lines starting with this prefix carry live metrics from ctx.log() as one JSON object.
METRICS_PREFIX = "@metrics "
# The harness's own progress line (step, tokens/s, elapsed, time left, the candidate's last
# logged loss) comes this often during training, whatever train.py logs: `status`, `logs -f`
# and the dashboard show it. Informational only: it runs in the candidate's process.
PROGRESS_EVERY_S = 1.0

# Lines of the candidate's code that could pass for the harness's are marked with this.
CANDIDATE_MARK = "[train.py] "
# A waiting train phase prints this line once, before the candidate's code is handed over:
# interpreter, torch, harness and device are up. The runner reads only the first, before it
# sends the go (which starts the wall); any later one is the candidate's, and marked.
READY_LINE = "@ready"
# The eval phase's scores, signed: "@result <json> <hmac-sha256 hex>"; only a line whose
# HMAC checks under the runner's per-experiment key (sent on the eval's go line) counts.
RESULT_PREFIX = "@result "


def result_mac(key: str, body: str) -> str:
    """The signature of a result line's body: the scorer makes it, the runner checks it."""
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
