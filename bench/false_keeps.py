"""False keeps: the noise-aware keep rule against plain "lower is better" (a Monte Carlo).

Why: one run's val_bpb moves with the seed, so "keep whatever measured lower" keeps
changes that did nothing or harm, and each such keep also becomes the bar the next
candidates must beat (the winner's curse: the best single measurement is biased low).
The loop instead measures the frontier several times, pools the spread of repeated runs
into a noise floor sigma, counts a gain only above max(min_delta, z x sigma), and re-runs
a would-be keep before the branch moves. This simulates a sequential research run under
each rule and counts what each keeps, wrongly and rightly, and what it costs in GPU runs.

The model (constants below): the baseline's true val_bpb is 1.0; each candidate changes
the current frontier's true score by an effect drawn from N(EFFECT_MEAN, EFFECT_SD), so
most changes do not help (Phi(-EFFECT_MEAN / EFFECT_SD) of them do, about 16%); each run
measures the true score plus N(0, SIGMA). Pure Python, no Redis, no workers.

The rule is the real one: the decisions are the loop's (orchestrator/research/decide.py:
candidate, confirmed) on results.tsv-like rows, with the knobs of
orchestrator.research.Policy, and the frontier is re-measured as the loop does
(research/judge.py _keep, research/loop.py launch_frontier_runs):

  (a) plain:       Policy(noise_runs=1, z=0, min_delta=0, confirm=False): keep if measured
                   < the frontier's measured value;
  (b) min_delta:   Policy(noise_runs=1, z=0, confirm=False): keep if the gain > min_delta;
  (c) noise-aware: Policy(confirm=False): the frontier run noise_runs times (the baseline
                   and again after every noise_every keeps), gain > margin(sigma_hat);
  (d) + confirm:   Policy(): a would-be keep is re-run; kept if the mean of both runs
                   beats the frontier's mean by the margin (pairs feed sigma_hat too).

A row that is measured once and never again (a plain discard) cannot change pooled_sigma
or any commit_value, so only frontier runs and candidate/confirmation pairs are stored.

Reported per rule, averaged over seeds: keeps and false keeps (kept while the true effect
>= 0) per 100 candidates, false keeps as a share of keeps, the helpful candidates (true
effect < 0) missed and the clearly helpful ones (effect < -2 x SIGMA) missed, GPU runs per
candidate (baseline, noise runs and confirmations included), the true gain of the final
frontier over the baseline and the gain the run reports (its measured values). A second
table gives each rule the same GPU runs instead of the same candidates.

    python bench/false_keeps.py [--candidates 100] [--seeds 2000] [--sigma 0.002]
                                [--effect-mean 0.002] [--effect-sd 0.002] [--z 2]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import defaults, noise  # noqa: E402
from orchestrator.research import Policy, decide  # noqa: E402
from orchestrator.research.decide import Then  # noqa: E402
from worker.vocab import RowStatus  # noqa: E402

BASELINE_TRUE = 1.0  # val_bpb of the unmodified train.py
EFFECT_MEAN = 0.002  # a candidate's true change of val_bpb: most make it worse...
EFFECT_SD = 0.002  # ...and about 16% (Phi(-1)) improve it
SIGMA = 0.002  # per-run noise (worker/simulate.py's default)
CANDIDATES = 100  # a night on one GPU at 5 minutes an experiment
SEEDS = 2000

RULES = {
    "(a) plain": Policy(noise_runs=1, z=0.0, min_delta=0.0, confirm=False),
    "(b) min_delta": Policy(noise_runs=1, z=0.0, confirm=False),
    "(c) noise-aware": Policy(confirm=False),
    "(d) + confirm": Policy(),
}


@dataclass
class Outcome:
    candidates: int = 0
    runs: int = 0
    keeps: int = 0
    false_keeps: int = 0
    helpful: int = 0
    helpful_missed: int = 0
    clear: int = 0  # effect < -2 sigma
    clear_missed: int = 0
    true_gain: float = 0.0
    reported_gain: float = 0.0


class Run:
    """One research run under one policy: the loop's keep rule on synthetic rows."""

    def __init__(self, policy: Policy, sigma: float, rng: random.Random):
        self.policy, self.sigma, self.rng = policy, sigma, rng
        self.rows: list[dict[str, str]] = []
        self.commits = 0
        self.out = Outcome()
        self.frontier, self.true = self.new_commit(), BASELINE_TRUE
        self.keeps_since_noise = 0
        self.frontier_runs(baseline=True)
        self.baseline = self.frontier
        self.best = noise.commit_value(self.rows, self.frontier)
        self.margin = self._margin()

    def new_commit(self) -> str:
        self.commits += 1
        return f"{self.commits:07x}"

    def measure(self, true: float) -> float:
        self.out.runs += 1
        return true + self.rng.gauss(0.0, self.sigma)

    def add(self, status: str, commit: str, value: float) -> None:
        self.rows.append({"status": status, "commit": commit, "val_bpb": repr(value)})

    def _margin(self) -> float:
        return noise.margin(noise.pooled_sigma(self.rows)[0], self.policy.z, self.policy.min_delta)

    def frontier_runs(self, baseline: bool = False) -> None:
        """launch_frontier_runs: up to noise_runs measurements of the frontier in all."""
        have = 0 if baseline else len(noise.measurements(self.rows, self.frontier))
        for k in range(max(self.policy.noise_runs, 1) - have):
            status = "keep" if baseline and k == 0 else "noise"
            self.add(status, self.frontier, self.measure(self.true))

    def candidate(self, effect: float) -> None:
        out = self.out
        out.candidates += 1
        helpful, clear = effect < 0, effect < -2 * self.sigma
        out.helpful += helpful
        out.clear += clear
        true = self.true + effect
        commit = self.new_commit()
        first = self.measure(true)
        # The loop's rules (research/decide.py). No rows for the suspicious-gain check:
        # synthetic runs have no token counts, and the table compares the policies' knobs.
        ok = {"status": "ok", "val_bpb": first}
        at = {"parent": self.frontier, "frontier": self.frontier, "best": self.best}
        verdict = decide.candidate(ok, [], **at, margin=self.margin, confirm=self.policy.confirm)
        kept = verdict.status == RowStatus.KEEP
        if kept:
            self.add("keep", commit, first)
        elif verdict.then == Then.CONFIRM:
            second = self.measure(true)
            verdict, _ = decide.confirmed(
                ok,
                {"status": "ok", "val_bpb": second},
                **at,
                margin=self.margin,
                flag="",
                confirm_id="",
            )
            kept = verdict.status == RowStatus.KEEP
            self.add("keep" if kept else "discard", commit, first)
            self.add("confirm", commit, second)
        if kept:  # _keep
            out.keeps += 1
            out.false_keeps += effect >= 0
            self.frontier, self.true = commit, true
            self.keeps_since_noise += 1
            if self.keeps_since_noise >= self.policy.noise_every:
                self.keeps_since_noise = 0
                self.frontier_runs()
            self.best = noise.commit_value(self.rows, self.frontier)
        else:
            out.helpful_missed += helpful
            out.clear_missed += clear
        self.margin = self._margin()

    def finish(self) -> Outcome:
        self.out.true_gain = BASELINE_TRUE - self.true
        self.out.reported_gain = noise.commit_value(self.rows, self.baseline) - self.best
        return self.out


