"""`autoresearch`: prepare data, run the research loop, serve as a worker, evaluate, verify,
ablate, and watch a run (status, logs, report, dashboard).

One module per group of commands, each with a function that adds a command's options and
one that runs it: prepare.py, run.py, workers.py (worker), evaluate.py (evaluate, verify),
ablate.py, steer.py (pause, resume, submit), observe.py (status, logs, dashboard, report);
helpers.py holds what they share.
`main` parses the command line, runs the command and is the one place where an error becomes
a one-line message and an exit code.

Exit codes: 0 done, 1 the run failed (the message says why), 2 bad settings or input.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator import logs
from orchestrator import settings as st
from orchestrator.cli.ablate import add_ablate, cmd_ablate
from orchestrator.cli.evaluate import add_evaluate, add_verify, cmd_evaluate, cmd_verify
from orchestrator.cli.helpers import CommandError
from orchestrator.cli.observe import (
    add_dashboard,
    add_logs,
    add_report,
    add_status,
    cmd_dashboard,
    cmd_logs,
    cmd_report,
    cmd_status,
)
from orchestrator.cli.prepare import add_prepare, cmd_prepare
from orchestrator.cli.run import add_run, cmd_run
from orchestrator.cli.steer import add_steer, add_submit, cmd_pause, cmd_resume, cmd_submit
from orchestrator.cli.workers import add_worker, cmd_worker

EXAMPLES = """\
examples:
  autoresearch prepare                     # local corpus (this Python's stdlib source)
  autoresearch prepare --source http       # the climbmix parquet shards
  autoresearch run --tag nov28             # the loop, on the embedded defaults
  autoresearch run --tag nov28 --max-experiments 50 --max-hours 8
  REDIS_URL=redis://host:6379/0 autoresearch worker --gpu 0
  REDIS_URL=... autoresearch worker --runner docker --gpu all   # one per GPU of this host
  autoresearch evaluate workspace/train.py --json
  autoresearch status --watch              # workers, queue, best, noise, spend; live
  autoresearch logs -f                     # every experiment's lines as they come
  autoresearch logs 0012 --json            # one experiment, JSON lines
  autoresearch report                      # progress.png and report.md in the run folder
  autoresearch dashboard                   # http://127.0.0.1:8765/: chart, workers, live logs
  autoresearch pause --tag nov28           # finish what runs, queue nothing new; then: resume
  autoresearch submit my_train.py          # your train.py, judged like the LLM's
  autoresearch submit --idea "try RMSNorm without the learned scale"
  autoresearch verify 0012 --tag nov28     # re-run a recorded experiment, compare
  autoresearch ablate --tag nov28          # which kept changes carry the gain, which are noise
  autoresearch run --tag dry --runner simulate --local-workers 8   # the scheduler, no GPU
"""

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
    "pause": cmd_pause,
    "resume": cmd_resume,
    "submit": cmd_submit,
    "ablate": cmd_ablate,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearch",
        description="An LLM-driven experiment machine for language-model training.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_prepare,
        add_run,
        add_worker,
        add_evaluate,
        add_verify,
        add_ablate,
        add_status,
        add_logs,
        add_dashboard,
        add_report,
        add_steer,
        add_submit,
    ):
        add(sub)
    return parser


def _die(message: str, code: int) -> int:
    print(f"autoresearch: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `worker --gpu all` starts its per-GPU workers with the same options
    logs.configure()
    import redis as redis_lib

    from harness.manifest import DataNotPrepared
    from orchestrator.gitstore import GitError
    from orchestrator.proposers.base import LLMUnavailable
    from orchestrator.redis_server import RedisUnavailable
    from orchestrator.research import BaselineFailed
    from worker.gpu_claim import NoFreeGpu
    from worker.runner import InfraError

    try:
        return COMMANDS[args.command](args)
    except CommandError as exc:
        return _die(str(exc), exc.code)
    except (st.SettingsError, LLMUnavailable) as exc:
        return _die(str(exc), 2)
    except (DataNotPrepared, RedisUnavailable, GitError, BaselineFailed, NoFreeGpu) as exc:
        return _die(str(exc), 1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP during a run (130, 143, 129)
        return _die("interrupted", getattr(exc, "exit_code", 130))
    except InfraError as exc:  # the host's: e.g. no Docker engine, no runner image
        return _die(str(exc), 1)
    except OSError as exc:  # e.g. a runs folder that cannot be written, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        return _die(f"{exc.strerror or exc}{where}", 1)
    except redis_lib.RedisError as exc:  # e.g. a run's embedded Redis stopped with the run
        return _die(f"Redis: {exc} (a run that ended: its folder still answers)", 1)
