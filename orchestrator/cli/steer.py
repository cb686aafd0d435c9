"""`autoresearch pause` and `resume`: steer a live run without stopping it.

Both write one Redis key of the run (worker/keys.py `paused_key`), which the loop reads
once a second: while it is set, what runs finishes and is recorded, and nothing new is
proposed or queued (a would-be keep's confirmation still runs, to finish its decision).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from orchestrator.cli.helpers import CommandError, add_reader, reader


def add_steer(sub: Any) -> None:
    for name, text in (
        ("pause", "pause a live run: what runs finishes, nothing new is queued"),
        ("resume", "resume a paused run"),
    ):
        p = sub.add_parser(name, help=text)
        add_reader(p)


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
