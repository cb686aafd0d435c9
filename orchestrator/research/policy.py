"""How a run is scheduled and when it ends: the knobs the README explains, as plain data."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.profiles import Profile
from orchestrator import defaults


def budget_for(profile: Profile, train_wall_s: float | None, eval_wall_s: float | None) -> dict:
    """The profile's time limits, with the walls optionally overridden (margins scale down)."""
    wall = train_wall_s or profile.train_wall_s
    margin = min(profile.save_margin_s, 0.2 * wall)
    return {
        "train_wall_s": wall,
        "save_margin_s": margin,
        "return_grace_s": min(profile.return_grace_s, margin / 2),
        "eval_wall_s": eval_wall_s or profile.eval_wall_s,
    }


def lookahead_for(workers: int, lookahead: int | None) -> int:
    """The look-ahead to use: as set, or one job per LOOKAHEAD_WORKERS live workers."""
    if lookahead is not None:
        return lookahead
    return max(defaults.LOOKAHEAD_MIN, math.ceil(workers / defaults.LOOKAHEAD_WORKERS))


@dataclass
class Limits:
    max_experiments: int | None = None  # candidates proposed this session
    max_hours: float | None = None
    max_cost_usd: float | None = None  # LLM spend of the whole run, resumed sessions included


@dataclass
class Policy:
    """How candidates are scheduled and judged; the README explains each trade-off."""

    lookahead: int | None = None  # jobs queued beyond one per live worker (None: auto)
    max_in_flight: int | None = None  # cap on jobs queued or running (None: no cap)
    llm_concurrency: int = defaults.LLM_CONCURRENCY  # proposals being made at once
    llm_rate_per_min: float | None = None  # proposals started per minute (None: no cap)
    journal_tokens: int = defaults.JOURNAL_TOKENS  # the journal's size in the prompt, at most
    plateau: int = defaults.PLATEAU  # experiments without a keep before asking for bolder ones
    llm_failures: int = defaults.LLM_FAILURES  # LLM failures of one kind in a row: stop
    llm_backoff_s: float = defaults.LLM_BACKOFF_S  # wait after one, tripled after each next
    sequential: bool = False  # propose, run, decide, one at a time (the old loop)
    noise_runs: int = defaults.NOISE_RUNS  # runs of the frontier for the noise floor
    final_runs: int = defaults.FINAL_RUNS  # runs each of frontier and baseline at the end
    noise_every: int = defaults.NOISE_EVERY_KEEPS  # re-measure after this many keeps
    z: float = defaults.NOISE_Z
    min_delta: float = defaults.MIN_DELTA
    confirm: bool = defaults.CONFIRM
