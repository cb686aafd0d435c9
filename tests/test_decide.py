"""Every decision rule of the research loop, as the pure functions it is made of: no
Redis, no git, no disk (orchestrator/research/decide.py)."""

from __future__ import annotations

import pytest

from orchestrator import defaults, noise
from orchestrator.research import decide
from orchestrator.research.decide import Then
from worker.vocab import RowStatus

F, P = "f" * 40, "p" * 40  # the frontier, an older parent


def ok(val_bpb: float, **more) -> dict:
    return {"status": "ok", "val_bpb": val_bpb, **more}


def keep_row(commit: str, val_bpb: float, tokens: int | None = None) -> dict:
    return {"status": "keep", "commit": commit[:7], "val_bpb": str(val_bpb), "tokens": tokens}


def judge(result: dict, rows=(), parent=F, best=1.0, margin=0.01, confirm=False):
    return decide.candidate(
        result, list(rows), parent=parent, frontier=F, best=best, margin=margin, confirm=confirm
    )


# ----- refused -----
def test_a_result_from_this_harness_on_this_data_is_taken():
    result = ok(0.9, harness_sha256="h" * 64, fingerprint="data")
    assert decide.refused(result, "h" * 64, "data") == ""


@pytest.mark.parametrize("harness, data", [("x" * 64, "data"), ("h" * 64, "other")])
def test_a_result_from_another_harness_or_data_is_refused(harness, data):
    result = ok(0.9, harness_sha256=harness, fingerprint=data)
    why = decide.refused(result, "h" * 64, "data")
    assert why.startswith("refused: scored by harness") and "expected harness hhhh" in why


def test_once_pinned_only_a_result_from_the_baselines_hardware_is_taken():
    h200 = "NVIDIA H200 | driver 550.54.15 | cuda 12.4 | torch 2.5.1"
    result = ok(0.9, harness_sha256="h" * 64, fingerprint="data", hardware=h200)
    assert decide.refused(result, "h" * 64, "data", hardware=h200) == ""
    assert decide.refused(result, "h" * 64, "data", hardware="") == ""  # not pinned yet
    faster = {**result, "hardware": h200.replace("H200", "B200")}
    why = decide.refused(faster, "h" * 64, "data", hardware=h200)
    assert why.startswith("refused: ran on 'NVIDIA B200") and "pinned to 'NVIDIA H200" in why
    unknown = {**result, "hardware": None}
    assert decide.refused(unknown, "h" * 64, "data", hardware=h200).startswith("refused: ran on")


def test_a_final_run_is_recorded_as_final_and_moves_no_in_run_figure():
    assert decide.noise_run(ok(1.0), final=True).status == RowStatus.FINAL
    assert decide.noise_run({"status": "crash"}, final=True).status == RowStatus.CRASH
    rows = [{"status": "keep", "commit": "a" * 7, "val_bpb": "1.0"}]
    rows += [{"status": "final", "commit": "a" * 7, "val_bpb": "2.0"}]
    assert noise.commit_value(rows, "a" * 7) == 1.0 and noise.pooled_sigma(rows) == (0.0, 0)


def test_a_failed_result_is_never_refused_it_is_already_not_a_score():
    assert decide.refused({"status": "crash"}, "h" * 64, "data") == ""


# ----- baseline and noise -----
def test_the_baseline_keeps_when_it_scores():
    assert decide.baseline(ok(1.0), 0) == decide.Verdict(RowStatus.KEEP)


def test_a_failed_baseline_is_retried_then_stops_the_run():
    first = decide.baseline({"status": "crash"}, 0)
    assert (first.status, first.then) == (RowStatus.CRASH, Then.RETRY)
    last = decide.baseline({"status": "oom"}, defaults.BASELINE_ATTEMPTS - 1)
    assert (last.status, last.then) == (RowStatus.OOM, Then.GIVE_UP)


def test_a_noise_run_is_recorded_as_noise_or_as_its_failure():
    assert decide.noise_run(ok(1.0)).status == RowStatus.NOISE
    assert decide.noise_run({"status": "overtime"}).status == RowStatus.OVERTIME


# ----- a candidate -----
def test_a_failed_candidate_is_recorded_as_what_stopped_it():
    for status in ("crash", "oom", "nan", "timeout", "overtime", "infra_error"):
        assert judge({"status": status}).status == RowStatus(status)


def test_a_gain_not_above_the_margin_is_discarded():
    v = judge(ok(0.995), margin=0.01)
    assert (
        v.status == RowStatus.DISCARD and "gain +0.005000 not above the margin 0.010000" in v.note
    )
    assert judge(ok(0.75), margin=0.25).status == RowStatus.DISCARD  # equal is not above


def test_a_gain_above_the_margin_keeps_without_confirmation():
    v = judge(ok(0.98), margin=0.01)
    assert (v.status, v.then, v.value) == (RowStatus.KEEP, Then.NOTHING, 0.98)


