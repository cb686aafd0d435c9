"""The decision rules, as pure functions: a finished run and the frontier's figures in, a
verdict out. No Redis, no git, no disk: the loop gathers the figures and carries out the
verdict (tests/test_decide.py covers every rule).

The rules, in the order the loop applies them:
- a result scored by another harness, on other data or on hardware other than the
  baseline's is refused (`infra_error`);
- the baseline keeps or, failing, is retried up to BASELINE_ATTEMPTS before the run stops;
- a noise run is recorded as `noise`, a run of the final re-measure as `final` (a failure
  as what it is);
- a failed candidate is recorded as what stopped it;
- a candidate built on an older frontier is judged against its own parent: it loses
  (`discard`), or won and is re-applied on the new frontier, combined by the LLM when the
  change conflicts, or left `stale`;
- a candidate whose gain is not above the margin is discarded; above it, it is kept, or
  first confirmed by a re-run when confirmation is on or the gain looks suspicious;
- a confirmed candidate is kept when the mean of both runs still beats the margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestrator import defaults
from worker.contract import Result
from worker.vocab import Outcome, RowStatus


class Then(StrEnum):
    """What the loop does after writing the verdict's row."""

    NOTHING = "nothing"
    CONFIRM = "confirm"  # re-run the candidate (another seed, another worker)
    STALE = "stale"  # built on an older frontier: judge it against its parent (stale())
    RETRY = "retry"  # run the baseline again
    GIVE_UP = "give_up"  # the baseline failed every attempt: the run stops
    REAPPLY = "reapply"  # queue the merged change on the new frontier
    COMBINE = "combine"  # ask the LLM to combine the change with the new frontier
    MEASURE = "measure"  # run the new frontier again (noise runs, every noise_every keeps)


@dataclass(frozen=True)
class Verdict:
    status: RowStatus | None  # the row to write now; None: no row yet (see then)
    note: str | None = None
    then: Then = Then.NOTHING
    value: float | None = None  # the val_bpb judged (a confirmed pair's mean)
    flag: str = ""  # why the gain looks suspicious, if it does


def refused(result: Result, harness_sha256: str, fingerprint: str, hardware: str = "") -> str:
    """Why a scored result is not taken ("" when it is): only a result scored by this
    harness on this data counts, and, once the run is pinned to its baseline's hardware
    signature, only one from that hardware (a faster GPU trains more tokens in the wall)."""
    if result["status"] != Outcome.OK:
        return ""
    theirs = (result.get("harness_sha256"), result.get("fingerprint"))
    if theirs != (harness_sha256, fingerprint):
        return (
            f"refused: scored by harness {str(theirs[0])[:12]} on data {theirs[1]}, "
            f"expected harness {harness_sha256[:12]} on data {fingerprint}"
        )
    if hardware and result.get("hardware") != hardware:
        return f"refused: ran on {result.get('hardware')!r}, the run is pinned to {hardware!r}"
    return ""


def baseline(result: Result, failures_before: int) -> Verdict:
    """The unmodified train.py: kept when it scores; a failure is retried once in case the
    host hiccuped, and stops the run after BASELINE_ATTEMPTS."""
    if result["status"] == Outcome.OK:
        return Verdict(RowStatus.KEEP)
    gave_up = failures_before + 1 >= defaults.BASELINE_ATTEMPTS
    return Verdict(RowStatus(result["status"]), then=Then.GIVE_UP if gave_up else Then.RETRY)


def noise_run(result: Result, final: bool = False) -> Verdict:
    """A run of a measured commit: `noise` (`final` after the run stopped), else what
    stopped it."""
    ok = result["status"] == Outcome.OK
    scored = RowStatus.FINAL if final else RowStatus.NOISE
    return Verdict(scored if ok else RowStatus(result["status"]))


