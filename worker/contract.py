"""The worker contract: the job spec and the result, plain versioned JSON dicts.

Defined once here and imported by both sides. Torch-free: the orchestrator imports it.
"""

from __future__ import annotations

import hashlib
from typing import Any

SPEC_VERSION = 1
RESULT_VERSION = 1
JOB_FUNC = "worker.jobs.run_experiment"

# Candidate outcomes; a failing candidate is data. `infra_error` is only ever a raised
# exception on the worker (RQ retries it) and is recorded as such when retries run out.
STATUSES = ("ok", "crash", "oom", "nan", "timeout", "overtime", "infra_error")

SPEC_FIELDS = (
    "version",
    "id",
    "tag",
    "parent",
    "commit",
    "source",
    "sha256",
    "profile",
    "fingerprint",
    "budget",
    "seed",
    "description",
)


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
    budget: dict[str, float],
    seed: int,
    description: str,
) -> dict[str, Any]:
    """Build a spec; `budget` holds train_wall_s, save_margin_s, return_grace_s, eval_wall_s."""
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
        "budget": dict(budget),
        "seed": seed,
        "description": description,
    }


def check_spec(spec: dict[str, Any]) -> None:
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


def make_result(spec: dict[str, Any], status: str, **fields: Any) -> dict[str, Any]:
    """A result with every field present, so readers never guess at missing keys."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "id": spec["id"],
        "status": status,
        "val_bpb": None,
        "startup_s": None,
        "first_step_s": None,
        "training_s": None,
        "save_s": None,
        "eval_s": None,
        "train_phase_s": None,
        "eval_phase_s": None,
        "total_s": None,
        "peak_memory_mb": None,
        "mfu": None,
        "tokens": None,
        "steps": None,
        "params": None,
        "worker": None,
        "gpu": None,
        "log_tail": "",
        "error": None,
        # Stamped by the scorer: the harness code and the data fingerprint it ran with.
        "harness_sha256": None,
        "fingerprint": None,
        "image": None,  # the docker runner's image id (sha256:...), None for processes
        # Which cage ran both phases: docker, process, process-weak (the kernel could not
        # confine), none (the simulate runner).
        "cage": None,
        # The causality probe's largest move (nats) of a log-probability before a split.
        "causal_move": None,
    }
    unknown = set(fields) - set(result)
    if unknown:
        raise ValueError(f"unknown result fields {sorted(unknown)}")
    result.update(fields)
    return result