def test_a_gain_above_the_margin_is_confirmed_first_when_confirmation_is_on():
    v = judge(ok(0.98), margin=0.01, confirm=True)
    assert (v.status, v.then, v.flag) == (None, Then.CONFIRM, "")


def test_a_candidate_on_an_older_frontier_goes_to_the_stale_rule_with_its_value():
    v = judge(ok(0.5), parent=P)
    assert (v.status, v.then, v.value) == (None, Then.STALE, 0.5)


def test_a_jump_far_above_every_earlier_gain_is_confirmed_even_without_confirmation():
    factor = defaults.SUSPICIOUS_GAIN_FACTOR
    rows = [keep_row(P, 1.00), keep_row(F, 0.99)]  # the one earlier gain: 0.01
    jump = judge(ok(0.99 - 0.01 * factor - 0.001), rows, best=0.99, margin=0.001)
    assert jump.then == Then.CONFIRM and jump.flag.startswith("suspicious: gain 0.1010 is over")
    calm = judge(ok(0.99 - 0.01 * factor + 0.001), rows, best=0.99, margin=0.001)
    assert calm.status == RowStatus.KEEP and calm.flag == ""


def test_a_gain_made_on_far_fewer_tokens_than_the_frontier_is_suspicious():
    rows = [keep_row(F, 1.0, tokens=1_000_000)]
    few = judge(ok(0.9, tokens=100_000), rows, margin=0.01)
    assert few.then == Then.CONFIRM
    assert few.flag == "suspicious: trained on 100000 tokens, the frontier on 1000000"
    assert judge(ok(0.9, tokens=900_000), rows, margin=0.01).status == RowStatus.KEEP


# ----- a confirmation -----
def confirm(second: dict, parent=F, best=1.0, margin=0.01, flag=""):
    return decide.confirmed(
        ok(0.97),
        second,
        parent=parent,
        frontier=F,
        best=best,
        margin=margin,
        flag=flag,
        confirm_id="0009",
    )


def test_a_confirmed_gain_keeps_on_the_mean_of_both_runs():
    verdict, row = confirm(ok(0.975))  # mean 0.9725: gain 0.0275 > 0.01
    assert (verdict.status, row) == (RowStatus.KEEP, RowStatus.CONFIRM)
    assert verdict.value == pytest.approx(0.9725)


def test_a_gain_the_rerun_does_not_bear_out_is_discarded():
    verdict, row = confirm(ok(1.03))  # mean 1.0: no gain
    assert verdict.status == RowStatus.DISCARD and row == RowStatus.CONFIRM
    assert verdict.note.startswith("not confirmed: re-run 1.030000, mean gain +0.000000")


def test_a_suspicious_flag_stays_in_the_note_either_way():
    kept, _ = confirm(ok(0.975), flag="suspicious: x")
    assert kept.status == RowStatus.KEEP and kept.note == "suspicious: x"
    lost, _ = confirm(ok(1.03), flag="suspicious: x")
    assert lost.note.startswith("suspicious: x; not confirmed")


def test_a_failed_confirmation_discards_the_candidate():
    verdict, row = confirm({"status": "oom"})
    assert (verdict.status, verdict.note, row) == (
        RowStatus.DISCARD,
        "confirmation 0009 oom",
        RowStatus.OOM,
    )


def test_a_confirmation_that_ends_after_another_keep_goes_to_the_stale_rule():
    verdict, row = confirm(ok(0.975), parent=P)
    assert (verdict.then, row) == (Then.STALE, RowStatus.CONFIRM)
    assert verdict.value == pytest.approx(0.9725)


# ----- a candidate built on an older frontier -----
def test_a_stale_candidate_that_did_not_beat_its_parent_is_discarded():
    v = decide.stale_gain(0.995, 1.0, 0.01, P)
    assert v.status == RowStatus.DISCARD and v.note.startswith("built on ppppppp, gain +0.005000")
    assert decide.stale_gain(0.9, None, 0.01, P).status == RowStatus.DISCARD  # parent unknown


def test_a_stale_winner_is_reapplied_combined_or_left_stale():
    won = decide.stale_gain(0.9, 1.0, 0.01, P)
    assert won.status is None and won.note == "gain +0.100000 over its parent ppppppp"

    def reapply(**kw):
        return decide.reapply(won.note, F, **{"stopping": False, "merges": True, "llm": True, **kw})

    assert (reapply().status, reapply().then) == (RowStatus.REAPPLIED, Then.REAPPLY)
    combined = reapply(merges=False)
    assert (combined.status, combined.then) == (RowStatus.REAPPLIED, Then.COMBINE)
    assert "the LLM combines them" in combined.note
    left = reapply(merges=False, llm=False)
    assert (left.status, left.then) == (RowStatus.STALE, Then.NOTHING)
    assert "no LLM to combine" in left.note
    stopping = reapply(stopping=True)
    assert stopping.status == RowStatus.STALE and stopping.note.endswith("the run stops")
