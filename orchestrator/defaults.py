"""Constants of the research loop, in one place (as RQ's defaults.py)."""

TRAIN_PATH = "workspace/train.py"
BRANCH_PREFIX = "autoresearch/"
CANDIDATE_REF = "refs/autoresearch/{tag}/candidates/{id}"
RESULTS_FILE = "results.tsv"
ORCHESTRATOR_LOG = "orchestrator.jsonl"
LLM_MODEL = "gpt-4.1-mini"
LLM_TEMPERATURE = 0.7
LLM_TIMEOUT_S = 120.0
LLM_MAX_RETRIES = 4
LLM_FORMAT_RETRIES = 3
MAX_CANDIDATE_BYTES = 64_000
# A candidate is kept when val_bpb < best - MIN_DELTA (the noise margin).
MIN_DELTA = 0.001
# Rows of results.tsv and lines of the last failure shown to the proposer.
RESULTS_TAIL_ROWS = 20
FAILURE_TAIL_LINES = 40
# RQ: seconds added to the two walls for the job timeout, and how long results live.
JOB_TIMEOUT_MARGIN_S = 120
RESULT_TTL_S = 7 * 24 * 3600
# How often the loop polls a job it awaits.
POLL_INTERVAL_S = 0.1
# Infrastructure failures are retried this many times on a worker before being recorded.
INFRA_RETRIES = 1
# The unmodified train.py is tried this many times before the run gives up.
BASELINE_ATTEMPTS = 2
# How often an awaiting loop asks RQ to sweep jobs abandoned by dead workers.
ABANDONED_SWEEP_S = 5.0
