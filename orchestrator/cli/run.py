"""`autoresearch run`: start or resume the research loop on branch autoresearch/<tag>, with
its Redis (given, or a private one) and its local workers, and print the summary at the end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from orchestrator import defaults, logs
from orchestrator import settings as st
from orchestrator.cli.helpers import (
    add_common,
    add_runner,
    announce_cage,
    data_fingerprint,
    gpu_arg,
    load_settings,
    lookahead_arg,
    resolve_profile,
    runs_folder,
)


def add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="start or resume the research loop on branch autoresearch/<tag>")
    add_common(p)
    p.add_argument("--tag", help="run name; branch autoresearch/<tag> (default: today's date)")
    p.add_argument(
        "--max-experiments", type=int, help="stop after this many experiments (baseline excluded)"
    )
    p.add_argument("--max-hours", type=float, help="stop after this many hours")
    p.add_argument(
        "--max-cost",
        dest="max_cost_usd",
        type=float,
        help="stop once the run's LLM spend (USD, from token usage and the prices) reaches "
        "this; refused at start while both prices are 0 (AUTORESEARCH_LLM_PRICE_IN/_OUT)",
    )
    p.add_argument(
        "--proposer",
        choices=["auto", "llm", "mutate"],
        help="default: llm if configured, else mutate",
    )
    p.add_argument("--model", dest="llm_model", help=f"LLM model (default {defaults.LLM_MODEL})")
    _add_noise_options(p)
    _add_scheduling_options(p)
    p.add_argument("--seed", type=int, help="seed of training and of the mutate proposer")
    p.add_argument("--redis-url", help="Redis to use (default: a private server for this run)")
    p.add_argument(
        "--local-workers",
        type=int,
        help="workers to start here (default: 1 with a private Redis, else 0)",
    )
    p.add_argument(
        "--gpu", type=gpu_arg, help="GPU for the local workers: an index, or auto (one each)"
    )
    add_runner(p)
    p.add_argument(
        "--train-wall", dest="train_wall_s", type=float, help="hard wall of the train phase, s"
    )
    p.add_argument(
        "--eval-wall", dest="eval_wall_s", type=float, help="hard wall of the eval phase, s"
    )


def _add_noise_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "noise-aware keeps", "a gain counts above max(min-delta, z x sigma); see README"
    )
    g.add_argument(
        "--min-delta",
        type=float,
        help=f"smallest gain that counts, in val_bpb (default {defaults.MIN_DELTA})",
    )
    g.add_argument(
        "--noise-runs",
        type=int,
        help=f"runs of the frontier for the noise floor sigma (default {defaults.NOISE_RUNS})",
    )
    g.add_argument(
        "--final-runs",
        type=int,
        help="when the run stops: runs each of the frontier and the baseline, fresh seeds, "
        f"for the gain's confidence interval and the test split (default {defaults.FINAL_RUNS}, "
        "0: none)",
    )
    g.add_argument(
        "--noise-every",
        type=int,
        help=f"measure the noise again after this many keeps (default {defaults.NOISE_EVERY_KEEPS})",
    )
    g.add_argument(
        "--z",
        dest="noise_z",
        type=float,
        help=f"sigmas a gain must exceed (default {defaults.NOISE_Z})",
    )
    g.add_argument(
        "--confirm",
        action=argparse.BooleanOptionalAction,
        help="re-run a would-be keep on another worker before the branch moves (default on)",
    )


def _add_scheduling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scheduling")
    g.add_argument(
        "--lookahead",
        type=lookahead_arg,
        metavar="N|auto",
        help="jobs queued beyond one per live worker (default auto: one per "
        f"{defaults.LOOKAHEAD_WORKERS} live workers, at least {defaults.LOOKAHEAD_MIN})",
    )
    g.add_argument("--max-in-flight", type=int, help="cap on jobs queued or running (default none)")
    g.add_argument(
        "--llm-concurrency",
        type=int,
        help=f"proposals (LLM calls) made at once (default {defaults.LLM_CONCURRENCY})",
    )
    g.add_argument(
        "--llm-rate",
        dest="llm_rate_per_min",
        type=float,
        help="proposals started per minute at most (default: no limit)",
    )
    g.add_argument(
        "--sequential",
        action="store_true",
        default=None,
        help="propose, run and decide one experiment at a time (no parallel search)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.gitstore import GitStore
    from orchestrator.local_workers import forget_dead
    from orchestrator.redis_server import PrivateRedis, connect
    from orchestrator.research import Limits, Research, budget_for, stopping

    s = load_settings(args)
    s.tag = s.tag or time.strftime("%Y%m%d")
    st.check(s)
    log = logs.get()
    git = GitStore(s.repo, s.train_path)
    runs_dir = runs_folder(s, git.repo)
    logs.tee.open(runs_dir / s.tag / defaults.ORCHESTRATOR_LOG)
    profile, data_dir = resolve_profile(s, log)
    fingerprint = data_fingerprint(data_dir)
    proposer = _proposer(s, profile.name, git.repo, log)
    if hasattr(proposer, "preflight"):  # before any GPU time: a bad key is one line, exit 2
        began = time.monotonic()
        proposer.preflight()
        log.info(
            "llm.preflight",
            model=proposer.model,
            ok=True,
            seconds=round(time.monotonic() - began, 2),
        )
    private = None
    workers = None
    try:
        if s.redis_url:
            url = s.redis_url
            log.info("setting.redis", url=url.split("@")[-1])
        else:
            # Kept in the run folder: a resumed run finds its jobs, results and all.
            private = PrivateRedis(data_dir=runs_dir / s.tag / defaults.REDIS_DIR).start()
            url = private.url
            log.info("default.redis", why="no REDIS_URL", server=private.binary, url=url)
            log.info("redis.workers_forgotten", names=forget_dead(connect(url)))
            # `status`, `logs` and `dashboard` in another terminal find it here while it lives.
            url_file = runs_dir / s.tag / defaults.REDIS_URL_FILE
            url_file.parent.mkdir(parents=True, exist_ok=True)
            url_file.write_text(url + "\n")
        redis = connect(url)
        workers = _start_local_workers(s, url, private is not None, data_dir, runs_dir, log)
        research = Research(
            tag=s.tag,
            git=git,
            redis=redis,
            proposer=proposer,
            profile=profile,
            fingerprint=fingerprint,
            budget=budget_for(profile, s.train_wall_s, s.eval_wall_s),
            runs_dir=runs_dir,
            seed=s.seed,
            policy=_policy(s),
            limits=Limits(s.max_experiments, s.max_hours, s.max_cost_usd),
            log=log,
        )
        with stopping.on_signals():  # SIGTERM and SIGHUP stop it as Ctrl-C does
            summary = research.run()
    finally:
        if workers:
            workers.stop()
        if private:
            (runs_dir / s.tag / defaults.REDIS_URL_FILE).unlink(missing_ok=True)
            private.stop()
        logs.tee.close()
    _print_summary(summary, git)
    if research.stopped_by:
        return research.stopped_by.exit_code
    return 1 if research.proposals.broken else 0  # the LLM failing: not a limit reached


def _start_local_workers(
    s: st.Settings, url: str, private: bool, data_dir: Path, runs_dir: Path, log: Any
) -> Any:
    """The workers this run starts here (default: one with a private Redis), or None."""
    from orchestrator.local_workers import LocalWorkers
    from worker.settings import WorkerSettings

    n_local = s.local_workers if s.local_workers is not None else (1 if private else 0)
    if not n_local:
        return None
    wsettings = WorkerSettings(
        data_dir=data_dir,
        runs_dir=runs_dir,
        runner=s.runner,
        gpu=s.gpu,
        memory_gb=s.memory_gb,
    )
    announce_cage(log, s.runner)
    workers = LocalWorkers(n_local, url, wsettings, runs_dir / s.tag).start()
    log.info(
        "default.workers" if s.local_workers is None else "setting.workers",
        count=n_local,
        runner=s.runner,
        why="process runner: no Docker in the embedded default",
    )
    return workers


def _policy(s: st.Settings) -> Any:
    from orchestrator.research import Policy

    return Policy(
        lookahead=None if s.lookahead == "auto" else int(s.lookahead),
        max_in_flight=s.max_in_flight,
        llm_concurrency=s.llm_concurrency,
        llm_rate_per_min=s.llm_rate_per_min,
        journal_tokens=s.journal_tokens,
        plateau=s.plateau,
        llm_failures=s.llm_failures,
        llm_backoff_s=s.llm_backoff_s,
        sequential=s.sequential,
        noise_runs=s.noise_runs,
        final_runs=s.final_runs,
        noise_every=s.noise_every,
        z=s.noise_z,
        min_delta=s.min_delta,
        confirm=s.confirm,
    )


def _proposer(s: st.Settings, profile: str, repo: Path, log: Any) -> Any:
    name, why = s.resolved_proposer()
    log.info("default.proposer" if why != "set" else "setting.proposer", proposer=name, why=why)
    if name == "mutate":
        from orchestrator.proposers.mutate import MutateProposer

        return MutateProposer(profile)
    from orchestrator.proposers.llm import LLMProposer

    program = repo / "program.md"
    if not program.is_file():
        raise st.SettingsError(f"program.md not found in {repo}: the LLM's system prompt")
    return LLMProposer(
        base_url=s.llm_base_url,
        api_key=s.llm_api_key,
        model=s.llm_model,
        temperature=s.llm_temperature,
        system_prompt=program.read_text(),
        program_path=program,
        timeout_s=s.llm_timeout_s,
        price_in_per_mtok=s.llm_price_in,
        price_out_per_mtok=s.llm_price_out,
    )


def final_lines(final: dict | None) -> list[str]:
    """The final re-measure's gains, as the run's summary prints them."""
    if not final:
        return []

    def gain(part: dict | None) -> str:
        if not part:
            return "-"
        half = "" if part["ci95"] is None else f" +- {part['ci95']:.6f}"
        return f"{part['gain']:.6f}{half}  (95% CI, {part['runs']} runs each)"

    return [
        f"re-measured gain:  {gain(final['val'])}",
        f"test split gain:   {gain(final['test'])}",
    ]


def _print_summary(summary: dict, git: Any) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.6f}" if isinstance(v, float) else str(v)

    lines = [
        "",
        f"=== autoresearch run {summary['tag']} ({summary['stop_reason'] or 'done'}) ===",
        f"best val_bpb:      {fmt(summary['best_val_bpb'])}",
        f"baseline val_bpb:  {fmt(summary['baseline_val_bpb'])}",
        f"gain:              {fmt(summary['gain'])}",
        f"noise sigma:       {fmt(summary['noise_sigma'])}  (margin {fmt(summary['margin'])})",
        *final_lines(summary.get("final")),
        "counts:            " + ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())),
        f"this session:      experiments {summary['experiments_this_session']}, repeat runs "
        f"{summary['repeats_this_session']}, {summary['compute_kind']} "
        f"{summary['compute_seconds']} s in jobs, wall {summary['wall_seconds']} s",
        f"results:           {summary['results'] or '(no row yet)'}",
        f"branch:            {summary['branch']}  (git log --oneline {summary['branch']})",
    ]
    print("\n".join(lines))
    try:
        print(git.log_oneline(summary["branch"], 15))
    except Exception:  # noqa: BLE001 - the summary must print even if git does not
        pass
