"""The worker contract: the job spec and the result, plain versioned JSON dicts.

Defined once here and imported by both sides. Torch-free: the orchestrator imports it.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypedDict

from worker.vocab import Outcome

SPEC_VERSION = 2
RESULT_VERSION = 2
JOB_FUNC = "worker.jobs.run_experiment"

# Candidate outcomes; a failing candidate is data. `infra_error` is only ever a raised
# exception on the worker (RQ retries it) and is recorded as such when retries run out.
STATUSES = tuple(Outcome)


class Budget(TypedDict):
    train_wall_s: float  # the hard wall of the train phase
    save_margin_s: float  # before the wall: the budget gate, time left to save the weights
    return_grace_s: float  # after the gate: how late train() may return
    eval_wall_s: float  # the hard wall of the eval phase


class Spec(TypedDict):
    """A job: what to run, on which data, under which budget (JSON on the queue)."""

    version: int
    id: str  # the experiment's id in its run (0000, 0001, ...)
    tag: str  # the run's
    parent: str  # the commit it was written against
    commit: str  # its own commit
    source: str  # the train.py to run
    sha256: str  # of source
    profile: str
    fingerprint: str  # of the prepared data the orchestrator scores against
    budget: Budget
    seed: int
    description: str
    # The hardware signature the run is pinned to (its baseline's), "" while it has none:
    # a worker whose own signature differs refuses the job (worker/serving.py).
    hardware: str
    # Also score the held-out test split (test_bpb): only the final re-measure and
    # `verify --test` ask; no decision reads it. Otherwise no phase can reach the test data.
    test_split: bool


class Result(TypedDict):
    """What a job returns: every field always present (None when not measured)."""

    version: int
    id: str
    status: str  # an Outcome
    val_bpb: float | None
    startup_s: float | None
    first_step_s: float | None
    training_s: float | None
    save_s: float | None
    eval_s: float | None
    train_phase_s: float | None
    eval_phase_s: float | None
    total_s: float | None
    peak_memory_mb: float | None
    mfu: float | None
    tokens: int | None
    steps: int | None
    params: int | None
    worker: str | None
    gpu: str | None
    log_tail: str
    error: str | None
    # Stamped by the scorer: the harness code and the data fingerprint it ran with.
    harness_sha256: str | None
    fingerprint: str | None
    image: str | None  # the docker runner's image id (sha256:...), None for processes
    # Which cage ran both phases: docker, process, process-weak (the kernel could not
    # confine), none (the simulate runner).
    cage: str | None
    # The causality probe's largest move (nats) of a log-probability before a split.
    causal_move: float | None
    # What ran it: accelerator (or CPU) model, driver, CUDA, torch, runner image, as one
    # line (harness/hardware.py); a run compares only results of its baseline's signature.
    hardware: str | None
    test_bpb: float | None  # on the held-out test split, when the spec asked (test_split)
    # Where the time went outside the phases: the train process's start before the
    # candidate's code was handed over (interpreter, torch, device: not in the wall), the
    # wait in the queue, and when the worker finished (epoch s, for the orchestrator's
    # record time).
    prestart_s: float | None
    queue_s: float | None
    ended_at: float | None
    # The compile cache (worker/compile_cache.py): seconds to copy the frontier's in and
    # take the candidate's out (outside the wall), and the size of the copy (0: cold).
    cache_s: float | None
    cache_mb: float | None


SPEC_FIELDS = tuple(Spec.__annotations__)
RESULT_FIELDS = tuple(Result.__annotations__)


class SpecError(ValueError):
    """A malformed spec: refused by the worker before anything runs."""


class FingerprintMismatch(SpecError):
    """The worker's data differs from the orchestrator's: results would not be comparable."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_spec(
    *,
    id: str,
    tag: str,
    parent: str,
    commit: str,
    source: str,
    profile: str,
    fingerprint: str,
    budget: Budget | dict[str, float],
    seed: int,
    description: str,
    hardware: str = "",
    test_split: bool = False,
) -> Spec:
    """Build a spec; `budget` holds train_wall_s, save_margin_s, return_grace_s, eval_wall_s;
    `hardware` pins it to one signature ("": any), `test_split` also scores the test split."""
    return {
        "version": SPEC_VERSION,
        "id": id,
        "tag": tag,
        "parent": parent,
        "commit": commit,
        "source": source,
        "sha256": sha256_text(source),
        "profile": profile,
        "fingerprint": fingerprint,
        "budget": Budget(**budget),
        "seed": seed,
        "description": description,
        "hardware": hardware,
        "test_split": bool(test_split),
    }


def check_spec(spec: Spec) -> None:
    missing = [f for f in SPEC_FIELDS if f not in spec]
    if missing:
        raise SpecError(f"spec lacks {', '.join(missing)}")
    if spec["version"] != SPEC_VERSION:
        raise SpecError(f"spec version {spec['version']} != {SPEC_VERSION}")
    if sha256_text(spec["source"]) != spec["sha256"]:
        raise SpecError("spec source does not match its sha256")
    for key in ("train_wall_s", "save_margin_s", "return_grace_s", "eval_wall_s"):
        if not isinstance(spec["budget"].get(key), int | float):
            raise SpecError(f"spec budget lacks {key}")


def make_result(spec: Spec | dict[str, Any], status: str, **fields: Any) -> Result:
    """A result with every field present, so readers never guess at missing keys."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    unknown = set(fields) - set(RESULT_FIELDS)
    if unknown:
        raise ValueError(f"unknown result fields {sorted(unknown)}")
    result = dict.fromkeys(RESULT_FIELDS)
    result |= {"version": RESULT_VERSION, "id": spec["id"], "status": status, "log_tail": ""}
    result.update(fields)
    return Result(**result)
