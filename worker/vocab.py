"""The words every side uses for a run's outcome, a results row and a kind of run.

One vocabulary, like RQ's `JobStatus`: the worker's contract, results.tsv, the noise rules,
the readers (view, report, dashboard) and the research loop all import these. They are
`StrEnum`s, so a member is its own string: it compares equal to, formats and serialises
as the plain word in results.tsv, JSON and Redis.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """A result's status, as the worker reports it. A failing candidate is data;
    `infra_error` is the machine's (RQ retries it) and is recorded only when retries run out."""

    OK = "ok"
    CRASH = "crash"
    OOM = "oom"
    NAN = "nan"
    TIMEOUT = "timeout"
    OVERTIME = "overtime"
    INFRA_ERROR = "infra_error"


class RowStatus(StrEnum):
    """A results row's status: the decision on a scored run, else what stopped it."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    OOM = "oom"
    NAN = "nan"
    TIMEOUT = "timeout"
    OVERTIME = "overtime"
    REJECTED = "rejected"  # never ran: invalid, a duplicate, or the run stopped first
    INFRA_ERROR = "infra_error"
    NOISE = "noise"  # a run of the frontier with another seed, for the noise floor
    CONFIRM = "confirm"  # the re-run of a would-be keep (its candidate's row says keep or discard)
    REAPPLIED = "reapplied"  # won on an older frontier; its change was queued again on the new one
    STALE = "stale"  # won on an older frontier; its change conflicts with the new one
    FINAL = "final"  # after the run stopped: the frontier or the baseline re-run, a fresh seed


class RunKind(StrEnum):
    """Why a job runs: the first run of the branch, a repeat of the frontier, a proposed
    change, the re-run of a would-be keep, or the final re-measure once the run stopped."""

    BASELINE = "baseline"
    NOISE = "noise"
    CANDIDATE = "candidate"
    CONFIRM = "confirm"
    FINAL = "final"


# Rows whose val_bpb is a measurement of their commit (a crash's 0.0 is not).
MEASURED = (RowStatus.KEEP, RowStatus.DISCARD, RowStatus.CONFIRM, RowStatus.NOISE)
# Rows that measure the frontier commit itself.
FRONTIER = (RowStatus.KEEP, RowStatus.CONFIRM, RowStatus.NOISE)
# Rows whose run used a worker (a rejected proposal never ran; an infra_error is the
# machine's failure, not an experiment).
RAN = tuple(s for s in RowStatus if s not in (RowStatus.REJECTED, RowStatus.INFRA_ERROR))
# Rows that repeat a commit already measured (the report groups them apart). A final
# re-measure is kept out of MEASURED and FRONTIER: it checks the in-run figures, so it
# must not move them.
REPEATS = (RowStatus.NOISE, RowStatus.CONFIRM, RowStatus.FINAL)
