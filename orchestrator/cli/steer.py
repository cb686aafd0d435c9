"""`autoresearch pause`, `resume` and `submit`: steer a live run without stopping it.

pause/resume write one Redis key of the run (worker/keys.py `paused_key`), which the loop
reads once a second: while it is set, what runs finishes and is recorded, and nothing new
is proposed or queued (a would-be keep's confirmation still runs, to finish its decision).
submit pushes a human's train.py (validated here first, and again by the loop) or an idea
onto the run's inbox (`inbox_key`): the file becomes a candidate like the proposer's, with
proposer `human`; the idea goes into the next LLM request, which must try it.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path
from typing import Any

from orchestrator.cli.helpers import CommandError, add_reader, reader


def add_steer(sub: Any) -> None:
    for name, text in (
        ("pause", "pause a live run: what runs finishes, nothing new is queued"),
        ("resume", "resume a paused run"),
    ):
        p = sub.add_parser(name, help=text)
        add_reader(p)


def add_submit(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="give a live run your train.py (a candidate like the LLM's) or an idea for the LLM",
    )
    add_reader(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?", type=Path, help="a whole train.py to run")
    what.add_argument("--idea", help="an idea the next LLM proposal must try")
    p.add_argument("--description", help="the file's row description (default: its name)")


def cmd_submit(args: argparse.Namespace) -> int:
    from orchestrator.validate import CandidateRejected, validate_candidate
    from worker import keys

    if args.file is not None:
        try:
            source = args.file.read_text()
            validate_candidate(source)
        except OSError as exc:
            raise CommandError(f"{args.file}: {exc.strerror or exc}", 2) from None
        except CandidateRejected as exc:
            raise CommandError(f"{args.file}: {exc}", 2) from None
        description = " ".join((args.description or f"human: {args.file.name}").split())
        item = {"kind": "file", "source": source, "description": description}
    else:
        if not args.idea.strip():
            raise CommandError("--idea: the idea is empty", 2)
        item = {"kind": "idea", "text": " ".join(args.idea.split())}
    redis, tag = _live_redis(args)
    redis.rpush(keys.inbox_key(tag), json.dumps({**item, "by": socket.gethostname()}))
    what = f"train.py ({item['description']})" if item["kind"] == "file" else "idea"
    print(f"run {tag}: {what} submitted; the loop takes it within a second")
    return 0


def _live_redis(args: argparse.Namespace) -> tuple[Any, str]:
    redis, _runs_dir, tag = reader(args)
    if redis is None:
        raise CommandError(
            f"run {tag} has no live Redis here (not running, or on another host: pass "
            "--redis-url or REDIS_URL)",
            1,
        )
    return redis, tag


def cmd_pause(args: argparse.Namespace) -> int:
    from worker import keys

    redis, tag = _live_redis(args)
    note = {"by": f"{socket.gethostname()}", "at": f"{time.time():.3f}"}
    redis.set(keys.paused_key(tag), json.dumps(note))
    print(f"run {tag}: paused (what runs finishes; nothing new is queued)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from worker import keys

    redis, tag = _live_redis(args)
    was = redis.delete(keys.paused_key(tag))
    print(f"run {tag}: {'resumed' if was else 'was not paused'}")
    return 0
