"""Constants of the research loop, in one place (as RQ's defaults.py)."""

TRAIN_PATH = "workspace/train.py"
BRANCH_PREFIX = "autoresearch/"
CANDIDATE_REF = "refs/autoresearch/{tag}/candidates/{id}"
RESULTS_FILE = "results.tsv"
ORCHESTRATOR_LOG = "orchestrator.jsonl"
# Where `autoresearch dashboard` listens by default.
DASHBOARD_PORT = 8765
# The URL of a run's embedded Redis, in its folder while the run lives.
REDIS_URL_FILE = "redis.url"
# The run's last published state (noise margin, frontier, ...), beside results.tsv.
STATE_FILE = "state.json"
# `autoresearch ablate`'s table, beside results.tsv (the report includes it).
ABLATION_FILE = "ablation.json"
# The embedded Redis's append-only file, in the run folder (a resumed run finds its jobs).
REDIS_DIR = "redis"
# How often the loop refreshes its state in Redis between decisions (status's "running").
STATE_EVERY_S = 5.0
LLM_MODEL = "gpt-4.1-mini"
LLM_TEMPERATURE = 0.7
LLM_TIMEOUT_S = 120.0
LLM_MAX_RETRIES = 4
LLM_FORMAT_RETRIES = 3
# The LLM's circuit breaker: failures of one kind in a row (after the client's own retries)
# that stop the run, and the wait after the first (tripled after each next: 10, 30, 90 s).
LLM_FAILURES = 4
LLM_BACKOFF_S = 10.0
MAX_CANDIDATE_BYTES = 64_000
# The smallest gain that counts, whatever the noise floor (val_bpb).
MIN_DELTA = 0.001
# Rows of results.tsv that `status` shows; lines of the last failure shown to the proposer.
RESULTS_TAIL_ROWS = 20
# The journal of every attempt in the proposer's prompt: at most this many tokens (estimated).
JOURNAL_TOKENS = 6000
# After this many experiments without a keep, the request asks for a larger or a different
# kind of change (0: never).
PLATEAU = 20
FAILURE_TAIL_LINES = 40
# RQ: seconds added to the two walls and the train phase's ready limit (worker/runner.py
# READY_S) for the job timeout (how long results live: worker/keys.py).
JOB_TIMEOUT_MARGIN_S = 120
# How often the loop polls a job it awaits.
POLL_INTERVAL_S = 0.1
# Infrastructure failures are retried this many times on a worker before being recorded.
INFRA_RETRIES = 1
# The unmodified train.py is tried this many times before the run gives up.
BASELINE_ATTEMPTS = 2
# How often an awaiting loop asks RQ to sweep jobs abandoned by dead workers.
ABANDONED_SWEEP_S = 5.0
# Scheduling: jobs kept queued beyond one per live worker, so a worker that finishes
# dequeues its next candidate at once. By default one per LOOKAHEAD_WORKERS live workers
# (at least LOOKAHEAD_MIN): many workers finishing together drain a short queue while
# the loop is still recording their results (bench/README.md measures it). Then: LLM calls
# in flight at most; how often the live workers are counted.
LOOKAHEAD_MIN = 1
LOOKAHEAD_WORKERS = 4
LLM_CONCURRENCY = 8
WORKER_REFRESH_S = 1.0
# Longest a loop turn spends validating and committing new proposals.
COLLECT_SLICE_S = 0.05
# Noise: runs of the frontier at the start (the baseline included) and again after every
# NOISE_EVERY_KEEPS keeps; a gain counts above max(MIN_DELTA, NOISE_Z x sigma); a would-be
# keep is re-run with another seed on another worker before the branch moves.
NOISE_RUNS = 3
NOISE_EVERY_KEEPS = 5
NOISE_Z = 2.0
CONFIRM = True
# When a run stops (not by a signal), the frontier and the baseline are re-run this many
# times each with fresh seeds, on validation and the held-out test split (0: never).
FINAL_RUNS = 2
# Redis unreachable: the loop retries with backoff up to this many seconds apart.
REDIS_BACKOFF_MAX_S = 5.0
# A gain this many times larger than any earlier keep's (and the margin), or one made with
# less than this fraction of the frontier's training tokens, is flagged and re-run.
SUSPICIOUS_GAIN_FACTOR = 10.0
SUSPICIOUS_TOKEN_FRACTION = 0.5