def simulate(
    policy: Policy, args: argparse.Namespace, candidates: int, max_runs: int | None, seed: int
) -> Outcome:
    effects = random.Random(f"effects:{seed}")  # the same ideas, in the same order, per rule
    run = Run(policy, args.sigma, random.Random(f"noise:{seed}"))
    while run.out.candidates < candidates and (max_runs is None or run.out.runs < max_runs):
        run.candidate(effects.gauss(args.effect_mean, args.effect_sd))
    return run.finish()


def table(title: str, results: dict[str, list[Outcome]]) -> None:
    print(title)
    cols = (
        "rule",
        "keeps/100",
        "false keeps/100",
        "false/keeps",
        "helpful missed",
        "clearly helpful missed",
        "runs/cand",
        "candidates",
        "true gain",
        "reported gain",
    )
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for name, outs in results.items():
        total = Outcome()
        for o in outs:
            for key, value in o.__dict__.items():
                setattr(total, key, getattr(total, key) + value)
        n = len(outs)
        per100 = 100 / total.candidates
        cells = (
            name,
            f"{total.keeps * per100:.2f}",
            f"{total.false_keeps * per100:.2f}",
            f"{total.false_keeps / total.keeps:.1%}" if total.keeps else "-",
            f"{total.helpful_missed / total.helpful:.1%}" if total.helpful else "-",
            f"{total.clear_missed / total.clear:.1%}" if total.clear else "-",
            f"{total.runs / total.candidates:.3f}",
            f"{total.candidates / n:.1f}",
            f"{total.true_gain / n:+.5f}",
            f"{total.reported_gain / n:+.5f}",
        )
        print("| " + " | ".join(cells) + " |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", type=int, default=CANDIDATES)
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--sigma", type=float, default=SIGMA, help="per-run noise (val_bpb)")
    parser.add_argument("--effect-mean", type=float, default=EFFECT_MEAN)
    parser.add_argument("--effect-sd", type=float, default=EFFECT_SD)
    parser.add_argument(
        "--z", type=float, default=defaults.NOISE_Z, help="z of rules (c) and (d) (the loop's)"
    )
    args = parser.parse_args()
    rules = {name: replace(p, z=args.z) if p.z else p for name, p in RULES.items()}
    began = time.monotonic()
    helpful = 0.5 * (1 + math.erf(-args.effect_mean / args.effect_sd / math.sqrt(2)))
    print(
        f"effect ~ N({args.effect_mean:+g}, {args.effect_sd:g}) ({helpful:.1%} helpful), run noise "
        f"sigma {args.sigma:g}, {args.seeds} seeds; rules (c) and (d): noise_runs "
        f"{defaults.NOISE_RUNS}, noise_every {defaults.NOISE_EVERY_KEEPS}, z {args.z:g}, "
        f"min_delta {defaults.MIN_DELTA:g}\n"
    )
    same_candidates = {
        name: [simulate(p, args, args.candidates, None, s) for s in range(args.seeds)]
        for name, p in rules.items()
    }
    table(f"{args.candidates} candidates per run:", same_candidates)
    runs = args.candidates + 1  # what the plain rule spends: the candidates and the baseline
    same_runs = {
        name: [simulate(p, args, 10**9, runs, s) for s in range(args.seeds)]
        for name, p in rules.items()
    }
    table(f"{runs} GPU runs per run (as many candidates as they allow):", same_runs)
    print(f"wall time: {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
