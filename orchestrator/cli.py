"""`autoresearch`: prepare data, run the research loop, serve as a worker, evaluate, verify,
and watch a run (status, logs, report, dashboard).

Exit codes: 0 done, 1 the run failed (the message says why), 2 bad settings or input.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator import defaults, logs
from orchestrator import settings as st

EXAMPLES = """\
examples:
  autoresearch prepare                     # local corpus (this Python's stdlib source)
  autoresearch prepare --source http       # the climbmix parquet shards
  autoresearch run --tag nov28             # the loop, on the embedded defaults
  autoresearch run --tag nov28 --max-experiments 50 --max-hours 8
  REDIS_URL=redis://host:6379/0 autoresearch worker --gpu 0
  REDIS_URL=... AUTORESEARCH_GPUS=8 autoresearch worker --runner docker --gpu auto
  autoresearch evaluate workspace/train.py --json
  autoresearch status --watch              # workers, queue, best, noise, spend; live
  autoresearch logs -f                     # every experiment's lines as they come
  autoresearch logs 0012 --json            # one experiment, JSON lines
  autoresearch report                      # progress.png and report.md in the run folder
  autoresearch dashboard                   # http://127.0.0.1:8765/: chart, workers, live logs
  autoresearch verify 0012 --tag nov28     # re-run a recorded experiment, compare
  autoresearch run --tag dry --runner simulate --local-workers 8   # the scheduler, no GPU