def candidate(
    result: Result,
    rows: list[dict],
    *,
    parent: str,
    frontier: str,
    best: float,
    margin: float,
    confirm: bool,
) -> Verdict:
    """A candidate's own run, once the noise floor is known."""
    if result["status"] != Outcome.OK:
        return Verdict(RowStatus(result["status"]))
    value = float(result["val_bpb"])
    if parent != frontier:
        return Verdict(None, then=Then.STALE, value=value)
    gain = best - value
    if gain <= margin:
        return Verdict(RowStatus.DISCARD, f"gain {gain:+.6f} not above the margin {margin:.6f}")
    flag = suspicious(rows, result, gain, margin, frontier)
    if confirm or flag:  # a suspicious jump is re-run in any case
        return Verdict(None, then=Then.CONFIRM, value=value, flag=flag)
    return Verdict(RowStatus.KEEP, value=value)


def suspicious(rows: list[dict], result: Result, gain: float, margin: float, frontier: str) -> str:
    """Why a gain looks too good to be true, or "": far above every earlier keep's gain,
    or made with far fewer training tokens than the frontier."""
    kept = [float(r["val_bpb"]) for r in rows if r["status"] == RowStatus.KEEP]
    biggest = max((a - b for a, b in zip(kept, kept[1:], strict=False)), default=0.0)
    factor = defaults.SUSPICIOUS_GAIN_FACTOR
    if len(kept) > 1 and gain > factor * max(biggest, margin):
        return f"suspicious: gain {gain:.4f} is over {factor}x any before ({biggest:.4f})"
    ours = [r for r in rows if r["commit"] == frontier[:7] and r["status"] == RowStatus.KEEP]
    theirs, mine = result.get("tokens"), ours[-1].get("tokens") if ours else None
    if theirs and mine and float(theirs) < defaults.SUSPICIOUS_TOKEN_FRACTION * float(mine):
        return f"suspicious: trained on {int(theirs)} tokens, the frontier on {int(float(mine))}"
    return ""


def confirmed(
    first: dict,
    second: dict,
    *,
    parent: str,
    frontier: str,
    best: float,
    margin: float,
    flag: str,
    confirm_id: str,
) -> tuple[Verdict, RowStatus]:
    """A would-be keep and its re-run: the candidate's verdict and the re-run's row status.
    The candidate is kept when the mean of both runs is still above the margin."""
    if second["status"] != Outcome.OK:
        note = f"confirmation {confirm_id} {second['status']}"
        return Verdict(RowStatus.DISCARD, note), RowStatus(second["status"])
    values = [float(first["val_bpb"]), float(second["val_bpb"])]
    mean = sum(values) / 2
    if parent != frontier:  # another candidate was kept while this one was confirmed
        return Verdict(None, then=Then.STALE, value=mean), RowStatus.CONFIRM
    gain = best - mean
    if gain > margin:
        return Verdict(RowStatus.KEEP, flag or None, value=mean), RowStatus.CONFIRM
    note = f"not confirmed: re-run {values[1]:.6f}, mean gain {gain:+.6f} <= {margin:.6f}"
    note = f"{flag}; {note}" if flag else note
    return Verdict(RowStatus.DISCARD, note, value=mean), RowStatus.CONFIRM


def stale_gain(value: float, parent_value: float | None, margin: float, parent: str) -> Verdict:
    """A candidate built on an older frontier, against its own parent: discarded when it did
    not beat it, else a verdict without a row (won: see reapply(); its note says by how much)."""
    gain = (parent_value - value) if parent_value is not None else 0.0
    if gain <= margin:
        note = f"built on {parent[:7]}, gain {gain:+.6f} over it not above {margin:.6f}"
        return Verdict(RowStatus.DISCARD, note)
    return Verdict(None, f"gain {gain:+.6f} over its parent {parent[:7]}", value=value)


def reapply(won: str, frontier: str, *, stopping: bool, merges: bool, llm: bool) -> Verdict:
    """A stale winner: re-applied on the new frontier when its change merges cleanly, handed
    to the LLM to combine when it conflicts, else left stale (and always when the run stops)."""
    if stopping:
        return Verdict(RowStatus.STALE, f"{won}; not re-applied: the run stops")
    if merges:
        return Verdict(RowStatus.REAPPLIED, f"{won}; re-applied on {frontier[:7]}", Then.REAPPLY)
    if llm:
        note = f"{won}; conflicts with {frontier[:7]}: the LLM combines them"
        return Verdict(RowStatus.REAPPLIED, note, Then.COMBINE)
    return Verdict(RowStatus.STALE, f"{won}; conflicts with {frontier[:7]} (no LLM to combine)")