"""


def _die(message: str, code: int) -> int:
    print(f"autoresearch: error: {message}", file=sys.stderr)
    return code


def _gpu_arg(value: str) -> int | str | None:
    try:
        return st.parse_gpu(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a GPU index (0 or more) or auto") from None


def _lookahead_arg(value: str) -> int | str:
    try:
        return st.parse_lookahead(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 0 or more, or auto") from None


def _add_runner(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runner",
        choices=st.RUNNERS,
        help="process (default): subprocesses; docker: one locked-down container per phase; "
        "simulate: hold the worker for the budget, no training (benchmarks, dry runs)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        choices=["auto", "cpu", "gpu"],
        help="data/time profile (default: auto: gpu if CUDA)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="prepared data folder (default: ~/.cache/autoresearch/data/<profile>)",
    )
    p.add_argument("--runs-dir", type=Path, help="per-run artifacts (default: workspace/runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="An LLM-driven experiment machine for language-model training.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download or read text, train the tokenizer, write shards")
    _add_common(p)
    p.add_argument(
        "--source",
        choices=["local", "http"],
        default="local",
        help="local: a folder of text files (default: this Python's stdlib); http: parquet shards",
    )
    p.add_argument(
        "--local-dir", type=Path, help="folder of .py/.txt/.md/.rst files for --source local"
    )
    p.add_argument(
        "--url-pattern", help="URL with {i} for --source http (default: climbmix shards)"
    )
    p.add_argument("--train-shards", type=int, default=8, help="parquet shards for training (http)")
    p.add_argument("--val-shard", type=int, help="the shard index held out for validation (http)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (http)")
    p.add_argument("--force", action="store_true", help="prepare again even if the data is there")

    p = sub.add_parser("run", help="start or resume the research loop on branch autoresearch/<tag>")
    _add_common(p)
    p.add_argument("--tag", help="run name; branch autoresearch/<tag> (default: today's date)")
    p.add_argument(
        "--max-experiments", type=int, help="stop after this many experiments (baseline excluded)"
    )
    p.add_argument("--max-hours", type=float, help="stop after this many hours")
    p.add_argument(
        "--max-cost",
        dest="max_cost_usd",
        type=float,
        help="stop once the run's LLM spend (USD, from token usage and the prices) reaches this",
    )
    p.add_argument(
        "--proposer",
        choices=["auto", "llm", "mutate"],
        help="default: llm if configured, else mutate",
    )
    p.add_argument("--model", dest="llm_model", help=f"LLM model (default {defaults.LLM_MODEL})")
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
    g = p.add_argument_group("scheduling")
    g.add_argument(
        "--lookahead",
        type=_lookahead_arg,
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
    p.add_argument("--seed", type=int, help="seed of training and of the mutate proposer")
    p.add_argument("--redis-url", help="Redis to use (default: a private server for this run)")
    p.add_argument(
        "--local-workers",
        type=int,
        help="workers to start here (default: 1 with a private Redis, else 0)",
    )
    p.add_argument(
        "--gpu", type=_gpu_arg, help="GPU for the local workers: an index, or auto (one each)"
    )
    _add_runner(p)
    p.add_argument(
        "--train-wall", dest="train_wall_s", type=float, help="hard wall of the train phase, s"
    )
    p.add_argument(
        "--eval-wall", dest="eval_wall_s", type=float, help="hard wall of the eval phase, s"
    )

    p = sub.add_parser("worker", help="serve experiments from Redis (an RQ worker); one per GPU")
    _add_common(p)
    p.add_argument("--redis-url", help="Redis of the run (default: REDIS_URL)")
    p.add_argument(
        "--gpu",
        type=_gpu_arg,
        help="the one GPU this worker uses: an index, or auto to claim a free one of this host "
        "through Redis (AUTORESEARCH_GPUS of them); default: none, CPU",
    )
    p.add_argument("--name", help="worker name (default: host-gpu-pid)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    _add_runner(p)

    p = sub.add_parser("evaluate", help="run one train.py through the runner and harness, no loop")
    _add_common(p)
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", type=int)
    _add_runner(p)
    p.add_argument("--train-wall", dest="train_wall_s", type=float)
    p.add_argument("--eval-wall", dest="eval_wall_s", type=float)

    p = sub.add_parser(
        "verify", help="re-run a recorded experiment exactly (commit, seed, budget) and compare"
    )
    _add_common(p)
    p.add_argument("id", help="the experiment id in results.tsv, e.g. 0012")
    p.add_argument("--tag", help="run name (default: the most recent run)")
    p.add_argument("--seed", type=int, help="another seed (default: the recorded one)")
    p.add_argument("--gpu", type=int)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _add_runner(p)

    p = sub.add_parser(
        "status",
        help="workers and what they run, the queue, best and gain, counts, noise, LLM spend",
    )
    _add_reader(p)
    p.add_argument("--rows", type=int, default=10, help="last results rows shown (default 10)")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="print the whole snapshot as JSON")

    p = sub.add_parser(
        "logs", help="one experiment's log, or the whole run's interleaved; -f follows it live"
    )
    _add_reader(p)
    p.add_argument("id", nargs="?", help="experiment id, e.g. 0012 (default: every experiment)")
    p.add_argument("-f", "--follow", action="store_true", help="follow new lines as they come")
    p.add_argument("-n", "--lines", type=int, help="only the last N entries of the backlog")
    p.add_argument(
        "--json",
        action=argparse.BooleanOptionalAction,
        help="JSON lines (default: when not a terminal)",
    )

    p = sub.add_parser(
        "dashboard", help="a read-only web page: chart, leaderboard, workers, live log tails"
    )
    _add_reader(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=defaults.DASHBOARD_PORT, help="default %(default)s")

    p = sub.add_parser("report", help="progress.png and report.md: the chart and a summary")
    _add_reader(p)
    p.add_argument("--repo", type=Path, help="git repo with the run's commits (default: .)")
    p.add_argument("--out", type=Path, help="folder for the files (default: the run folder)")
    return parser


def _add_reader(p: argparse.ArgumentParser) -> None:
    """Options of the commands that look at a run: from Redis (any host), or its folder."""
    p.add_argument("--tag", help="run name (default: the most recently updated run)")
    p.add_argument("--runs-dir", type=Path, help="runs folder (default: workspace/runs)")
    p.add_argument(
        "--redis-url",
        help="Redis of the run (default: REDIS_URL, else the embedded one of a live local run)",
    )


def _reader(args: argparse.Namespace) -> tuple[Any, Path, str]:
    """(redis or None, runs folder, tag) for a command that looks at a run.

    Redis: --redis-url or REDIS_URL (an error when unreachable); else the embedded Redis
    of a local run while it lives (its URL is in the run folder); else the folder alone.
    """
    from orchestrator import view
    from orchestrator.redis_server import RedisUnavailable, connect

    s = _settings(args)  # --tag, --runs-dir, --redis-url over their environment variables
    runs_dir = s.runs_dir
    redis = connect(s.redis_url) if s.redis_url else None
    tag = s.tag or view.latest_tag(redis, runs_dir)
    if tag is None:
        raise st.SettingsError(f"tag: no run found (in Redis or under {runs_dir}); pass --tag")
    if redis is None:
        local = runs_dir / tag / defaults.REDIS_URL_FILE
        if local.is_file():
            try:
                redis = connect(local.read_text().strip(), timeout_s=1.0)
            except RedisUnavailable:
                redis = None  # the run has ended: its folder has everything
    return redis, runs_dir, tag


def _settings(args: argparse.Namespace) -> st.Settings:
    overrides = {k: v for k, v in vars(args).items() if k in st.FIELD_NAMES}
    return st.load(overrides=overrides)


def _profile(s: st.Settings, log: Any) -> tuple[Any, Path]:
    from harness.profiles import get_profile

    name, why = s.resolved_profile()
    data_dir = s.resolved_data_dir(name)
    log.info(
        "default.profile" if why != "set" else "setting.profile",
        profile=name,
        why=why,
        data_dir=str(data_dir),
    )
    return get_profile(name), data_dir


def _already_prepared(data_dir: Path, profile: Any, args: argparse.Namespace) -> bool:
    from harness import manifest as mf

    try:
        existing = mf.load_manifest(data_dir)
    except FileNotFoundError:
        return False
    source = existing.get("source", {})
    if existing.get("version") != mf.MANIFEST_VERSION:
        return False  # an older layout: prepare again
    if existing.get("profile") != profile.to_dict() or source.get("kind") != args.source:
        return False
    if args.source == "local":
        from harness.prepare import default_local_dir

        return source.get("folder") == (args.local_dir or default_local_dir()).name
    return source.get("url_pattern") == (args.url_pattern or source.get("url_pattern"))


def _announce_cage(log: Any, runner: str) -> None:
    """One line saying which cage the candidates will run in; a warning where weak."""
    if runner != "process":
        log.info("cage", cage=runner)
        return
    from harness import cage

    held, note = cage.probe()
    if held:
        log.info("cage", cage="process", holds=note)
    else:
        log.warning(
            "cage.weak",
            cage="process-weak",
            why=note,
            means="candidates are not confined: they can read the validation data, write "
            "outside their scratch and reach the network (README: the cage)",
        )


def cmd_prepare(args: argparse.Namespace) -> int:
    from harness import manifest as mf
    from harness.prepare import prepare

    s = _settings(args)
    log = logs.get()
    profile, data_dir = _profile(s, log)
    if not args.force and _already_prepared(data_dir, profile, args):
        fingerprint = mf.load_manifest(data_dir)["fingerprint"]
        print(f"already prepared: {data_dir} fingerprint {fingerprint} (--force to redo)")
        return 0
    started = time.monotonic()
    manifest = prepare(
        data_dir,
        profile,
        source=args.source,
        local_dir=args.local_dir,
        url_pattern=args.url_pattern,
        train_shards=args.train_shards,
        val_shard=args.val_shard,
        workers=args.workers,
        emit=lambda event, **kw: log.info(event, **kw),
    )
    print(
        f"prepared {data_dir} fingerprint {manifest['fingerprint']} in {time.monotonic() - started:.1f}s"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness import manifest as mf
    from orchestrator.gitstore import GitStore
    from orchestrator.local_workers import LocalWorkers
    from orchestrator.loop import Limits, Policy, Research, budget_for
    from orchestrator.redis_server import PrivateRedis, connect
    from worker.settings import WorkerSettings

    s = _settings(args)
    s.tag = s.tag or time.strftime("%Y%m%d")
    st.check(s)
    log = logs.get()
    git = GitStore(s.repo, s.train_path)
    runs_dir = s.runs_dir if s.runs_dir.is_absolute() else git.repo / s.runs_dir
    logs.tee.open(runs_dir / s.tag / defaults.ORCHESTRATOR_LOG)
    profile, data_dir = _profile(s, log)
    fingerprint = mf.load_manifest(data_dir)["fingerprint"]
    proposer = _proposer(s, profile.name, git.repo, log)
    private = None
    workers = None
    try:
        if s.redis_url:
            url = s.redis_url
            log.info("setting.redis", url=url.split("@")[-1])
        else:
            private = PrivateRedis().start()
            url = private.url
            log.info("default.redis", why="no REDIS_URL", server=private.binary, url=url)
            # `status`, `logs` and `dashboard` in another terminal find it here while it lives.
            url_file = runs_dir / s.tag / defaults.REDIS_URL_FILE
            url_file.parent.mkdir(parents=True, exist_ok=True)
            url_file.write_text(url + "\n")
        redis = connect(url)
        n_local = s.local_workers if s.local_workers is not None else (1 if private else 0)
        if n_local:
            wsettings = WorkerSettings(
                data_dir=data_dir,
                runs_dir=runs_dir,
                runner=s.runner,
                gpu=s.gpu,
                memory_gb=s.memory_gb,
            )
            _announce_cage(log, s.runner)
            workers = LocalWorkers(n_local, url, wsettings, runs_dir / s.tag).start()
            log.info(
                "default.workers" if s.local_workers is None else "setting.workers",
                count=n_local,
                runner=s.runner,
                why="process runner: no Docker in the embedded default",
            )
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
            policy=Policy(
                lookahead=None if s.lookahead == "auto" else int(s.lookahead),
                max_in_flight=s.max_in_flight,
                llm_concurrency=s.llm_concurrency,
                llm_rate_per_min=s.llm_rate_per_min,
                sequential=s.sequential,
                noise_runs=s.noise_runs,
                noise_every=s.noise_every,
                z=s.noise_z,
                min_delta=s.min_delta,
                confirm=s.confirm,
            ),
            limits=Limits(s.max_experiments, s.max_hours, s.max_cost_usd),
            log=log,
        )
        summary = research.run()
    finally:
        if workers:
            workers.stop()
        if private:
            (runs_dir / s.tag / defaults.REDIS_URL_FILE).unlink(missing_ok=True)
            private.stop()
        logs.tee.close()
    _print_summary(summary, git)
    return 0


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
        timeout_s=s.llm_timeout_s,
        price_in_per_mtok=s.llm_price_in,
        price_out_per_mtok=s.llm_price_out,
    )


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
        "counts:            " + ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())),
        f"{summary['compute_kind']} seconds used:  {summary['compute_seconds']} "
        f"({summary['experiments_this_session']} experiments, wall {summary['wall_seconds']}s)",
        f"results:           {summary['results']}",
        f"branch:            {summary['branch']}  (git log --oneline {summary['branch']})",
    ]
    print("\n".join(lines))
    try:
        print(git.log_oneline(summary["branch"], 15))
    except Exception:  # noqa: BLE001 - the summary must print even if git does not
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    from harness import manifest as mf
    from orchestrator.redis_server import connect
    from worker import contract
    from worker.settings import WorkerSettings

    s = _settings(args)
    url = s.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise st.SettingsError("redis_url: a worker needs --redis-url or REDIS_URL")
    log = logs.get()
    profile, data_dir = _profile(s, log)
    fingerprint = mf.load_manifest(data_dir)["fingerprint"]
    redis = connect(url)
    host = s.host or socket.gethostname()
    claim = None
    gpu = s.gpu
    count = (s.gpus if s.gpus is not None else _count_gpus()) if gpu == "auto" else None
    if count == 0:
        gpu = None
        log.info("worker.no_gpu", why="AUTORESEARCH_GPUS=0: runs on the CPU, claims nothing")
    if gpu == "auto":
        from worker.gpu_claim import GpuClaim

        owner = args.name or f"{socket.gethostname()}-{os.getpid()}"
        claim = GpuClaim(redis, host, count, owner, log=log).acquire()
        gpu = claim.gpu
        log.info("worker.gpu_claimed", gpu=gpu, host=host, of=count)
    try:
        wsettings = WorkerSettings(
            data_dir=data_dir.resolve(),
            runs_dir=s.runs_dir.resolve(),
            runner=s.runner,
            gpu=gpu,
            memory_gb=s.memory_gb,
        )
        os.environ.update(wsettings.to_env())
        if s.runner == "docker":
            from worker.jobs import make_runner

            # A worker that died left its containers behind; this host and GPU's are ours.
            removed = make_runner(wsettings).cleanup_orphans()
            log.info("worker.orphans_removed", count=len(removed), names=removed)
        name = args.name or f"{host}-{'cpu' if gpu is None else f'gpu{gpu}'}-{os.getpid()}"
        queues = [
            Queue(q, connection=redis, serializer=JSONSerializer)
            for q in (contract.worker_queue(name), contract.QUEUE_NAME)
        ]
        worker = Worker(queues, connection=redis, name=name, serializer=JSONSerializer)
        _announce_cage(log, s.runner)
        log.info(
            "worker.start",
            name=name,
            gpu=gpu,
            runner=s.runner,
            profile=profile.name,
            fingerprint=fingerprint,
            data_dir=str(data_dir),
        )
        worker.work(burst=args.burst, logging_level="WARNING")
    finally:
        if claim is not None:
            claim.release()
    return 0


def _count_gpus() -> int:
    count = st.count_gpus()
    if not count:
        raise st.SettingsError("gpus: --gpu auto needs AUTORESEARCH_GPUS (no nvidia-smi found)")
    return count


def cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from harness import manifest as mf
    from orchestrator.loop import budget_for
    from orchestrator.validate import CandidateRejected, validate_candidate
    from worker import contract
    from worker.jobs import make_runner
    from worker.settings import WorkerSettings

    s = _settings(args)
    log = logs.get()
    if not args.file.is_file():
        raise st.SettingsError(f"file: {args.file} does not exist")
    source = args.file.read_text()
    try:
        validate_candidate(source)
    except CandidateRejected as exc:
        return _die(f"{args.file}: {exc}", 2)
    profile, data_dir = _profile(s, log)
    fingerprint = mf.load_manifest(data_dir)["fingerprint"]
    spec = contract.make_spec(
        id="evaluate",
        tag="evaluate",
        parent="",
        commit="",
        source=source,
        profile=profile.name,
        fingerprint=fingerprint,
        budget=budget_for(profile, s.train_wall_s, s.eval_wall_s),
        seed=args.seed,
        description=str(args.file),
    )
    runner = make_runner(
        WorkerSettings(data_dir=data_dir, runs_dir=s.runs_dir, runner=s.runner, gpu=s.gpu)
    )
    with tempfile.TemporaryDirectory(prefix="autoresearch-eval-") as tmp:
        # The candidate's output goes to stderr as it comes; the result to stdout.
        fields = runner.run(spec, Path(tmp), lambda phase, line: print(line, file=sys.stderr))
    result = contract.make_result(
        spec, **fields, worker=socket.gethostname(), gpu="cpu" if s.gpu is None else f"cuda:{s.gpu}"
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if key != "log_tail":
                print(f"{key:<16}{value}")
    return 0 if result["status"] == "ok" else 1


def _latest_tag(runs_dir: Path, tag: str | None) -> str:
    from orchestrator import view

    found = tag or view.latest_tag(None, runs_dir)
    if found is None:
        raise st.SettingsError(f"tag: no runs under {runs_dir}")
    return found


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-run one recorded experiment from its commit with its seed, budget and data
    fingerprint, through the same runner and harness, and compare the two val_bpb."""
    import tempfile

    from harness import manifest as mf
    from orchestrator import noise
    from orchestrator.gitstore import GitStore
    from orchestrator.results import ResultsFile
    from worker import contract
    from worker.jobs import make_runner
    from worker.settings import WorkerSettings

    s = _settings(args)
    git = GitStore(s.repo, s.train_path)
    runs_dir = s.runs_dir if s.runs_dir.is_absolute() else git.repo / s.runs_dir
    tag = _latest_tag(runs_dir, args.tag)
    rows = ResultsFile(runs_dir / tag / defaults.RESULTS_FILE).rows()
    row = next((r for r in rows if r["id"] == args.id), None)
    if row is None:
        raise st.SettingsError(f"id: no experiment {args.id} in run {tag}")
    decision = runs_dir / tag / args.id / "decision.json"
    run = json.loads(decision.read_text()).get("run") if decision.is_file() else None
    if not run:
        raise st.SettingsError(f"id: {args.id} has no recorded run (rejected, or older format)")
    log = logs.get()
    s.profile = run["profile"]
    profile, data_dir = _profile(s, log)
    fingerprint = mf.load_manifest(data_dir)["fingerprint"]
    if fingerprint != run["fingerprint"]:
        return _die(f"data {fingerprint} differs from the run's {run['fingerprint']}", 1)
    seed = run["seed"] if args.seed is None else args.seed
    source = git.read(run["commit"])
    spec = contract.make_spec(
        id=f"verify-{args.id}",
        tag=tag,
        parent="",
        commit=run["commit"],
        source=source,
        profile=profile.name,
        fingerprint=fingerprint,
        budget=run["budget"],
        seed=seed,
        description=f"verify {args.id}",
    )
    runner = make_runner(
        WorkerSettings(data_dir=data_dir, runs_dir=runs_dir, runner=s.runner, gpu=s.gpu)
    )
    with tempfile.TemporaryDirectory(prefix="autoresearch-verify-") as tmp:
        fields = runner.run(spec, Path(tmp), lambda phase, line: print(line, file=sys.stderr))
    result = contract.make_result(spec, **fields)
    recorded = float(row["val_bpb"] or 0) or None
    sigma, dof = noise.pooled_sigma(rows)
    diff = None if result["val_bpb"] is None or recorded is None else result["val_bpb"] - recorded
    out = {
        "id": args.id,
        "tag": tag,
        "commit": run["commit"][:12],
        "seed": seed,
        "recorded_status": row["status"],
        "recorded_val_bpb": recorded,
        "status": result["status"],
        "val_bpb": result["val_bpb"],
        "difference": diff,
        "noise_sigma": sigma if dof else None,
        "sigmas": None if diff is None or not dof or not sigma else diff / sigma,
        "error": result["error"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key:<18}{value}")
    return 0 if result["status"] == "ok" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator import view

    redis, runs_dir, tag = _reader(args)
    try:
        while True:
            snap = view.snapshot(redis, tag, runs_dir)
            if not snap["rows"] and not snap["workers"] and not snap["state"]:
                where = runs_dir / tag
                return _die(f"run {tag}: nothing recorded yet, in Redis or under {where}", 2)
            if args.json:
                text = json.dumps(snap, default=str)
            else:
                text = view.render_status(snap)
                if args.rows > 0 and snap["last"]:
                    text += "\nlast rows:\n" + view.render_rows(snap["last"][-args.rows :])
                text = view.printable(text)  # descriptions come from the LLM
            if args.watch is None:
                print(text)
                return 0
            print("\x1b[H\x1b[2J" + text, flush=True)  # home, clear screen: redraw in place
            time.sleep(max(args.watch, 0.2))
    except KeyboardInterrupt:  # how --watch ends
        return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a log from Redis's streams (following them with -f), or from the run folder
    when the stream is gone (an old experiment, a Redis that was reset)."""
    from orchestrator import view
    from worker import contract
    from worker.settings import log_stream_key

    redis, runs_dir, tag = _reader(args)
    as_json = args.json if args.json is not None else not sys.stdout.isatty()
    render = view.Renderer(as_json, colors=sys.stdout.isatty())
    key = log_stream_key(tag, args.id) if args.id else contract.run_log_key(tag)
    live = redis is not None and bool(redis.exists(key))
    if not live:
        items = view.folder_log(runs_dir, tag, args.id)
        rows = view.rows(redis, tag, runs_dir) if args.id and not items else []
        row = next((r for r in rows if r["id"] == args.id), None)
        if items or row or redis is None or not args.follow:
            if not items:
                where = f"{tag}/{args.id}" if args.id else tag
                if row is not None:  # recorded without a log: a proposal that never ran
                    print(view.printable(f"{where}: {row['status']}, no log ({row['error']})"))
                    return 0
                return _die(f"no log for {where}: not in Redis and none under {runs_dir / tag}", 2)
            for item in items[-args.lines :] if args.lines else items:
                print(render(item), flush=True)
            return 0
        # -f on an experiment that has not started yet: wait for its stream.
    try:
        # The backlog (all of it, or the last N), then with -f what comes, until decided.
        last = "0-0"
        batch = view.tail_stream(redis, key, args.lines) if args.lines else []
        while True:
            for stream_id, fields in batch:
                last = stream_id
                item = view.entry(fields, args.id or "", stream_id)
                print(render(item), flush=True)
                if args.id and view.is_end(item):
                    return 0  # decided: nothing more will come
            batch = view.read_stream(redis, key, last, block_ms=1000 if args.follow else None)
            if not batch and not args.follow:
                return 0  # the backlog is printed
    except KeyboardInterrupt:
        return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from orchestrator import dashboard

    redis, runs_dir, tag = _reader(args)
    return dashboard.serve(redis, runs_dir, tag, args.host, args.port)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator import report, view

    redis, runs_dir, tag = _reader(args)
    rows = view.rows(redis, tag, runs_dir)
    if not rows:
        return _die(f"run {tag} has no results (in Redis or under {runs_dir / tag})", 2)
    summary = view.summary(rows, view.state(redis, tag, runs_dir), time.time())
    out = args.out or runs_dir / tag
    png, md = report.write_report(
        tag, rows, summary, out, args.repo or Path.cwd(), run_dir=runs_dir / tag
    )
    print(f"{png}\n{md}")
    return 0


COMMANDS = {
    "prepare": cmd_prepare,
    "run": cmd_run,
    "worker": cmd_worker,
    "evaluate": cmd_evaluate,
    "status": cmd_status,
    "logs": cmd_logs,
    "report": cmd_report,
    "dashboard": cmd_dashboard,
    "verify": cmd_verify,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    import redis as redis_lib

    from harness.manifest import DataNotPrepared
    from orchestrator.gitstore import GitError
    from orchestrator.loop import BaselineFailed
    from orchestrator.redis_server import RedisUnavailable
    from worker.gpu_claim import NoFreeGpu

    try:
        return COMMANDS[args.command](args)
    except st.SettingsError as exc:
        return _die(str(exc), 2)
    except (DataNotPrepared, RedisUnavailable, GitError, BaselineFailed, NoFreeGpu) as exc:
        return _die(str(exc), 1)
    except KeyboardInterrupt:
        return _die("interrupted", 130)
    except redis_lib.RedisError as exc:  # e.g. a run's embedded Redis stopped with the run
        return _die(f"Redis: {exc} (a run that ended: its folder still answers)", 1)


if __name__ == "__main__":
    sys.exit(main())
